//! The gateway: the platform's only public entry. Authenticates callers (Supabase JWTs, webhook
//! secrets), admits events on the `routes.yaml` allowlist, validates them against the topic's
//! Avro schema and answers 202 only once the broker has stored them.

pub mod auth;
pub mod config;
pub mod directory;
pub mod error;
pub mod feed;
pub mod idempotency;
pub mod ingest;
pub mod keys;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod notifications;
pub mod publish;
pub mod routes;
pub mod web;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::{get, post};
use axum::Router;
use substrate_avro::{Catalog, Registry, TopicSchema};
use substrate_kafka::media::{Topic as MediaTopic, Topics as MediaTopics};
use substrate_kafka::Producer;
use substrate_runtime::ops::{self, Readiness};
use substrate_runtime::Shutdown;
use tokio::net::TcpListener;

pub use config::Config;

use crate::auth::Verifier;
use crate::publish::Publisher;
use crate::routes::RouteStore;

pub struct Limits {
    pub max_event_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_events: usize,
    pub body_read_timeout: Duration,
}

impl Limits {
    /// One event's body: at most `max_event_bytes`, within the body-read timeout.
    pub async fn read_event(
        &self,
        headers: &axum::http::HeaderMap,
        body: axum::body::Body,
    ) -> Result<bytes::Bytes, error::ApiError> {
        ingest::read_limited(headers, body, self.max_event_bytes, self.body_read_timeout).await
    }

    /// A batch's body: at most `max_batch_bytes`, within the body-read timeout.
    pub async fn read_batch(
        &self,
        headers: &axum::http::HeaderMap,
        body: axum::body::Body,
    ) -> Result<bytes::Bytes, error::ApiError> {
        ingest::read_limited(headers, body, self.max_batch_bytes, self.body_read_timeout).await
    }
}

pub struct LoginWebhook {
    pub secret: Option<String>,
    pub secret_header: String,
    pub topic: String,
    pub event_type: String,
}

/// Shared state of the HTTP handlers.
pub struct App {
    pub routes: Arc<RouteStore>,
    pub verifier: Arc<Verifier>,
    pub publisher: Publisher,
    pub limits: Limits,
    pub login: LoginWebhook,
    pub login_schema: Option<TopicSchema>,
    pub media: media::Media,
    pub db: substrate_db::Pool,
    pub keys: Arc<keys::KeyStore>,
    pub idempotency: idempotency::Idempotency,
    pub feed: Arc<feed::Feed>,
    pub tickets: notifications::Tickets,
    /// The web app, when `gateway.web.root` is set.
    pub web: Option<web::Web>,
}

/// The gateway's routers: the public API and the operational endpoints.
pub struct Built {
    pub public: Router,
    pub ops: Router,
    pub producer: Producer,
}

