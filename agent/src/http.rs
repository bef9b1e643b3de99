//! HTTP endpoints: `/metrics` for Prometheus (OpenMetrics text), `/api/v1/paths` (JSON, one
//! object per path with its cut-off and verdict), `/api/v1/connections` (JSON, one object per
//! connection; see `view`), `/api/v1/cuts` (JSON, the last cuts; see `cuts`) and `/healthz`.
//!
//! Around the router, and independent of what the handlers read, is `idlecut_web`: who may
//! read what, the accept loop, limits, timeouts, TLS and shutdown.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use idlecut_check::scheduled;
use idlecut_core::{
    cuts,
    listing::{Filter, Watched},
    metrics::{self, Metrics},
    view,
};

use crate::snapshot::{Snapshots, Unavailable};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub snapshots: Snapshots,
    /// The scheduled checks' last findings, shown next to the paths they cover.
    pub checks: scheduled::Results,
    /// The services and prefix lengths the listings' filters must name.
    pub watched: Arc<Watched>,
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

/// The query string as its pairs, in order: a repeated parameter is refused, not taken twice.
type Pairs = Query<Vec<(String, String)>>;

async fn serve_connections(
    State(state): State<AppState>,
    Query(query): Pairs,
) -> axum::response::Response {
    let filter = match Filter::from_query(&view::LISTING, &query, &state.watched, view::MAX_LIMIT) {
        Ok(filter) => filter,
        Err(message) => return bad_request(&message),
    };
    match state.snapshots.fresh(SNAPSHOT_PATIENCE).await {
        Ok(snapshot) => axum::Json(view::select(&snapshot.connections, &filter)).into_response(),
        Err(unavailable) => unavailable_response(unavailable),
    }
}

async fn serve_cuts(
    State(state): State<AppState>,
    Query(query): Pairs,
) -> axum::response::Response {
    let snapshot = match state.snapshots.fresh(SNAPSHOT_PATIENCE).await {
        Ok(snapshot) => snapshot,
        Err(unavailable) => return unavailable_response(unavailable),
    };
    let capacity = snapshot.cuts_capacity;
    match Filter::from_query(&cuts::LISTING, &query, &state.watched, capacity) {
        Ok(filter) => axum::Json(cuts::select(&snapshot.cuts, &filter, capacity)).into_response(),
        Err(message) => bad_request(&message),
    }
}

