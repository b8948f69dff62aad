//! The data plane's listening socket and accept loop, run by pingora's server as a service (its
//! threads, its graceful upgrade by handing listening sockets over, its shutdown), with
//! pingora's rustls acceptor for TLS. Each connection is one task of ours holding only what
//! the connection needs.
//!
//! Why not pingora's listening service: its per-connection task keeps room for the TLS
//! handshake's future (~8 KiB) for the connection's whole life, plaintext or not, and every
//! request on it went through an async-trait box (~4 KiB more). At 10,000 held streams that
//! was ~120 MB of a ~370 MB total. Here the handshake is boxed and freed once done, and the
//! HTTP/1 connection loop lives in the task itself.

use super::data_plane::Connections;
use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::l4::listener::Listener;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::Duration;

/// Longest TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(60);
/// Pending connections the kernel queues for us (pingora's listeners use the same).
const BACKLOG: u32 = 65535;
/// Pause after a failed `accept` (out of file descriptors, say) before the next, so a
/// persistent failure does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

pub struct DataListener {
    addr: String,
    tls: Option<TlsSettings>,
    app: Arc<Connections>,
}

impl DataListener {
    pub fn new(addr: String, tls: Option<TlsSettings>, app: Connections) -> Self {
        Self {
            addr,
            tls,
            app: Arc::new(app),
        }
    }
}

/// The listening socket: the one a previous process handed over (graceful upgrade), or a new
/// one, recorded so it can be handed to the next.
async fn listen(addr: &str, fds: Option<ListenFds>) -> std::io::Result<tokio::net::TcpListener> {
    if let Some(fd) = fds.as_ref().and_then(|f| f.lock().get(addr).copied()) {
        // Safety: the fd came from the previous process as a listening TCP socket for this
        // address, and nothing else in this process owns it.
        let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        std.set_nonblocking(true)?;
        return tokio::net::TcpListener::from_std(std);
    }
    let sock_addr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("no address for {addr}")))?;
    let socket = match sock_addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(sock_addr)?;
    let listener = socket.listen(BACKLOG)?;
    if let Some(f) = &fds {
        f.lock().add(addr.to_string(), listener.as_raw_fd());
    }
    Ok(listener)
}

#[async_trait]
impl Service for DataListener {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let listener = match listen(&self.addr, fds).await {
            Ok(l) => Listener::from(l),
            // As pingora's own listeners: a data plane that cannot listen is not a server.
            Err(e) => panic!("data plane cannot listen on {}: {e}", self.addr),
        };
        let tls = self.tls.take().map(|t| Arc::new(t.build()));
        let mut stop = shutdown.clone();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                    continue;
                }
            };
            match accepted {
                Ok(stream) => spawn(self.app.clone(), tls.clone(), stream, shutdown.clone()),
                Err(e) => {
                    log::warn!("data plane accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
        log::info!("data plane stopped listening on {}", self.addr);
    }

    fn name(&self) -> &str {
        "data plane"
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.addr.clone()])
    }
}

/// One connection's task, on a worker chosen by pingora's runtime (a random one when workers
/// do not steal work).
fn spawn(
    app: Arc<Connections>,
    tls: Option<Arc<pingora_core::listeners::tls::Acceptor>>,
    mut stream: L4Stream,
    shutdown: ShutdownWatch,
) {
    // Streamed events go out as written (DESIGN §2: no Nagle delay).
    let _ = stream.set_nodelay();
    pingora_runtime::current_handle().spawn(async move {
        let io: Stream = match tls {
            None => Box::new(stream),
            Some(acceptor) => {
                // Boxed: the handshake's state is freed once done, not kept in the task.
                let handshake = Box::pin(acceptor.tls_handshake(stream));
                match pingora_timeout::timeout(HANDSHAKE, handshake).await {
                    Ok(Ok(tls)) => Box::new(tls),
                    Ok(Err(e)) => {
                        log::debug!("TLS handshake failed: {:?}", e.etype());
                        return;
                    }
                    Err(_) => return,
                }
            }
        };
        app.serve(io, &shutdown).await;
    });
}
