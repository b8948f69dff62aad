//! The upstream client: HTTP/1.1 connections to providers made by pingora's transport connector
//! (TCP + rustls) and kept alive in our pool (`pool`), with per-provider timeouts and one
//! transparent retry when a pooled connection turns out to be dead before any response byte.
//!
//! A request whose body is in hand goes out in one write: header and body serialized into one
//! buffer (pingora's client session flushes the header on its own, which costs a second
//! segment, or a TCP_CORK round trip to avoid it). Each segment that reaches a sleeping
//! provider costs a wake-up; one write is one wake-up and a few syscalls fewer on the hot path.

use super::headers::RequestHead;
use super::pool::{Pool, Sweeper};
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::routing::Provider;
use bytes::Bytes;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::ErrorType;
use pingora_http::{RequestHeader, ResponseHeader};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Bodies up to this size are copied behind the header so the request leaves in one write;
/// larger ones are written after it (an extra segment is noise next to copying megabytes).
const ONE_WRITE_MAX: usize = 64 << 10;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

pub struct Upstream {
    transport: TransportConnector,
    pool: Arc<Pool>,
}

/// A response being read from a provider.
pub struct Response {
    session: HttpSession,
    /// The pool key of the connection.
    reuse_hash: u64,
    /// A `HEAD` request: whatever the header says, no body follows.
    head: bool,
    pub provider: std::sync::Arc<str>,
    idle: Duration,
    deadline: Instant,
    /// Time from the request being written to the response header.
    pub header_latency: Duration,
    /// Extra attempts made.
    pub retries: u32,
}

fn classify(provider: &Provider, e: &pingora_error::Error, phase: &'static str) -> GatewayError {
    let name = provider.name.to_string();
    match e.etype() {
        ErrorType::ConnectTimedout => GatewayError::UpstreamTimeout {
            provider: name,
            which: "connect",
        },
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => GatewayError::UpstreamTimeout {
            provider: name,
            which: phase,
        },
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::InvalidH2 => {
            GatewayError::UpstreamProtocol {
                provider: name,
                detail: e.etype().as_str().to_string(),
            }
        }
        _ => GatewayError::UpstreamUnreachable {
            provider: name,
            detail: e.etype().as_str().to_string(),
        },
    }
}

fn count_error(provider: &Provider, e: &GatewayError) {
    METRICS
        .upstream_errors
        .with_label_values(&[&provider.name, e.code()])
        .inc();
}

impl Upstream {
    /// `pool_size`: idle connections kept per provider address.
    pub fn new(pool_size: usize) -> Self {
        Self {
            // Connections are pooled here, not in the connector.
            transport: TransportConnector::new(Some(ConnectorOptions::new(0))),
            pool: Arc::new(Pool::new(pool_size, POOL_IDLE)),
        }
    }

    /// The background service that closes idle connections gone stale.
    pub fn sweeper(&self) -> Sweeper {
        Sweeper(self.pool.clone())
    }

    /// A new connection to `peer`. The connector's future (TCP, TLS handshake) is ~8 KiB and
    /// would otherwise be inlined into every request's state machine, which lives as long as
    /// the request (a held stream kept it resident); boxed, it costs only while connecting,
    /// which pooled connections mostly skip.
    async fn connect(&self, peer: &HttpPeer) -> pingora_error::Result<Stream> {
        Box::pin(self.transport.new_stream(peer)).await
    }

    async fn peer(provider: &Provider) -> Result<HttpPeer, GatewayError> {
        let addr = provider
            .address()
            .await
            .map_err(|e| GatewayError::UpstreamUnreachable {
                provider: provider.name.to_string(),
                detail: format!("cannot resolve host: {e}"),
            })?;
        let mut peer = HttpPeer::new(addr, provider.tls, provider.host.clone());
        peer.options.connection_timeout = Some(provider.timeouts.connect);
        peer.options.total_connection_timeout = Some(provider.timeouts.connect);
        peer.options.verify_cert = provider.verify_tls;
        peer.options.verify_hostname = provider.verify_tls;
        Ok(peer)
    }

