//! HTTP endpoints: `/metrics` for Prometheus (OpenMetrics text), `/api/v1/paths` (JSON, one
//! object per path with its cut-off and verdict), `/api/v1/connections` (JSON, one object per
//! connection; see `view`) and `/healthz`.

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
    metrics::Metrics,
    snapshot::{Snapshots, Unavailable},
    view::{self, Filter},
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub snapshots: Snapshots,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/api/v1/paths", get(serve_paths))
        .route("/api/v1/connections", get(serve_connections))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

/// How long a reader waits for the pipeline's snapshot.
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(10);

async fn serve_paths(State(state): State<AppState>) -> axum::response::Response {
    match state.snapshots.fresh(SNAPSHOT_PATIENCE).await {
        Ok(snapshot) => axum::Json(&snapshot.paths).into_response(),
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

fn unavailable_response(unavailable: Unavailable) -> axum::response::Response {
    let message = match unavailable {
        Unavailable::Stopped => "the agent is shutting down\n",
        Unavailable::TooSlow => "the agent did not answer in time\n",
    };
    (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
}

async fn serve_metrics(State(state): State<AppState>) -> impl IntoResponse {
    match state.metrics.encode() {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}

/// Binds first (so that a taken port is reported at start-up), then serves until shutdown.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen} (set another address with --listen)"))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
        .context("serving HTTP")
}
