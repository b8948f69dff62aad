//! The upstream client: HTTP/1.1 connections to providers made by pingora's transport connector
//! (TCP + rustls) and kept alive in our pool (`pool`), with per-provider timeouts and one
//! transparent retry when a pooled connection turns out to be dead before any response byte.
//!
//! A request whose body is in hand goes out in one write: header and body serialized into one
//! buffer (pingora's client session flushes the header on its own, which costs a second
//! segment, or a TCP_CORK round trip to avoid it). Each segment that reaches a sleeping
//! provider costs a wake-up; one write is one wake-up and a few syscalls fewer on the hot path.

use super::h1::body::Body;
use super::h1::response::{self as h1_response, Head};
use super::h1::ReadError;
use super::headers::RequestHead;
use super::pool::{Pool, Sweeper};
use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::routing::Provider;
use bytes::{Bytes, BytesMut};
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::ErrorType;
use pingora_http::RequestHeader;
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
    stream: Stream,
    head: Head,
    body: Body,
    /// The pool key of the connection.
    reuse_hash: u64,
    pub provider: std::sync::Arc<str>,
    idle: Duration,
    deadline: Instant,
    /// Time from the request being written to the response header.
    pub header_latency: Duration,
    /// Extra attempts made.
    pub retries: u32,
}