/// Builds the state and the routers. The producer is returned for flushing at shutdown.
pub fn build(config: &Config, shutdown: &Shutdown) -> anyhow::Result<Built> {
    // The recorder first: descriptions and early metrics would go to the no-op recorder.
    substrate_runtime::ops::metrics_handle();
    metrics::describe();
    let routes = Arc::new(
        RouteStore::load(&config.gateway.routes_file, &config.gateway.avro_dir)
            .map_err(anyhow::Error::msg)
            .context("loading routes")?,
    );
    routes.clone().watch(
        Duration::from_secs(config.gateway.routes_poll_secs),
        shutdown,
    );
    let catalog = Catalog::load(&config.gateway.avro_dir).context("loading avro schemas")?;
    let registry = Registry::new(&config.schema_registry).context("schema registry settings")?;
    let producer = Producer::new(&config.kafka).context("creating the Kafka producer")?;
    let verifier = Verifier::new(&config.auth).map_err(anyhow::Error::msg)?;
    // Without a topic's schema the endpoint answers 503 naming it (a gateway may serve events
    // only).
    let media_schema = |topic: MediaTopic| {
        let topic = topic.name();
        let schema = catalog.get(topic).cloned();
        if schema.is_none() {
            tracing::warn!(
                topic,
                "no schema for a media intent topic; its endpoint answers 503"
            );
        }
        schema
    };
    let media = media::Media {
        upload_schema: media_schema(MediaTopic::UploadIntent),
        download_schema: media_schema(MediaTopic::DownloadIntent),
        delete_schema: media_schema(MediaTopic::DeleteIntent),
        received_schema: media_schema(MediaTopic::UploadReceived),
        topics: MediaTopics::new(config.media.topic_prefix.clone()),
        s3: config.s3.as_ref().map(|s3| s3.client()),
        config: config.media.clone(),
    };
    let db = substrate_db::connect_pool(&config.database).context("database settings")?;
    let keys = keys::KeyStore::new(&config.api_keys);
    keys.clone().spawn_refresh(
        db.clone(),
        Duration::from_secs(config.api_keys.refresh_secs),
        shutdown,
    );
    let retention = Duration::from_secs(config.gateway.idempotency_retention_secs);
    let idempotency = idempotency::Idempotency {
        db: db.clone(),
        retention,
        // A request cannot outlive the request timeout: an older unfinished claim is orphaned.
        stale: Duration::from_millis(config.gateway.http.request_timeout_ms),
    };
    idempotency.spawn_purge(shutdown);
    spawn_limit_housekeeping(routes.clone(), shutdown);
    let feed = feed::Feed::new(config.notifications.clone(), shutdown.token());
    feed.clone()
        .spawn(db.clone(), config.database.clone(), shutdown);
    let tickets = notifications::Tickets::new(
        config.notifications.ticket_secret.as_deref(),
        Duration::from_secs(config.notifications.ticket_ttl_secs),
    );
    let app = Arc::new(App {
        routes,
        verifier,
        publisher: Publisher {
            registry: registry.clone(),
            producer: producer.clone(),
            ce_source: config.gateway.ce_source.clone(),
            retry_after_secs: config.gateway.retry_after_secs,
        },
        limits: Limits {
            max_event_bytes: config.gateway.max_event_bytes,
            max_batch_bytes: config.gateway.max_batch_bytes,
            max_batch_events: config.gateway.max_batch_events,
            body_read_timeout: config.gateway.http.body_read_timeout(),
        },
        login: LoginWebhook {
            secret: config.webhooks.login_secret.clone(),
            secret_header: config.webhooks.login_secret_header.to_ascii_lowercase(),
            topic: config.webhooks.login_topic.clone(),
            event_type: config.webhooks.login_event_type.clone(),
        },
        login_schema: catalog.get(&config.webhooks.login_topic).cloned(),
        media,
        db: db.clone(),
        keys,
        idempotency,
        feed,
        tickets,
        web: web::Web::new(&config.gateway.web),
    });
    let readiness = Readiness::new()
        .with_check("kafka", producer.ready_check())
        .with_check("postgres", substrate_db::pool::ready_check(&db))
        .with_check("schema_registry", move || {
            let registry = registry.clone();
            async move { registry.ping().await }
        });
    let public = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/api/v1/events/{route}", post(ingest::post_event))
        .route("/api/v1/events/{route}/batch", post(ingest::post_batch))
        .route("/webhooks/login", post(webhooks::login))
        .route("/api/v1/media/upload-intent", post(media::upload_intent))
        .route(
            "/api/v1/media/download-intent",
            post(media::download_intent),
        )
        .route("/api/v1/media/delete-intent", post(media::delete_intent))
        .route(
            "/api/v1/media/upload-complete",
            post(media::upload_complete),
        )
        .route("/api/v1/notifications", get(notifications::page))
        .route("/api/v1/notifications/stream", get(notifications::stream))
        .route("/api/v1/notifications/ticket", post(notifications::ticket))
        .route("/api/v1/notifications/read", post(notifications::mark_read))
        .route("/api/v1/notifications/unread", get(notifications::unread))
        .route("/api/v1/credits", get(media::credits))
        .route("/api/v1/media/files", get(media::files))
        .route("/api/v1/users", get(directory::search));
    // Every route in a server span continuing the caller's `traceparent`; then the fallback:
    // the web app's pages, or JSON errors instead of axum's empty 404.
    // Counted by route: named after the endpoint (or by the handler), then over every answer.
    let public = public.route_layer(axum::middleware::from_fn(crate::metrics::name_route));
    let public = substrate_runtime::http::traced(public)
        .fallback(web::fallback)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn(crate::metrics::observe))
        .with_state(app);
    Ok(Built {
        public,
        ops: ops::router(readiness),
        producer,
    })
}

/// Forgets idle principals of every route's rate limits once a minute (bounded memory).
fn spawn_limit_housekeeping(routes: Arc<RouteStore>, lifecycle: &Shutdown) {
    let shutdown = lifecycle.token();
    lifecycle.spawn("rate limit housekeeping", async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            for route in routes.table().routes() {
                route.limits.housekeep();
            }
        }
        Ok(())
    });
}

/// CORS for the configured origins; `None` when no origin is configured.
fn cors(config: &config::CorsConfig) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if config.allowed_origins.is_empty() {
        return None;
    }
    let origin = if config.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .allowed_origins
                .iter()
                .map(|o| HeaderValue::from_str(o).expect("checked at load")),
        )
    };
    let name = HeaderName::from_static;
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                name("idempotency-key"),
                name("x-api-key"),
                name("traceparent"),
                name("tracestate"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                name("ratelimit-limit"),
                name("ratelimit-remaining"),
                name("ratelimit-reset"),
                name("ratelimit-policy"),
                name("idempotent-replayed"),
            ])
            .allow_credentials(config.allow_credentials)
            .max_age(Duration::from_secs(config.max_age_secs)),
    )
}

/// Serves the API on `listener` and the operational endpoints on `ops_listener` until
/// `shutdown` fires, then drains in-flight requests and flushes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    ops_listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let built = build(&config, &shutdown)?;
    let addr = listener.local_addr()?;
    let ops_addr = ops_listener.local_addr()?;
    tracing::info!(%addr, %ops_addr, "gateway listening (API, operational)");
    let limits = &config.gateway.http;
    let token = shutdown.token();
    shutdown.spawn("ops http", async move {
        substrate_runtime::http::serve(
            ops_listener,
            built.ops,
            &substrate_runtime::http::HttpLimits::default(),
            token,
        )
        .await?;
        Ok(())
    });
    let mut public = substrate_runtime::http::bounded(built.public, limits);
    if let Some(cors) = cors(&config.gateway.cors) {
        public = public.layer(cors);
    }
    let producer = built.producer;
    substrate_runtime::http::serve(listener, public, limits, shutdown.token())
        .await
        .context("HTTP server")?;
    tracing::info!("HTTP server drained; flushing the producer");
    producer.close(shutdown.grace()).await;
    shutdown.drain().await;
    Ok(())
}

/// Binds `gateway.listen` and `gateway.ops_listen` and serves.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.gateway.listen)
        .await
        .with_context(|| format!("binding {}", config.gateway.listen))?;
    let ops_listener = TcpListener::bind(&config.gateway.ops_listen)
        .await
        .with_context(|| format!("binding {}", config.gateway.ops_listen))?;
    serve(config, listener, ops_listener, shutdown).await
}
