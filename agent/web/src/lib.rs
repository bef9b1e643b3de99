//! idlecut's HTTP side, independent of what its handlers read: the server around a router
//! (`server`: accept loop, connection limits, header, handshake and stall timeouts, shutdown
//! with a deadline), who may read what (`auth`, `web_config`: the `--web-config` file, reloaded
//! when it changes), `tls`, `error_bodies` (bodies for hyper's own 4xx answers),
//! `descriptors` (the open-files limit), and `client`, the one client of a running agent.

pub mod auth;
pub mod client;
mod credentials;
pub mod descriptors;
mod error_bodies;
mod server;
pub mod tls;
mod web_config;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::Router;
use tokio::sync::watch;

pub use self::{server::Limits, web_config::WebSettings};

/// The address the agent listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// An HTTP listening address (`--listen`, or the agent a client asks).
pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("`{value}` is not an address and port, such as 127.0.0.1:9464 or [::1]:9464")
    })
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

/// Serves `router` behind the access rules of `web`, within `limits`, until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    web: Arc<WebSettings>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = router.layer(axum::middleware::from_fn_with_state(
        web.clone(),
        auth::require,
    ));
    server::serve(listener, app, web, limits, shutdown)
        .await
        .context("serving HTTP")
}