/// What the response reader's errors mean to the client: a timeout or a broken connection
/// (502 `upstream_unreachable`, retried on a pooled connection) or a response that is not
/// HTTP (502 `upstream_protocol`).
fn read_error(provider: &str, e: ReadError, phase: &str) -> GatewayError {
    match e {
        ReadError::Io(kind) => GatewayError::UpstreamUnreachable {
            provider: provider.to_string(),
            detail: format!("{phase}: {kind}"),
        },
        ReadError::Closed => GatewayError::UpstreamUnreachable {
            provider: provider.to_string(),
            detail: format!("{phase}: connection closed"),
        },
        ReadError::Protocol(detail) => GatewayError::UpstreamProtocol {
            provider: provider.to_string(),
            detail: detail.to_string(),
        },
    }
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
            match exchange(stream, provider, &request, deadline).await {
                Ok((stream, head_buf)) => {
                    return Response::new(
                        stream, head_buf, key, provider, deadline, sent_at, retries, head,
                    )
                    .inspect_err(|g| count_error(provider, g))
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
    provider: &Provider,
    request: &Wire,
    deadline: Instant,
) -> Result<(Stream, (Head, BytesMut)), GatewayError> {
    let write = async {
        stream.write_all(&request.head).await?;
        if let Some(body) = &request.body {
            stream.write_all(body).await?;
        }
        stream.flush().await
    };
    // A provider that stops reading cannot hold the request past its total timeout.
    within(|| left(deadline), &provider.name, "total", write)
        .await?
        .map_err(|e| GatewayError::UpstreamUnreachable {
            provider: provider.name.to_string(),
            detail: format!("writing the request: {}", e.kind()),
        })?;
    let head = read_head(&mut stream, provider, deadline).await?;
    Ok((stream, head))
}

/// Reads the response header, skipping informational answers, within the first-byte timeout;
/// returns it with the bytes read past it.
async fn read_head(
    stream: &mut Stream,
    provider: &Provider,
    deadline: Instant,
) -> Result<(Head, BytesMut), GatewayError> {
    // One deadline for every informational answer too: a provider sending `100 Continue`
    // forever must not restart the first-byte timeout, nor outlive the total one.
    let first_byte = provider.timeouts.first_byte;
    let until = || left((Instant::now() + first_byte).min(deadline));
    let read = async {
        let mut buf = BytesMut::new();
        for _ in 0..MAX_INFORMATIONAL {
            let head = h1_response::read_head(stream, &mut buf)
                .await
                .map_err(|e| read_error(&provider.name, e, "reading the response header"))?;
            // Informational answers (100 Continue) are not the response.
            if !head.is_informational() {
                return Ok((head, buf));
            }
        }
        Err(GatewayError::UpstreamProtocol {
            provider: provider.name.to_string(),
            detail: format!("more than {MAX_INFORMATIONAL} informational responses"),
        })
    };
    within(until, &provider.name, "first byte", read).await?
}

/// Time left until `until`.
fn left(until: Instant) -> Duration {
    until.saturating_duration_since(Instant::now())
}

/// `work`, or the provider's timeout `which` after `wait()` (asked only if the work has to
/// wait: see `deadline`).
async fn within<T>(
    wait: impl FnOnce() -> Duration,
    provider: &str,
    which: &'static str,
    work: impl Future<Output = T>,
) -> Result<T, GatewayError> {
    super::deadline::within(wait, work)
        .await
        .map_err(|_| GatewayError::UpstreamTimeout {
            provider: provider.to_string(),
            which,
        })
}

/// Informational (1xx) answers tolerated before the response.
const MAX_INFORMATIONAL: usize = 16;

impl Response {
    #[allow(clippy::too_many_arguments)]
    fn new(
        stream: Stream,
        (head, rest): (Head, BytesMut),
        reuse_hash: u64,
        provider: &Provider,
        deadline: Instant,
        sent_at: Instant,
        retries: u32,
        head_request: bool,
    ) -> Result<Self, GatewayError> {
        let header_latency = sent_at.elapsed();
        METRICS
            .upstream_duration
            .with_label_values(&[&provider.name])
            .observe(header_latency.as_secs_f64());
        let body = head
            .body(head_request, rest)
            .map_err(|e| read_error(&provider.name, e, "reading the response header"))?;
        Ok(Self {
            stream,
            head,
            body,
            reuse_hash,
            provider: provider.name.clone(),
            idle: provider.timeouts.idle,
            deadline,
            header_latency,
            retries,
        })
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    pub fn status(&self) -> u16 {
        self.head.status()
    }

    /// When the provider's total timeout ends.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    fn broken(&self, e: ReadError) -> GatewayError {
        read_error(&self.provider, e, "connection broke mid-response")
    }

    /// Next body chunk; `Ok(None)` at the end. Applies the idle and total timeouts.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, GatewayError> {
        if self.body.is_done() {
            return Ok(None);
        }
        let (deadline, idle) = (self.deadline, self.idle);
        // Which timeout ends a wait is known only once the wait begins (and only then is the
        // clock read): the idle one, unless the total one comes first.
        // (Atomic only because the future must be Send; it never crosses threads.)
        let total_first = std::sync::atomic::AtomicBool::new(false);
        let wait = || {
            let left = deadline.saturating_duration_since(Instant::now());
            total_first.store(left < idle, std::sync::atomic::Ordering::Relaxed);
            left.min(idle)
        };
        match super::deadline::within(wait, self.body.next(&mut self.stream)).await {
            Ok(r) => r.map_err(|e| self.broken(e)),
            Err(_) => Err(GatewayError::UpstreamTimeout {
                provider: self.provider.to_string(),
                which: if total_first.load(std::sync::atomic::Ordering::Relaxed) {
                    "total"
                } else {
                    "idle"
                },
            }),
        }
    }

    /// The next body chunk if the provider already sent it (buffered or readable now), without
    /// waiting: `None` when it would wait. Reading is cancel-safe (the relay already selects
    /// on it against the client), so a read that would wait is simply dropped.
    pub fn chunk_ready(&mut self) -> Option<Result<Option<Bytes>, GatewayError>> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.body.poll_next(&mut self.stream, &mut cx) {
            std::task::Poll::Pending => None,
            std::task::Poll::Ready(r) => Some(r.map_err(|e| self.broken(e))),
        }
    }

    /// Returns the connection to the pool when the response was read to its end and the
    /// provider lets it serve another request; otherwise it is closed.
    pub fn release(self, upstream: &Upstream) {
        if self.body.reusable() {
            upstream.pool.put(self.reuse_hash, self.stream);
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
        client: &mut impl super::client::RequestBody,
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
        while let Some(chunk) = client.read_body().await? {
            sent += chunk.len() as u64;
            if sent > limit as u64 {
                return Err(GatewayError::BodyTooLarge { limit });
            }
            session.write_body(&chunk).await.map_err(io)?;
        }
        session.finish_body().await.map_err(io)?;
        let sent_at = Instant::now();
        let mut stream = session.into_inner();
        let head = read_head(&mut stream, provider, deadline)
            .await
            .inspect_err(|g| count_error(provider, g))?;
        let resp = Response::new(
            stream,
            head,
            peer.reuse_hash(),
            provider,
            deadline,
            sent_at,
            0,
            false,
        )
        .inspect_err(|g| count_error(provider, g))?;
        Ok((resp, sent))
    }
}
