//! The accept loop and the life of each HTTP connection, bounded in every direction a client
//! could stretch it:
//!
//! - **Count**: at most `max_connections` at once (sized from the open-files limit, see
//!   `descriptors`). When full, a new connection evicts the oldest one that has no request in
//!   progress (idle keep-alive, half-sent heads, stalled TLS handshakes), as nginx reuses its
//!   idle keep-alive connections; if every one is busy, the new one is closed at once.
//! - **Time**: a request head must arrive within `header_read_timeout` of the connection
//!   waiting for it, which also ends idle keep-alive connections; a TLS handshake within
//!   `handshake_timeout`; and a connection on which no byte moves for `stall_timeout` (a client
//!   that stops reading its answer) is closed.
//! - **Shutdown**: on the stop signal, the listener closes, connections without a request in
//!   progress close (a half-sent head included), requests in progress get `shutdown_grace` to
//!   finish, then whatever is left is dropped.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
    task::JoinSet,
};
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use super::{error_bodies::ErrorBodies, web_config::WebSettings};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
    pub stall_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Limits {
    pub fn with_capacity(max_connections: usize) -> Self {
        Self {
            max_connections,
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Who is on the other end of a request's connection; handlers and layers read it from the
/// request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The client presented a certificate that the configured client CA verified.
    pub verified_certificate: bool,
}

/// The connection slot a request holds. A layer that makes a request wait for nothing but
/// time (a throttled client's slow answer) parks it: while parked, the connection counts as
/// idle, so that a new connection may evict it when the server is full.
#[derive(Clone)]
pub struct Slot(Arc<Activity>);

impl Slot {
    pub fn park(&self) -> Parked {
        self.0.requests_in_progress.fetch_sub(1, Ordering::Relaxed);
        Parked(self.0.clone())
    }
}

/// A parked request; busy again when dropped.
pub struct Parked(Arc<Activity>);

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.requests_in_progress.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the accept loop and a connection share about it.
struct Activity {
    opened: Instant,
    /// Milliseconds after `opened` at which a byte last moved.
    last_progress_ms: AtomicU64,
    requests_in_progress: AtomicUsize,
    evicted: AtomicBool,
    evict: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            requests_in_progress: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    fn progressed(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_progress_ms.store(ms, Ordering::Relaxed);
    }

    fn stalled_for(&self) -> Duration {
        self.opened.elapsed().saturating_sub(Duration::from_millis(
            self.last_progress_ms.load(Ordering::Relaxed),
        ))
    }

    fn is_idle(&self) -> bool {
        self.requests_in_progress.load(Ordering::Relaxed) == 0
    }
}

/// The open connections, oldest first.
struct Registry {
    capacity: usize,
    next_id: u64,
    open: BTreeMap<u64, Arc<Activity>>,
    refused: u64,
    last_refusal_log: Option<Instant>,
}

impl Registry {
    /// Makes room for a new connection: evicts the oldest idle one when full. None when every
    /// connection is busy.
    fn admit(&mut self) -> Option<(u64, Arc<Activity>)> {
        if self.open.len() >= self.capacity {
            let oldest_idle = self
                .open
                .iter()
                .find(|(_, activity)| activity.is_idle())
                .map(|(&id, _)| id);
            let Some(id) = oldest_idle else {
                self.refused += 1;
                let now = Instant::now();
                if self
                    .last_refusal_log
                    .is_none_or(|last| now.duration_since(last) > Duration::from_secs(10))
                {
                    warn!(
                        capacity = self.capacity,
                        refused = self.refused,
                        "HTTP connections at capacity, all busy: closing new ones"
                    );
                    self.last_refusal_log = Some(now);
                }
                return None;
            };
            if let Some(activity) = self.open.remove(&id) {
                activity.evicted.store(true, Ordering::Relaxed);
                activity.evict.notify_one();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let activity = Arc::new(Activity::new());
        self.open.insert(id, activity.clone());
        Some((id, activity))
    }
}

/// Removes a connection from the registry when its task ends, however it ends.
struct Registered {
    registry: Arc<Mutex<Registry>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .remove(&self.id);
    }
}

/// Counts a request as in progress until dropped (answered or abandoned).
struct InProgress(Arc<Activity>);

impl InProgress {
    fn new(activity: &Arc<Activity>) -> Self {
        activity
            .requests_in_progress
            .fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.requests_in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `app` on `listener` until `shutdown` turns true, then drains as described above.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    web: Arc<WebSettings>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let registry = Arc::new(Mutex::new(Registry {
        capacity: limits.max_connections,
        next_id: 0,
        open: BTreeMap::new(),
        refused: 0,
        last_refusal_log: None,
    }));
    let mut connections = JoinSet::new();
    let mut last_accept_error_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE/ENFILE above all: the descriptor reserve is for the agent's own work,
                // so wait for connections to close rather than spin.
                let now = Instant::now();
                if last_accept_error_log
                    .is_none_or(|last| now.duration_since(last) > Duration::from_secs(10))
                {
                    warn!("accepting an HTTP connection: {err}");
                    last_accept_error_log = Some(now);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit();
        let Some((id, activity)) = admitted else {
            drop(stream);
            continue;
        };
        let registered = Registered {
            registry: registry.clone(),
            id,
        };
        let connection = Connection {
            app: app.clone(),
            web: web.clone(),
            limits,
            addr,
            activity,
            shutdown: shutdown.clone(),
        };
        connections.spawn(async move {
            let _registered = registered;
            connection.run(stream).await;
        });
    }
    drop(listener);
    let open = connections.len();
    if open > 0 {
        debug!(open, "closing HTTP connections");
        let drained = tokio::time::timeout(limits.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            info!(
                left = connections.len(),
                grace = ?limits.shutdown_grace,
                "closing HTTP connections that did not finish in time"
            );
            connections.shutdown().await;
        }
    }
    Ok(())
}

struct Connection {
    app: Router,
    web: Arc<WebSettings>,
    limits: Limits,
    addr: SocketAddr,
    activity: Arc<Activity>,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let stream = Tracked::new(stream, self.activity.clone());
        let Some(tls) = self.web.current().tls.clone() else {
            self.serve_http(stream, false).await;
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let handshake = tokio::select! {
            handshake = tokio::time::timeout(self.limits.handshake_timeout, acceptor.accept(stream)) => handshake,
            () = self.activity.evict.notified() => return,
            _ = self.shutdown.wait_for(|stop| *stop) => return,
        };
        match handshake {
            Ok(Ok(stream)) => {
                let verified_certificate = stream.get_ref().1.peer_certificates().is_some();
                self.serve_http(stream, verified_certificate).await;
            }
            Ok(Err(err)) => debug!(peer = %self.addr, "TLS handshake failed: {err}"),
            Err(_) => debug!(peer = %self.addr, "TLS handshake timed out"),
        }
    }

    async fn serve_http<IO>(mut self, io: IO, verified_certificate: bool)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = Peer {
            addr: self.addr,
            verified_certificate,
        };
        let app = self.app.clone();
        let activity = self.activity.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            let in_progress = InProgress::new(&activity);
            request.extensions_mut().insert(peer);
            request.extensions_mut().insert(Slot(activity.clone()));
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await;
                drop(in_progress);
                response
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            // Request heads are small (a scrape's is under 1 KiB, with a token under 2): 128 KiB
            // bounds each connection's buffer, and still lets hyper tell a target over its
            // 64 KiB limit (414) from headers over this one (431).
            .max_header_size(128 * 1024)
            .serve_connection(TokioIo::new(ErrorBodies::new(io)), service);
        tokio::pin!(connection);
        let mut draining = false;
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        debug!(peer = %self.addr, "HTTP connection: {err}");
                    }
                    return;
                }
                _ = self.shutdown.wait_for(|stop| *stop), if !draining => {
                    // No request in progress (idle keep-alive, or a head still arriving, which
                    // hyper's graceful shutdown would wait for): nothing to lose, close now.
                    if self.activity.is_idle() {
                        return;
                    }
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = self.activity.evict.notified() => {
                    debug!(peer = %self.addr, "evicting an idle HTTP connection to make room");
                    return;
                }
                _ = watchdog.tick() => {
                    if self.activity.stalled_for() > self.limits.stall_timeout {
                        debug!(peer = %self.addr, "closing a stalled HTTP connection");
                        return;
                    }
                }
            }
        }
    }
}

