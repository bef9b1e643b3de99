//! Who may read what, as a layer around the router (the handlers know nothing of it):
//!
//! - `/healthz` is always open (liveness probes carry no credentials).
//! - With authentication configured (a bearer token, basic-auth users, or a client CA), every
//!   other request needs it: a verified client certificate if a client CA is set, and the
//!   token or a user's password if those are set. Anything less gets 401 with a body that does
//!   not say which part was wrong.
//! - Without authentication, `/metrics` is open and `/api/v1/*` (remote addresses and
//!   processes of each connection) is served to loopback clients only, unless the web config
//!   says otherwise (`unauthenticated_api`).
//!
//! - Password checks are rationed (`credentials`): a request whose check cannot run now gets
//!   429 with `Retry-After`, after a delay during which its connection counts as idle: a
//!   flood of guesses gets slow answers, and never holds the connection slots (nor the CPU)
//!   that valid scrapes and `/healthz` need.
//!
//! What the credentials are and how they are checked is `credentials`'.

use std::sync::Arc;

use super::{
    credentials::Verdict,
    server::{Peer, Slot},
    web_config::{ApiAccess, WebSettings},
};

/// The longest a throttled request is held before its 429.
const MAX_TARPIT: std::time::Duration = std::time::Duration::from_secs(2);
use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};

/// The layer: lets a request through or answers 401/403 itself.
pub async fn require(
    State(web): State<Arc<WebSettings>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let settings = web.current();
    let Some(peer) = request.extensions().get::<Peer>().copied() else {
        // Every connection is served with its Peer; without one, refuse rather than guess.
        return unauthorized(false, false);
    };
    if settings.requires_authentication() {
        let certificate_ok = !settings.client_certificates || peer.verified_certificate;
        let verdict = match &settings.credentials {
            None => Verdict::Granted,
            // Without the certificate, the password is not worth a bcrypt run.
            Some(_) if !certificate_ok => Verdict::Denied,
            Some(credentials) => credentials.check(request.headers(), peer.addr.ip()).await,
        };
        return match verdict {
            Verdict::Granted if certificate_ok => next.run(request).await,
            Verdict::Throttled(wait) => {
                // A slow answer, so that a failing client gets fewer of them, but a parked one:
                // it holds no slot a newcomer needs, and no CPU.
                let tarpit = wait.min(MAX_TARPIT);
                let _parked = request.extensions().get::<Slot>().map(Slot::park);
                tokio::time::sleep(tarpit).await;
                throttled(wait.saturating_sub(tarpit))
            }
            _ => {
                let (bearer, basic) = settings
                    .credentials
                    .as_ref()
                    .map_or((false, false), |c| (c.has_token(), c.has_basic_users()));
                unauthorized(bearer, basic)
            }
        };
    }
    if request.uri().path().starts_with("/api/") && !settings.unauthenticated_api.allows(peer.addr)
    {
        return (
            StatusCode::FORBIDDEN,
            forbidden(settings.unauthenticated_api),
        )
            .into_response();
    }
    next.run(request).await
}

/// A password check refused for now (too many at once, or this client failed recently): it
/// says when to try again, and nothing about the credentials.
fn throttled(wait: std::time::Duration) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0);
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many requests: password checks are rationed; retry in {seconds} s (a client \
             whose password was wrong waits longer after each failure)\n"
        ),
    )
        .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&seconds.to_string()).expect("digits"),
    );
    response
}

/// The 403 body: the setting in force (`unauthenticated_api`, loopback by default) and how to
/// be let in.
fn forbidden(access: ApiAccess) -> &'static str {
    match access {
        ApiAccess::Loopback => {
            "forbidden: /api/v1 lists each connection's remote address and process; without \
             authentication this agent serves it to loopback clients only \
             (unauthenticated_api = \"loopback\", the default). To read it from here, configure \
             authentication (bearer_token_file, basic_auth_users or a client CA) or set \
             unauthenticated_api = \"anywhere\" in its --web-config file\n"
        }
        ApiAccess::Nowhere => {
            "forbidden: /api/v1 lists each connection's remote address and process; this \
             agent's web config sets unauthenticated_api = \"nowhere\": without authentication \
             it serves /api/v1 to no client, loopback included. To read it, configure \
             authentication (bearer_token_file, basic_auth_users or a client CA) in its \
             --web-config file, or set unauthenticated_api = \"loopback\" there to serve \
             loopback clients\n"
        }
        // Refuses nobody: never sent.
        ApiAccess::Anywhere => "forbidden: /api/v1 is not served to this client\n",
    }
}

