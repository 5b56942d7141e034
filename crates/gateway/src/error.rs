//! The gateway's HTTP errors: a status and a JSON body `{"error": {"code", "message", "field"?}}`
//! that names the problem. Every rejection is counted by reason.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::metrics::Refused;

#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The credential a route expects, on 401s for a wrong kind of credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<&'static str>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    pub retry_after: Option<u64>,
    /// Extra response headers (e.g. `RateLimit-*`); boxed to keep results small.
    pub headers: Option<Box<Vec<(&'static str, String)>>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code,
                message: message.into(),
                field: None,
                expected: None,
            },
            retry_after: None,
            headers: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.body.field = Some(field.into());
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers
            .get_or_insert_with(Default::default)
            .push((name, value.into()));
        self
    }

    pub fn expected(mut self, expected: &'static str) -> Self {
        self.body.expected = Some(expected);
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        let text = if field.is_empty() {
            message
        } else {
            format!("field `{field}`: {message}")
        };
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", text).field(field)
    }

    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).retry_after(retry_after)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body exceeds the limit of {limit} bytes"),
        )
    }

    /// The JSON value of this error, for per-item batch results.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.body).unwrap_or_default()
    }
}

/// The public router's answer to a path it does not serve (axum's own 404 has no body).
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The public router's answer to a method a path does not take (axum's own 405 has no body;
/// it still adds the `Allow` header).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take this method (see the Allow header)",
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.body.code;
        let mut response =
            (self.status, Json(serde_json::json!({ "error": self.body }))).into_response();
        response.extensions_mut().insert(Refused(code));
        if let Some(secs) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert("retry-after", value);
            }
        }
        for (name, value) in self.headers.into_iter().flat_map(|h| *h) {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::header;
    use axum::routing::post;
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    /// What the public router's fallbacks answer: JSON errors, the 405 with its `Allow` header.
    #[tokio::test]
    async fn unknown_paths_and_methods_are_json_errors() {
        let router = Router::new()
            .route("/api/v1/events/{route}", post(|| async { "ok" }))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed);
        for (method, path, status, code) in [
            ("POST", "/nowhere", StatusCode::NOT_FOUND, "not_found"),
            (
                "POST",
                "/api/v1/events/",
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                "GET",
                "/api/v1/events/message",
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), status, "{method} {path}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            if status == StatusCode::METHOD_NOT_ALLOWED {
                assert_eq!(response.headers()[header::ALLOW], "POST");
            }
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"]["code"], code, "{body}");
            assert!(body["error"]["message"].is_string(), "{body}");
        }
    }
}
