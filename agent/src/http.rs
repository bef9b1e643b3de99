//! HTTP endpoints: `/metrics` for Prometheus (OpenMetrics text), `/api/v1/paths` (JSON, one
//! object per path with its cut-off and verdict) and `/healthz`.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::sync::watch;

use crate::{inference::Inference, metrics::Metrics};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub inference: Arc<Mutex<Inference>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/api/v1/paths", get(serve_paths))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

async fn serve_paths(State(state): State<AppState>) -> impl IntoResponse {
    let reports = state
        .inference
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .reports();
    axum::Json(reports)
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