    /// Sends a request whose whole body is in hand, and reads the response header. Retries once
    /// on a fresh connection when a pooled one fails before answering.
    pub async fn send(
        &self,
        provider: &Provider,
        request: RequestHead,
        body: Bytes,
        started: Instant,
    ) -> Result<Response, GatewayError> {
        let peer = Self::peer(provider).await?;
        let deadline = started + provider.timeouts.total;
        let head = request.is_head;
        let request = Wire::new(request, body);
        let key = peer.reuse_hash();
        let mut retries = 0;
        let mut fresh_only = false;
        loop {
            let (stream, reused) = if fresh_only {
                (self.connect(&peer).await, false)
            } else {
                match self.pool.take(key) {
                    Some(s) => (Ok(s), true),
                    None => (self.connect(&peer).await, false),
                }
            };
            let stream = stream.map_err(|e| {
                let g = classify(provider, &e, "connect");
                count_error(provider, &g);
                g
            })?;
            let sent_at = Instant::now();
            match exchange(stream, &peer, provider, &request, deadline).await {
                Ok(session) => {
                    return Ok(Response::new(
                        session, key, provider, deadline, sent_at, retries, head,
                    ))
                }
                Err(e) if reused && !matches!(e, GatewayError::UpstreamTimeout { .. }) => {
                    // A pooled connection the provider had already closed: nothing reached it.
                    retries += 1;
                    METRICS.retries.with_label_values(&[&provider.name]).inc();
                    fresh_only = true;
                }
                Err(e) => {
                    count_error(provider, &e);
                    return Err(e);
                }
            }
        }
    }
}

/// A serialized request: header (with the body behind it when small) and any large body.
struct Wire {
    head: Bytes,
    body: Option<Bytes>,
}

impl Wire {
    fn new(request: RequestHead, body: Bytes) -> Self {
        let mut head = request.wire;
        let body = if body.len() <= ONE_WRITE_MAX {
            head.extend_from_slice(&body);
            None
        } else {
            Some(body)
        };
        Self {
            head: head.freeze(),
            body,
        }
    }
}

/// Writes the request on a connection and reads the response header.
async fn exchange(
    mut stream: Stream,
    peer: &HttpPeer,
    provider: &Provider,
    request: &Wire,
    deadline: Instant,
) -> Result<HttpSession, GatewayError> {
    let write = async {
        stream.write_all(&request.head).await?;
        if let Some(body) = &request.body {
            stream.write_all(body).await?;
        }
        stream.flush().await
    };
    // A provider that stops reading cannot hold the request past its total timeout.
    pingora_timeout::timeout(deadline.saturating_duration_since(Instant::now()), write)
        .await
        .map_err(|_| GatewayError::UpstreamTimeout {
            provider: provider.name.to_string(),
            which: "total",
        })?
        .map_err(|e| GatewayError::UpstreamUnreachable {
            provider: provider.name.to_string(),
            detail: format!("writing the request: {}", e.kind()),
        })?;
    let mut session = HttpSession::new_with_options(stream, peer);
    read_head(&mut session, provider, deadline).await?;
    Ok(session)
}

/// Reads the response header (skipping informational answers) within the first-byte timeout.
async fn read_head(
    session: &mut HttpSession,
    provider: &Provider,
    deadline: Instant,
) -> Result<(), GatewayError> {
    // One deadline for every informational answer too: a provider sending `100 Continue`
    // forever must not restart the first-byte timeout, nor outlive the total one.
    let first_byte = Instant::now() + provider.timeouts.first_byte;
    let until = first_byte.min(deadline);
    for _ in 0..MAX_INFORMATIONAL {
        let wait = until.saturating_duration_since(Instant::now());
        pingora_timeout::timeout(wait, session.read_response())
            .await
            .map_err(|_| GatewayError::UpstreamTimeout {
                provider: provider.name.to_string(),
                which: "first byte",
            })?
            .map_err(|e| classify(provider, &e, "first byte"))?;
        // Informational answers (100 Continue) are not the response.
        match session.resp_header() {
            Some(h) if h.status.is_informational() => continue,
            Some(_) => return Ok(()),
            None => {
                return Err(GatewayError::UpstreamProtocol {
                    provider: provider.name.to_string(),
                    detail: "no response header".into(),
                })
            }
        }
    }
    Err(GatewayError::UpstreamProtocol {
        provider: provider.name.to_string(),
        detail: format!("more than {MAX_INFORMATIONAL} informational responses"),
    })
}

/// Informational (1xx) answers tolerated before the response.
const MAX_INFORMATIONAL: usize = 16;

