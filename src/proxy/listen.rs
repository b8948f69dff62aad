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
        let mut h2_preface = false;
        let io: Stream = match tls {
            None => {
                if app.h2c() {
                    match opens_with_h2_preface(&mut stream).await {
                        Some(h2) => h2_preface = h2,
                        None => return,
                    }
                }
                Box::new(stream)
            }
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
        app.serve(io, h2_preface, &shutdown).await;
    });
}

/// The first bytes of an HTTP/2 connection without TLS (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plaintext connection opens with HTTP/2's preface. Reads only as far as it takes
/// to tell — the first byte that differs from the preface settles it — and puts back what it
/// read. (pingora's peek waits for all 24 bytes, with no timeout: an HTTP/1 request shorter
/// than that, `GET / HTTP/1.1` with no fields, hung, and a client that sent nothing was held
/// forever.) `None`: nothing arrived within the read timeout, or the client closed.
async fn opens_with_h2_preface(stream: &mut L4Stream) -> Option<bool> {
    use tokio::io::AsyncReadExt;
    let mut got = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    let verdict = loop {
        let read = stream.read(&mut got[len..]);
        match pingora_timeout::timeout(super::data_plane::CLIENT_READ_TIMEOUT, read).await {
            Ok(Ok(n)) if n > 0 => len += n,
            // Closed, failed or silent: whatever arrived is HTTP/1's to answer (or not).
            _ if len > 0 => break false,
            _ => return None,
        }
        if got[..len] != H2_PREFACE[..len] {
            break false;
        }
        if len == H2_PREFACE.len() {
            break true;
        }
    };
    stream.rewind(&got[..len]);
    Some(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The server's end of a real TCP connection whose client first sent `first`.
    async fn accepted(first: &[u8]) -> (L4Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client.write_all(first).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (L4Stream::from(server), client)
    }

    #[tokio::test]
    async fn a_short_http1_request_is_told_apart_without_waiting_and_put_back() {
        let wire = b"GET / HTTP/1.1\r\n\r\n"; // 18 bytes: fewer than the preface's 24
        let (mut s, _client) = accepted(wire).await;
        let verdict = tokio::time::timeout(Duration::from_secs(10), opens_with_h2_preface(&mut s))
            .await
            .expect("no wait for 24 bytes");
        assert_eq!(verdict, Some(false));
        let mut back = vec![0u8; wire.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, wire);
    }

    #[tokio::test]
    async fn the_preface_is_h2_and_a_client_that_closes_silently_is_dropped() {
        let (mut s, _client) = accepted(H2_PREFACE).await;
        assert_eq!(opens_with_h2_preface(&mut s).await, Some(true));
        let mut back = vec![0u8; H2_PREFACE.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, H2_PREFACE);
        let (mut s, client) = accepted(b"").await;
        drop(client);
        assert_eq!(opens_with_h2_preface(&mut s).await, None);
    }
}
