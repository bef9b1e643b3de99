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
//! Secrets are compared in constant time: the token through SHA-256 digests compared with
//! `subtle`, passwords with bcrypt. bcrypt is slow by design, so one check runs at a time (a
//! password guesser gets one core at most) and a user's last good password is remembered as a
//! digest, so that Prometheus's scrapes do not pay for bcrypt each time.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::{Context as _, bail};
use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use base64::Engine as _;
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;

use super::{server::Peer, web_config::WebSettings};

type Digest = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Digest {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        // Lengths first, so that ("ab", "c") and ("a", "bc") differ.
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let mut digest = [0; 32];
    digest.copy_from_slice(context.finish().as_ref());
    digest
}

/// A bearer token and basic-auth users, as configured.
pub struct Credentials {
    token: Option<Digest>,
    /// User -> bcrypt hash.
    users: BTreeMap<String, String>,
    /// User -> digest of (hash, password) last verified, so that a good password costs one
    /// bcrypt run per user, not one per scrape.
    verified: Mutex<HashMap<String, Digest>>,
    bcrypt_turn: Semaphore,
}

/// Longest wait for a bcrypt check's turn.
const BCRYPT_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A well-formed bcrypt hash that no password matches in practice: unknown users cost the same
/// bcrypt run as known ones, so that timing does not tell which users exist.
const UNKNOWN_USER_HASH: &str = "$2y$10$3KnqDgvXhi7MvHLRWTbUeuQsz8Ypk9nlJIvX3gW.xKGBhbT3.ZU1a";

impl Credentials {
    pub fn new(token: Option<&str>, users: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        for (user, hash) in users {
            if user.is_empty() || user.contains(':') {
                bail!("`{user}` is not a user name (not empty, no `:`)");
            }
            hash.parse::<bcrypt::HashParts>()
                .ok()
                .with_context(|| {
                    format!(
                        "the password hash of `{user}` is not a bcrypt hash ($2y$..., as `htpasswd -nbBC 10 USER PASSWORD` prints after the colon)"
                    )
                })?;
        }
        Ok(Self {
            token: token.map(|token| sha256(&[token.as_bytes()])),
            users: users.clone(),
            verified: Mutex::new(HashMap::new()),
            bcrypt_turn: Semaphore::new(1),
        })
    }

    pub fn has_basic_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether the request's Authorization header carries a configured credential.
    pub async fn check(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
        else {
            return false;
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self
                .token
                .is_some_and(|token| bool::from(sha256(&[rest.as_bytes()]).ct_eq(&token)));
        }
        if scheme.eq_ignore_ascii_case("basic") && self.has_basic_users() {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
                return false;
            };
            let Ok(decoded) = String::from_utf8(decoded) else {
                return false;
            };
            let Some((user, password)) = decoded.split_once(':') else {
                return false;
            };
            return self.check_password(user, password).await;
        }
        false
    }

    async fn check_password(&self, user: &str, password: &str) -> bool {
        let hash = self.users.get(user);
        let digest = sha256(&[
            user.as_bytes(),
            hash.map_or(&b""[..], |hash| hash.as_bytes()),
            password.as_bytes(),
        ]);
        let remembered = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .is_some_and(|known| bool::from(known.ct_eq(&digest)));
        if remembered {
            return true;
        }
        // Under a flood of guesses the queue grows: a request that cannot get its turn soon
        // is refused rather than held (it would hold an HTTP connection slot meanwhile).
        let Ok(Ok(_turn)) =
            tokio::time::timeout(BCRYPT_QUEUE_WAIT, self.bcrypt_turn.acquire()).await
        else {
            return false;
        };
        let known_hash = hash.cloned();
        let password = password.to_owned();
        let verified = tokio::task::spawn_blocking(move || {
            let hash = known_hash.as_deref().unwrap_or(UNKNOWN_USER_HASH);
            bcrypt::verify(password, hash).unwrap_or(false) && known_hash.is_some()
        })
        .await
        .unwrap_or(false);
        if verified {
            self.verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(user.to_owned(), digest);
        }
        verified
    }
}

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
        let credentials_ok = match &settings.credentials {
            None => true,
            Some(credentials) => credentials.check(request.headers()).await,
        };
        if certificate_ok && credentials_ok {
            return next.run(request).await;
        }
        let (bearer, basic) = settings
            .credentials
            .as_ref()
            .map_or((false, false), |c| (c.token.is_some(), c.has_basic_users()));
        return unauthorized(bearer, basic);
    }
    if request.uri().path().starts_with("/api/") && !settings.unauthenticated_api.allows(peer.addr)
    {
        return (
            StatusCode::FORBIDDEN,
            "forbidden: /api/v1 lists each connection's remote address and process; without \
             authentication the agent serves it to loopback clients only (configure \
             authentication or unauthenticated_api in the --web-config file)\n",
        )
            .into_response();
    }
    next.run(request).await
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

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers(&format!("Basic {encoded}"))
    }

    #[tokio::test]
    async fn tokens_and_passwords_are_checked() {
        let users = BTreeMap::from([("prometheus".to_owned(), bcrypt::hash("s3cret", 4).unwrap())]);
        let credentials = Credentials::new(Some("t0ken"), &users).unwrap();
        assert!(credentials.check(&headers("Bearer t0ken")).await);
        assert!(credentials.check(&headers("bearer  t0ken")).await);
        assert!(!credentials.check(&headers("Bearer t0ke")).await);
        assert!(!credentials.check(&headers("Bearer")).await);
        assert!(!credentials.check(&HeaderMap::new()).await);
        assert!(credentials.check(&basic("prometheus", "s3cret")).await);
        // Remembered now: the same answer from the digest.
        assert!(credentials.check(&basic("prometheus", "s3cret")).await);
        assert!(!credentials.check(&basic("prometheus", "s3cre")).await);
        assert!(!credentials.check(&basic("nobody", "s3cret")).await);
        assert!(!credentials.check(&headers("Basic !!!")).await);
    }

    #[test]
    fn bad_hashes_and_user_names_are_refused() {
        for (user, hash) in [("alice", "plain"), ("a:b", "$2y$04$abcdefghijklmnopqrstuu")] {
            let users = BTreeMap::from([(user.to_owned(), hash.to_owned())]);
            assert!(Credentials::new(None, &users).is_err(), "{user} {hash}");
        }
    }

    /// The layer around a router of stand-in handlers, asked as a client at `peer` would.
    async fn answer(web: &Arc<WebSettings>, peer: &str, path: &str, token: Option<&str>) -> u16 {
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
        app.oneshot(request).await.unwrap().status().as_u16()
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

    #[test]
    fn the_unknown_user_hash_is_well_formed() {
        assert!(UNKNOWN_USER_HASH.parse::<bcrypt::HashParts>().is_ok());
    }
}