impl Response {
    fn new(
        session: HttpSession,
        reuse_hash: u64,
        provider: &Provider,
        deadline: Instant,
        sent_at: Instant,
        retries: u32,
        head: bool,
    ) -> Self {
        let header_latency = sent_at.elapsed();
        METRICS
            .upstream_duration
            .with_label_values(&[&provider.name])
            .observe(header_latency.as_secs_f64());
        Self {
            session,
            reuse_hash,
            head,
            provider: provider.name.clone(),
            idle: provider.timeouts.idle,
            deadline,
            header_latency,
            retries,
        }
    }

    pub fn header(&self) -> Option<&ResponseHeader> {
        self.session.resp_header()
    }

    /// When the provider's total timeout ends.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Next body chunk; `Ok(None)` at the end. Applies the idle and total timeouts.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, GatewayError> {
        if self.head {
            return Ok(None);
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let (wait, which) = if left < self.idle {
            (left, "total")
        } else {
            (self.idle, "idle")
        };
        match pingora_timeout::timeout(wait, self.session.read_body_bytes()).await {
            Err(_) => Err(GatewayError::UpstreamTimeout {
                provider: self.provider.to_string(),
                which,
            }),
            Ok(Err(e)) => Err(GatewayError::UpstreamUnreachable {
                provider: self.provider.to_string(),
                detail: format!("connection broke mid-response ({})", e.etype().as_str()),
            }),
            Ok(Ok(b)) => Ok(b),
        }
    }

    /// The next body chunk if the provider already sent it (buffered or readable now), without
    /// waiting: `None` when it would wait. Reading is cancel-safe (the relay already selects
    /// on it against the client), so a read that would wait is simply dropped.
    pub fn chunk_ready(&mut self) -> Option<Result<Option<Bytes>, GatewayError>> {
        if self.head {
            return Some(Ok(None));
        }
        let mut read = std::pin::pin!(self.session.read_body_bytes());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match read.as_mut().poll(&mut cx) {
            std::task::Poll::Pending => None,
            std::task::Poll::Ready(Ok(b)) => Some(Ok(b)),
            std::task::Poll::Ready(Err(e)) => Some(Err(GatewayError::UpstreamUnreachable {
                provider: self.provider.to_string(),
                detail: format!("connection broke mid-response ({})", e.etype().as_str()),
            })),
        }
    }

    /// Returns the connection to the pool when the response was read to its end (never after
    /// a `HEAD`: the session was not told the body it announces never comes).
    pub async fn release(mut self, upstream: &Upstream) {
        if self.head || !self.session.is_body_done() {
            return;
        }
        self.session.respect_keepalive();
        if let Some(stream) = self.session.reuse().await {
            upstream.pool.put(self.reuse_hash, stream);
        }
    }
}

impl Upstream {
    /// Sends a request whose body is read from the client while it is sent (large passthrough
    /// uploads), on a fresh connection since a stale pooled one could not be retried. Returns
    /// the response and the number of body bytes sent.
    pub async fn send_streaming(
        &self,
        provider: &Provider,
        header: RequestHeader,
        client: &mut pingora_core::protocols::http::ServerSession,
        limit: usize,
        started: Instant,
    ) -> Result<(Response, u64), GatewayError> {
        let peer = Self::peer(provider).await?;
        let deadline = started + provider.timeouts.total;
        let stream = self.connect(&peer).await.map_err(|e| {
            let g = classify(provider, &e, "connect");
            count_error(provider, &g);
            g
        })?;
        let mut session = HttpSession::new_with_options(stream, &peer);
        let io = |e: Box<pingora_error::Error>| {
            let g = classify(provider, &e, "first byte");
            count_error(provider, &g);
            g
        };
        session
            .write_request_header(Box::new(header))
            .await
            .map_err(io)?;
        let mut sent = 0u64;
        while let Some(chunk) = client
            .read_request_body()
            .await
            .map_err(|e| crate::proxy::body::read_error(&e))?
        {
            sent += chunk.len() as u64;
            if sent > limit as u64 {
                return Err(GatewayError::BodyTooLarge { limit });
            }
            session.write_body(&chunk).await.map_err(io)?;
        }
        session.finish_body().await.map_err(io)?;
        let sent_at = Instant::now();
        read_head(&mut session, provider, deadline)
            .await
            .inspect_err(|g| count_error(provider, g))?;
        Ok((
            Response::new(
                session,
                peer.reuse_hash(),
                provider,
                deadline,
                sent_at,
                0,
                false,
            ),
            sent,
        ))
    }
}
