//! The agent's HTTP server as the agent runs it (sized the same, behind the same access
//! rules), on loopback, on a runtime of its own, with stand-in handlers.

use std::{net::SocketAddr, sync::Arc};

use idlecut_web::{Limits, WebSettings, descriptors};
use tokio::sync::watch;

pub struct TestServer {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    stop: watch::Sender<bool>,
    serving: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub fn start(web: Arc<WebSettings>) -> Self {
        let limit = descriptors::raise_open_file_limit().expect("open-files limit");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = watch::channel(false);
        let router = axum::Router::new()
            .route("/metrics", axum::routing::get(|| async { "# EOF\n" }))
            .route("/healthz", axum::routing::get(|| async { "ok\n" }));
        let limits = Limits::with_capacity(descriptors::http_connection_capacity(limit.soft));
        let serving = runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            idlecut_web::serve(listener, router, web, limits, stopped).await
        });
        Self {
            addr,
            runtime: Some(runtime),
            stop,
            serving: Some(serving),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let (Some(runtime), Some(serving)) = (self.runtime.take(), self.serving.take()) {
            let result = runtime.block_on(serving);
            if !std::thread::panicking() {
                result.expect("server task").expect("server");
            }
        }
    }
}