fn bad_request(message: &str) -> axum::response::Response {
    (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use idlecut_api::vocabulary::{ConnectionState, ResetOrigin, Role, Signature};
    use idlecut_core::{
        cuts::CutRow, events::Nanos, paths::Prefixes, settings::parse_ports, view::ConnectionRow,
    };
    use idlecut_web::client::{AgentClient, encode};
    use tokio::sync::watch;

    use super::*;
    use crate::snapshot::{self, Snapshot};

    static CLOCK: AtomicU64 = AtomicU64::new(1);

    /// A clock that moves on each reading: every snapshot is taken after it was asked for.
    fn tick() -> Nanos {
        CLOCK.fetch_add(1, Ordering::SeqCst)
    }

    fn connection(path: &str) -> ConnectionRow {
        ConnectionRow {
            local: "10.0.1.2:40000".into(),
            remote: "10.0.2.2:143".into(),
            service: "imap".into(),
            role: Role::Client,
            path: path.into(),
            netns: None,
            pid: None,
            cgroup: None,
            pod: None,
            host: None,
            state: ConnectionState::Open,
            age_seconds: None,
            idle_seconds: Some(5.0),
            keepalive: None,
            keepalive_interval_seconds: None,
            keepalive_outlook: None,
            cadence_seconds: None,
            retransmits: 0,
            icmp_error: None,
            end: None,
            closed_seconds_ago: None,
        }
    }

    fn cut(path: &str) -> CutRow {
        CutRow {
            time: "2026-12-03T03:08:44.402Z".into(),
            seconds_ago: 1.0,
            service: "imap".into(),
            role: Role::Client,
            path: path.into(),
            local: "[2001:db8:2::2]:40000".into(),
            remote: "[2001:db8:1::2]:143".into(),
            netns: None,
            idle_before_cut_seconds: 350.0,
            signature: Signature::Reset,
            lost_segment_bytes: None,
            mss: None,
            origin: Some(ResetOrigin::Path),
            reset_hops_from_host: Some(1),
            pid: None,
            cgroup: None,
            pod: None,
            host: None,
        }
    }

    /// The agent's router behind its real HTTP server on a loopback port, with a stand-in for
    /// the pipeline that publishes the same rows whenever asked: no kernel involved.
    async fn serve() -> (AgentClient, watch::Sender<bool>) {
        let (publisher, snapshots) = snapshot::channel(tick);
        tokio::spawn(async move {
            loop {
                publisher.wanted().await;
                publisher.publish(Snapshot {
                    taken_at: tick(),
                    connections: vec![connection("10.0.2.0/24"), connection("other")],
                    cuts: vec![cut("2001:db8:1::/48")],
                    cuts_capacity: 10,
                    ..Snapshot::default()
                });
            }
        });
        let ports = parse_ports("143=imap,587=submission").unwrap();
        let state = AppState {
            metrics: Arc::new(Metrics::new(ports.services().map(Arc::from))),
            snapshots,
            checks: scheduled::results_channel().1,
            watched: Arc::new(Watched::new(&ports, Prefixes { ipv4: 24, ipv6: 48 })),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(idlecut_web::serve(
            listener,
            router(state),
            idlecut_web::WebSettings::load(None).unwrap(),
            idlecut_web::Limits::with_capacity(16),
            stopped,
        ));
        (AgentClient::plain(addr), stop)
    }

    /// GETs `target`: the body of a 200, or the error that says what the agent answered.
    async fn get(client: &Arc<AgentClient>, target: &str) -> Result<serde_json::Value, String> {
        let client = client.clone();
        let target = target.to_owned();
        let body = tokio::task::spawn_blocking(move || client.get(&target))
            .await
            .unwrap()
            .map_err(|err| format!("{err:#}"))?;
        Ok(serde_json::from_str(&body).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listings_refuse_repeated_parameters_and_filters_that_name_nothing() {
        let (client, _stop) = serve().await;
        let client = Arc::new(client);
        for (target, expected) in [
            (
                "/api/v1/connections?limit=1&limit=2",
                "`limit` is given more than once",
            ),
            (
                "/api/v1/connections?service=imap&service=imap",
                "`service` is given more than once",
            ),
            (
                "/api/v1/cuts?origin=path&origin=peer",
                "`origin` is given more than once",
            ),
            (
                "/api/v1/cuts?limit=1&limit=1",
                "`limit` is given more than once",
            ),
            ("/api/v1/connections?service=imapp", "service=`imapp`"),
            ("/api/v1/cuts?service=imapp", "imap, submission"),
            (
                "/api/v1/connections?path=10.0.2.0%2F16",
                "expected 10.0.2.0/24",
            ),
            ("/api/v1/cuts?path=10.0.2.0%2F16", "path=`10.0.2.0/16`"),
            (
                "/api/v1/connections?path=mail.example.net",
                "path=`mail.example.net`",
            ),
            ("/api/v1/cuts?pid=1", "unknown parameter `pid`"),
        ] {
            let err = get(&client, target).await.expect_err(target);
            assert!(err.contains("answered 400"), "{target}: {err}");
            assert!(err.contains(expected), "{target}: {err}");
        }
        // What names something is answered, the path as the table writes it however spelled.
        for (target, total) in [
            ("/api/v1/connections", 2),
            (
                "/api/v1/connections?service=imap&path=10.0.2.0%2F24&limit=1",
                1,
            ),
            ("/api/v1/connections?path=other", 1),
            ("/api/v1/connections?service=submission", 0),
            (
                &format!(
                    "/api/v1/cuts?service=imap&path={}",
                    encode("2001:db8:1:0::/48")
                ),
                1,
            ),
        ] {
            let answer = get(&client, target)
                .await
                .unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(answer["total"], total, "{target}: {answer}");
        }
    }
}
