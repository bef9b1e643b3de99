//! HTTP endpoints: `/metrics` for Prometheus (OpenMetrics text), `/api/v1/paths` (JSON, one
//! object per path with its cut-off and verdict), `/api/v1/connections` (JSON, one object per
//! connection; see `view`), `/api/v1/cuts` (JSON, the last cuts; see `cuts`) and `/healthz`.
//!
//! Around the router, and independent of what the handlers read: `auth` (who may read what),
//! `server` (accept loop, connection limits, timeouts, shutdown), `tls` and `web_config` (the
//! `--web-config` file, reloaded when it changes), `error_bodies` (bodies for hyper's own 4xx
//! answers) and `descriptors` (the open-files limit).

mod auth;
pub mod descriptors;
mod error_bodies;
mod server;
pub mod tls;
mod web_config;

pub use server::Limits;
pub use web_config::WebSettings;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::sync::watch;

use crate::{
    cuts,
    metrics::{self, Metrics},
    scheduled,
    snapshot::{Snapshots, Unavailable},
    view::{self, Filter},
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub snapshots: Snapshots,
    /// The scheduled checks' last findings, shown next to the paths they cover.
    pub checks: scheduled::Results,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/api/v1/paths", get(serve_paths))
        .route("/api/v1/connections", get(serve_connections))
        .route("/api/v1/cuts", get(serve_cuts))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, NOT_FOUND) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: the agent serves GET (and HEAD) only\n",
            )
        })
        .with_state(state)
}

const NOT_FOUND: &str = "not found: the agent serves /metrics, /healthz, /api/v1/paths, /api/v1/connections and \
     /api/v1/cuts\n";

/// How long a reader waits for the pipeline's snapshot.
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(10);

async fn serve_paths(State(state): State<AppState>) -> axum::response::Response {
    match state.snapshots.fresh(SNAPSHOT_PATIENCE).await {
        Ok(snapshot) => {
            let checks = state.checks.borrow().clone();
            if checks.ports.is_empty() {
                axum::Json(&snapshot.paths).into_response()
            } else {
                axum::Json(scheduled::annotate(&snapshot.paths, &checks)).into_response()
            }
        }
        Err(unavailable) => unavailable_response(unavailable),
    }
}

async fn serve_connections(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> axum::response::Response {
    let filter = match Filter::from_query(&query) {
        Ok(filter) => filter,
        Err(message) => return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    };
    match state.snapshots.fresh(SNAPSHOT_PATIENCE).await {
        Ok(snapshot) => axum::Json(view::select(&snapshot.connections, &filter)).into_response(),
        Err(unavailable) => unavailable_response(unavailable),
    }
}

async fn serve_cuts(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> axum::response::Response {
    let snapshot = match state.snapshots.fresh(SNAPSHOT_PATIENCE).await {
        Ok(snapshot) => snapshot,
        Err(unavailable) => return unavailable_response(unavailable),
    };
    match cuts::Filter::from_query(&query, snapshot.cuts_capacity) {
        Ok(filter) => axum::Json(cuts::select(
            &snapshot.cuts,
            &filter,
            snapshot.cuts_capacity,
        ))
        .into_response(),
        Err(message) => (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    }
}

fn unavailable_response(unavailable: Unavailable) -> axum::response::Response {
    let message = match unavailable {
        Unavailable::Stopped => "the agent is shutting down\n",
        Unavailable::TooSlow => "the agent did not answer in time\n",
    };
    (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
}

async fn serve_metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    // Exemplars only for a scraper that asks for OpenMetrics (Prometheus does): older parsers
    // of the text format stop at them.
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    match state.metrics.encode() {
        Ok(text) => {
            let text = if openmetrics {
                text
            } else {
                metrics::without_exemplars(&text)
            };
            (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}

/// Binds the listener before anything else starts (no runtime needed), so that a taken port is
/// reported at once. SO_REUSEADDR, as tokio's own bind sets it: a restarted agent must not fail
/// on its previous connections in TIME_WAIT.
pub fn bind(listen: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let context = || format!("listening on {listen} (set another address with --listen)");
    let socket =
        Socket::new(Domain::for_address(listen), Type::STREAM, None).with_context(context)?;
    socket.set_reuse_address(true).with_context(context)?;
    socket.bind(&listen.into()).with_context(context)?;
    socket.listen(1024).with_context(context)?;
    socket.set_nonblocking(true).with_context(context)?;
    Ok(socket.into())
}

/// Serves the router behind the access rules of `web`, within `limits`, until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    web: Arc<WebSettings>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = router(state).layer(axum::middleware::from_fn_with_state(
        web.clone(),
        auth::require,
    ));
    server::serve(listener, app, web, limits, shutdown)
        .await
        .context("serving HTTP")
}
