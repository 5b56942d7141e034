//! The web app (`web/`, built into `web/dist`), served by the public listener when
//! `gateway.web.root` is set: same origin as the API, so the app needs no CORS and its tokens
//! never leave the origin. Every GET/HEAD outside `/api/` and `/webhooks/` is a file of the build,
//! or `index.html` for the app's own paths. `GET /app-config.json` tells the app where the
//! identity provider is; the bundle itself carries no configuration and no secret.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use crate::error;
use crate::App;

/// `gateway.web`: the web app's files and what it may connect to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Folder of the built app (`web/dist`); unset: no web app, only the API.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Public URL of the identity provider the app signs in with (Ory Kratos' public API).
    #[serde(default)]
    pub auth_url: Option<String>,
    /// Further origins the app fetches from: the S3 endpoint of presigned uploads and downloads.
    #[serde(default)]
    pub connect_origins: Vec<String>,
}

impl WebConfig {
    pub(crate) fn check(&self) -> Result<(), substrate_runtime::config::ConfigError> {
        use substrate_runtime::config::ConfigError;
        let Some(root) = &self.root else {
            return Ok(());
        };
        if !root.join("index.html").is_file() {
            return Err(ConfigError::invalid(
                "gateway.web.root",
                format!(
                    "{} has no index.html (build the app: npm --prefix web run build)",
                    root.display()
                ),
            ));
        }
        for (key, origin) in self
            .auth_url
            .iter()
            .map(|o| ("gateway.web.auth_url", o))
            .chain(
                self.connect_origins
                    .iter()
                    .map(|o| ("gateway.web.connect_origins", o)),
            )
        {
            if origin_of(origin).is_none() {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{origin}` is not an http(s) URL"),
                ));
            }
        }
        Ok(())
    }
}

/// `scheme://host[:port]` of an http(s) URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains(['@', ' ', '"', ';', ',']) {
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

/// The served app: its files and the headers every page carries.
pub struct Web {
    /// The build's files, `index.html` for any other path (the app's own routes).
    pages: ServeDir<ServeFile>,
    /// The build's files only: a missing asset is a 404, never the page in its place.
    assets: ServeDir,
    app_config: String,
    csp: HeaderValue,
}

impl Web {
    pub fn new(config: &WebConfig) -> Option<Self> {
        let root = config.root.clone()?;
        let app_config = serde_json::json!({ "auth_url": config.auth_url }).to_string();
        let mut connect = vec!["'self'".to_string()];
        connect.extend(config.auth_url.iter().filter_map(|u| origin_of(u)));
        connect.extend(config.connect_origins.iter().filter_map(|u| origin_of(u)));
        let csp = format!(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
             connect-src {}; media-src 'self' blob:; object-src 'none'; base-uri 'none'; \
             form-action 'self'; frame-ancestors 'none'",
            connect.join(" ")
        );
        Some(Self {
            pages: ServeDir::new(&root).fallback(ServeFile::new(root.join("index.html"))),
            assets: ServeDir::new(&root),
            app_config,
            csp: HeaderValue::from_str(&csp).expect("origins are checked at load"),
        })
    }

    async fn serve(&self, request: Request) -> Response {
        let path = request.uri().path().to_owned();
        if path == "/app-config.json" {
            let mut response = (
                [(header::CONTENT_TYPE, "application/json")],
                self.app_config.clone(),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return self.decorate(response, false);
        }
        let result = if path.starts_with("/assets/") {
            self.assets.clone().oneshot(request).await
        } else {
            self.pages.clone().oneshot(request).await
        };
        let response = match result {
            Ok(response) => response.map(Body::new),
            Err(never) => match never {},
        };
        // Vite names the bundle's files by their content hash: cache them for good; the page
        // itself (and the app's own paths, which are the page) is revalidated every time.
        let immutable = path.starts_with("/assets/") && response.status() == StatusCode::OK;
        self.decorate(response, immutable)
    }

    fn decorate(&self, mut response: Response, immutable: bool) -> Response {
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        if !headers.contains_key(header::CACHE_CONTROL) {
            let value = if immutable {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
        }
        response
    }
}

/// The public router's fallback: the web app for page and asset requests when it is served,
/// JSON 404 for everything else (API paths never fall through to the app).
pub async fn fallback(State(app): State<Arc<App>>, request: Request) -> Response {
    let path = request.uri().path();
    let api = path.starts_with("/api/") || path == "/api" || path.starts_with("/webhooks/");
    match &app.web {
        Some(web) if !api && matches!(*request.method(), Method::GET | Method::HEAD) => {
            let mut response = web.serve(request).await;
            response
                .extensions_mut()
                .insert(crate::metrics::RouteName("web".into()));
            response
        }
        _ => error::not_found().await.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::origin_of;

    #[test]
    fn origins_of_urls() {
        assert_eq!(
            origin_of("http://127.0.0.1:4433/").as_deref(),
            Some("http://127.0.0.1:4433")
        );
        assert_eq!(
            origin_of("https://s3.example.com/bucket?x=1").as_deref(),
            Some("https://s3.example.com")
        );
        assert_eq!(origin_of("javascript:alert(1)"), None);
        assert_eq!(origin_of("http://a b"), None);
        assert_eq!(origin_of("ftp://x"), None);
    }
}