/// The same answer whatever was missing or wrong.
fn unauthorized(bearer: bool, basic: bool) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        "unauthorized: this endpoint needs valid credentials\n",
    )
        .into_response();
    let headers = response.headers_mut();
    if bearer {
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"idlecut\""),
        );
    }
    if basic {
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"idlecut\", charset=\"UTF-8\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status the layer around a router of stand-in handlers answers a client at `peer`.
    async fn answer(web: &Arc<WebSettings>, peer: &str, path: &str, token: Option<&str>) -> u16 {
        answer_with_body(web, peer, path, token).await.0
    }

    /// The layer around a router of stand-in handlers, asked as a client at `peer` would:
    /// status and body.
    async fn answer_with_body(
        web: &Arc<WebSettings>,
        peer: &str,
        path: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        use tower::ServiceExt as _;
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(|| async { "metrics" }))
            .route("/api/v1/paths", axum::routing::get(|| async { "[]" }))
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(web.clone(), require));
        let mut request = Request::builder().uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let mut request = request.body(axum::body::Body::empty()).unwrap();
        request.extensions_mut().insert(Peer {
            addr: peer.parse().unwrap(),
            verified_certificate: false,
        });
        let response = app.oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_refusal_says_what_the_web_config_set_and_how_to_be_let_in() {
        let by_default = WebSettings::load(None).unwrap();
        let (status, body) =
            answer_with_body(&by_default, "192.0.2.7:40000", "/api/v1/paths", None).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("loopback clients only"), "{body}");
        assert!(
            body.contains("unauthenticated_api = \"anywhere\""),
            "{body}"
        );

        let dir = std::env::temp_dir().join(format!("idlecut-auth-nowhere-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("web.toml"), "unauthenticated_api = \"nowhere\"\n").unwrap();
        let nowhere = WebSettings::load(Some(&dir.join("web.toml"))).unwrap();
        for peer in ["127.0.0.1:40000", "[::1]:40000", "192.0.2.7:40000"] {
            let (status, body) = answer_with_body(&nowhere, peer, "/api/v1/paths", None).await;
            assert_eq!(status, 403, "{peer}: {body}");
            // Not the default's words: loopback clients are refused too.
            assert!(!body.contains("loopback clients only"), "{peer}: {body}");
            assert!(
                body.contains("unauthenticated_api = \"nowhere\""),
                "{peer}: {body}"
            );
            assert!(body.contains("loopback included"), "{peer}: {body}");
            // How to be let in: authentication, or another setting.
            assert!(body.contains("bearer_token_file"), "{peer}: {body}");
            assert!(
                body.contains("unauthenticated_api = \"loopback\""),
                "{peer}: {body}"
            );
        }
        assert_eq!(
            answer(&nowhere, "127.0.0.1:40000", "/metrics", None).await,
            200
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn without_authentication_the_api_is_for_loopback_clients_only() {
        let web = WebSettings::load(None).unwrap();
        for (peer, path, status) in [
            ("127.0.0.1:40000", "/api/v1/paths", 200),
            ("[::1]:40000", "/api/v1/paths", 200),
            ("192.0.2.7:40000", "/api/v1/paths", 403),
            ("[2001:db8::7]:40000", "/api/v1/paths", 403),
            ("192.0.2.7:40000", "/metrics", 200),
            ("192.0.2.7:40000", "/healthz", 200),
        ] {
            assert_eq!(
                answer(&web, peer, path, None).await,
                status,
                "{peer} {path}"
            );
        }
    }

    #[tokio::test]
    async fn with_a_token_every_path_but_healthz_needs_it_from_anywhere() {
        let dir = std::env::temp_dir().join(format!("idlecut-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "s3cret\n").unwrap();
        std::fs::write(dir.join("web.toml"), "bearer_token_file = \"token\"\n").unwrap();
        let web = WebSettings::load(Some(&dir.join("web.toml"))).unwrap();
        for peer in ["127.0.0.1:40000", "192.0.2.7:40000"] {
            for path in ["/metrics", "/api/v1/paths", "/nowhere"] {
                assert_eq!(answer(&web, peer, path, None).await, 401, "{peer} {path}");
                assert_eq!(
                    answer(&web, peer, path, Some("s3cre")).await,
                    401,
                    "{peer} {path}"
                );
            }
            assert_eq!(
                answer(&web, peer, "/api/v1/paths", Some("s3cret")).await,
                200
            );
            assert_eq!(answer(&web, peer, "/nowhere", Some("s3cret")).await, 404);
            assert_eq!(answer(&web, peer, "/healthz", None).await, 200);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
