//! The upstream client: pooled HTTP/1.1 connections to providers through pingora's transport
//! connector (TCP + rustls, keep-alive pool), with per-provider timeouts and one transparent
//! retry when a pooled connection turns out to be dead before any response byte.

use crate::error::GatewayError;
use crate::metrics::METRICS;
use crate::routing::Provider;
use bytes::Bytes;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::ErrorType;
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::{Duration, Instant};

/// Holds `TCP_CORK` on a socket while a request is written; uncorking sends what is queued.
struct Cork(i32);

impl Cork {
    fn new(fd: i32) -> Self {
        set_cork(fd, 1);
        Self(fd)
    }
}

impl Drop for Cork {
    fn drop(&mut self) {
        set_cork(self.0, 0);
    }
}

fn set_cork(fd: i32, on: libc::c_int) {
    // SAFETY: setsockopt on a socket fd we hold, with a valid pointer to an int of the size
    // passed; a failure (not a TCP socket) only means no coalescing.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

pub struct Upstream {
    transport: TransportConnector,
}

/// A response being read from a provider.
pub struct Response {
    session: HttpSession,
    peer: HttpPeer,
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
    pub fn new(pool_size: usize) -> Self {
        Self {
            transport: TransportConnector::new(Some(ConnectorOptions::new(pool_size))),
        }
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
        header: RequestHeader,
        body: Bytes,
        started: Instant,
    ) -> Result<Response, GatewayError> {
        let peer = Self::peer(provider).await?;
        let deadline = started + provider.timeouts.total;
        let mut retries = 0;
        let mut fresh_only = false;
        loop {
            let (stream, reused) = if fresh_only {
                (self.transport.new_stream(&peer).await, false)
            } else {
                match self.transport.reused_stream(&peer).await {
                    Some(s) => (Ok(s), true),
                    None => (self.transport.new_stream(&peer).await, false),
                }
            };
            let stream = stream.map_err(|e| {
                let g = classify(provider, &e, "connect");
                count_error(provider, &g);
                g
            })?;
            let mut session = HttpSession::new_with_options(stream, &peer);
            let sent_at = Instant::now();
            match self
                .exchange(&mut session, provider, header.clone(), &body, deadline)
                .await
            {
                Ok(()) => {
                    return Ok(Response::new(
                        session, peer, provider, deadline, sent_at, retries,
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

    async fn exchange(
        &self,
        session: &mut HttpSession,
        provider: &Provider,
        header: RequestHeader,
        body: &Bytes,
        deadline: Instant,
    ) -> Result<(), GatewayError> {
        let io = |e: Box<pingora_error::Error>| classify(provider, &e, "first byte");
        // pingora flushes the header on its own; corked, header and body leave as one segment
        // instead of two (one wake-up of the provider instead of two).
        let cork = Cork::new(session.stream().id());
        session
            .write_request_header(Box::new(header))
            .await
            .map_err(io)?;
        if !body.is_empty() {
            session.write_body(body).await.map_err(io)?;
        }
        session.finish_body().await.map_err(io)?;
        drop(cork);
        read_head(session, provider, deadline).await
    }
}

/// Reads the response header (skipping informational answers) within the first-byte timeout.
async fn read_head(
    session: &mut HttpSession,
    provider: &Provider,
    deadline: Instant,
) -> Result<(), GatewayError> {
    let wait = provider
        .timeouts
        .first_byte
        .min(deadline.saturating_duration_since(Instant::now()));
    loop {
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
}

impl Response {
    fn new(
        session: HttpSession,
        peer: HttpPeer,
        provider: &Provider,
        deadline: Instant,
        sent_at: Instant,
        retries: u32,
    ) -> Self {
        let header_latency = sent_at.elapsed();
        METRICS
            .upstream_duration
            .with_label_values(&[&provider.name])
            .observe(header_latency.as_secs_f64());
        Self {
            session,
            peer,
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

    /// Next body chunk; `Ok(None)` at the end. Applies the idle and total timeouts.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, GatewayError> {
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

    /// Returns the connection to the pool when the response was read to its end.
    pub async fn release(mut self, upstream: &Upstream) {
        if !self.session.is_body_done() {
            return;
        }
        self.session.respect_keepalive();
        if let Some(stream) = self.session.reuse().await {
            upstream
                .transport
                .release_stream(stream, self.peer.reuse_hash(), Some(POOL_IDLE));
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
        let stream = self.transport.new_stream(&peer).await.map_err(|e| {
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
            Response::new(session, peer, provider, deadline, sent_at, 0),
            sent,
        ))
    }
}