/// A socket that notes when bytes move, for the stall watchdog, and closes gracefully.
struct Tracked {
    /// Always Some until dropped.
    io: Option<TcpStream>,
    activity: Arc<Activity>,
}

impl Tracked {
    fn new(io: TcpStream, activity: Arc<Activity>) -> Self {
        Self {
            io: Some(io),
            activity,
        }
    }

    fn io(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.io.as_mut().expect("only taken when dropped"))
    }
}

/// Connections closing gracefully at most at once (beyond the connection limit: it is few, to
/// keep the descriptors reserved for the agent's own work); past it, a close is abrupt.
const MAX_LINGERING: usize = 32;
/// How long, and how many bytes, a closing connection reads and discards.
const LINGER_FOR: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 20;

static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// Whether the client sent bytes the server has not read (a peek, which takes nothing).
fn has_unread_bytes(io: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(io).peek(&mut probe), Ok(n) if n > 0)
}

impl Drop for Tracked {
    /// Closing a socket with unread bytes in its receive queue sends a RST, and the client's
    /// kernel may then throw away the answer it has not read yet (a 431 to a head over the
    /// limit, a 505 to an HTTP/2 preface) or fail the write it is still making. So, as nginx's
    /// lingering close does: send FIN, read and discard what still comes for a while, then
    /// close. Only then: a connection with nothing unread (an idle keep-alive one evicted, a
    /// finished exchange) closes at once, so that lingering never holds descriptors that the
    /// connection limit has just freed.
    fn drop(&mut self) {
        let Some(mut io) = self.io.take() else {
            return;
        };
        if !has_unread_bytes(&io) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let admitted = LINGERING.try_update(Ordering::AcqRel, Ordering::Acquire, |lingering| {
            (lingering < MAX_LINGERING).then_some(lingering + 1)
        });
        if admitted.is_err() {
            return;
        }
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let _ = tokio::time::timeout(LINGER_FOR, async {
                if io.shutdown().await.is_err() {
                    return;
                }
                let mut discard = vec![0; 16 * 1024];
                let mut read = 0;
                while read < LINGER_BYTES {
                    match io.read(&mut discard).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            })
            .await;
            drop(io);
            LINGERING.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = self.io().poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.progressed();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = self.io().poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.progressed();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(capacity: usize) -> Registry {
        Registry {
            capacity,
            next_id: 0,
            open: BTreeMap::new(),
            refused: 0,
            last_refusal_log: None,
        }
    }

    #[test]
    fn a_full_registry_evicts_the_oldest_idle_connection() {
        let mut registry = registry(2);
        let (_, first) = registry.admit().expect("room");
        let (_, second) = registry.admit().expect("room");
        let _busy = InProgress::new(&first);
        let (third_id, _) = registry.admit().expect("an idle one is evicted");
        assert!(!first.evicted.load(Ordering::Relaxed), "busy: kept");
        assert!(
            second.evicted.load(Ordering::Relaxed),
            "oldest idle: evicted"
        );
        assert_eq!(
            registry.open.keys().copied().collect::<Vec<_>>(),
            [0, third_id]
        );
    }

    #[test]
    fn a_registry_of_busy_connections_refuses() {
        let mut registry = registry(1);
        let (_, only) = registry.admit().expect("room");
        let _busy = InProgress::new(&only);
        assert!(registry.admit().is_none());
        assert_eq!(registry.refused, 1);
    }
}
