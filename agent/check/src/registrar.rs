//! How a check tells the pipeline which connections are the agent's own: it binds each socket
//! before connecting and registers its local port and remote address, which the pipeline takes
//! in before every kernel event (`idlecut_core::own` keeps them for the model). The
//! registration is sent before the connect starts, so it is always taken in before that
//! connection's first event. A registration ends with the connection's close, which the kernel
//! programs report; one whose connect never succeeded has no close to report, so it ends when
//! its [`Registration`] is dropped unconnected, whatever stopped it (a refusal, a timeout, a
//! cancelled check).

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use idlecut_core::own::{OwnConnection, OwnNotice};
use tokio::{net::TcpSocket, sync::mpsc};

/// Where a check registers the connections it opens. Cloned into every check.
#[derive(Clone, Debug)]
pub struct Registrar(mpsc::UnboundedSender<Notice>);

/// A notice and when the check gave it: the pipeline takes notices in only before kernel
/// events, which may come much later (an abandoned registration's grace runs from here).
pub type Notice = (OwnNotice, Instant);

pub type Registrations = mpsc::UnboundedReceiver<Notice>;

pub fn channel() -> (Registrar, Registrations) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (Registrar(sender), receiver)
}

impl Registrar {
    /// Binds `socket` to an ephemeral port and registers it as the agent's connection to
    /// `remote`. Call before connecting, and tell the registration when the connect succeeded.
    pub fn bind(&self, socket: &TcpSocket, remote: SocketAddr) -> io::Result<Registration> {
        let any = match remote {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        socket.bind(any)?;
        let own = OwnConnection {
            local_port: socket.local_addr()?.port(),
            remote,
        };
        // The pipeline outlives every check; if it is gone, the agent is stopping.
        let _ = self.0.send((OwnNotice::Connecting(own), Instant::now()));
        Ok(Registration {
            registrar: self.0.clone(),
            own: Some(own),
        })
    }
}

/// A registered connection whose connect has not succeeded yet: dropped so, it is abandoned.
#[must_use = "a registration dropped before its connect succeeded is abandoned"]
#[derive(Debug)]
pub struct Registration {
    registrar: mpsc::UnboundedSender<Notice>,
    own: Option<OwnConnection>,
}

impl Registration {
    /// The connect succeeded: the connection's close, which the kernel reports, ends the
    /// registration.
    pub fn connected(mut self) {
        self.own = None;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(own) = self.own.take() {
            let _ = self
                .registrar
                .send((OwnNotice::Abandoned(own), Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binding_registers_the_ephemeral_port() {
        let (registrar, mut registrations) = channel();
        let socket = TcpSocket::new_v4().expect("socket");
        let remote = SocketAddr::from(([127, 0, 0, 1], 143));
        let registration = registrar.bind(&socket, remote).expect("bind");
        let Ok((OwnNotice::Connecting(registered), _)) = registrations.try_recv() else {
            panic!("registered");
        };
        assert_eq!(registered.remote, remote);
        assert_eq!(
            registered.local_port,
            socket.local_addr().expect("bound").port()
        );
        assert_ne!(registered.local_port, 0);
        // Dropped before any connect succeeded: abandoned.
        drop(registration);
        assert!(matches!(
            registrations.try_recv(),
            Ok((OwnNotice::Abandoned(abandoned), _)) if abandoned == registered
        ));
    }

    #[tokio::test]
    async fn a_connected_registration_is_left_to_the_close() {
        let (registrar, mut registrations) = channel();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let socket = TcpSocket::new_v4().expect("socket");
        let remote = listener.local_addr().expect("address");
        let registration = registrar.bind(&socket, remote).expect("bind");
        let _stream = socket.connect(remote).await.expect("connect");
        registration.connected();
        assert!(matches!(
            registrations.try_recv(),
            Ok((OwnNotice::Connecting(_), _))
        ));
        assert!(registrations.try_recv().is_err(), "nothing abandoned");
    }
}
