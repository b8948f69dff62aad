//! Relays a provider's response to the client chunk by chunk, measuring TTFT and extracting
//! usage on the way; notices a client that goes away and stops reading upstream.

use super::client::{Client, WriteFailed};
use super::context::Ctx;
use super::headers;
use super::upstream::{Response, Upstream};
use crate::error::GatewayError;
use crate::usage::sse::SseScanner;
use crate::usage::{json, UsageSource};
use bytes::Bytes;
use std::time::{Duration, Instant};

/// How a request left the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Complete; the connection may serve another request.
    Done,
    /// The response is incomplete or the client is gone: close without finishing.
    Abort,
}

/// What to do with the body.
#[derive(Debug, Clone, Copy)]
pub struct RelayMode {
    /// Extract usage (LLM endpoints).
    pub account: bool,
    /// Drop the injected usage-only SSE chunk.
    pub strip_usage_chunk: bool,
}

/// Keeps what is needed to find usage in a JSON body without holding a huge body whole.
struct BodyTail {
    buf: Vec<u8>,
    whole: bool,
}

const KEEP_WHOLE: usize = 4 << 20;
const TAIL: usize = 64 << 10;

impl BodyTail {
    fn push(&mut self, b: &[u8]) {
        if self.whole && self.buf.len() + b.len() <= KEEP_WHOLE {
            self.buf.extend_from_slice(b);
            return;
        }
        self.whole = false;
        self.buf.extend_from_slice(b);
        if self.buf.len() > 2 * TAIL {
            let cut = self.buf.len() - TAIL;
            self.buf.drain(..cut);
        }
    }

    fn usage(&self) -> Option<crate::usage::Usage> {
        if self.whole {
            json::from_body(&self.buf)
        } else {
            json::from_fragment(&self.buf)
        }
    }
}

fn is_event_stream(resp: &Response) -> bool {
    resp.head()
        .get("content-type")
        .is_some_and(|v| v.starts_with(b"text/event-stream"))
}

/// Bounds one write to the client: a client that stops reading is cut off after the
/// configured client write timeout, and never kept past the provider's total timeout (with a
/// second's grace so a last piece read just before it still goes out).
async fn bounded(
    limit: Duration,
    deadline: Instant,
    write: impl std::future::Future<Output = Result<(), WriteFailed>>,
) -> bool {
    let wait = || {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        limit.min(left)
    };
    matches!(super::deadline::within(wait, write).await, Ok(Ok(())))
}

/// Most bytes gathered into one client write from what the provider already sent.
const COALESCE_MAX: usize = 64 * 1024;

/// A body chunk as the client gets it: through the SSE scanner (usage, TTFT, the stripped
/// usage chunk) or the non-stream tail, unchanged otherwise.
fn transform(ctx: &mut Ctx, tail: &mut Option<BodyTail>, chunk: Bytes) -> Bytes {
    match (&mut ctx.scanner, tail) {
        (Some(sc), _) => {
            let fed = sc.feed(chunk);
            if fed.first_content && ctx.ttft.is_none() {
                ctx.ttft = Some(ctx.started.elapsed());
            }
            fed.out
        }
        (None, Some(t)) => {
            t.push(&chunk);
            chunk
        }
        (None, None) => chunk,
    }
}

pub async fn relay(
    s: &mut Client,
    ctx: &mut Ctx,
    upstream: &Upstream,
    mut resp: Response,
    mode: RelayMode,
) -> Result<Outcome, GatewayError> {
    let up = resp.head();
    let status = up.status();
    let sse = is_event_stream(&resp);
    let ok = (200..300).contains(&status);
    // Kept in the context, not here: a request cut before it ends (client gone, shutdown)
    // still takes what the stream reported so far into its record.
    ctx.scanner = (sse && mode.account && ok).then(|| SseScanner::new(mode.strip_usage_chunk));
    let rewrites_body = ctx.scanner.is_some() && mode.strip_usage_chunk;
    // The client's session frames the body: the provider's length when kept, chunked coding
    // otherwise (closing the connection for HTTP/1.0, which has no chunked coding).
    let header = headers::client_response(
        up,
        !rewrites_body,
        ctx.id(),
        &resp.provider,
        &ctx.added_headers,
    )?;
    ctx.record.upstream_latency_ms = Some(resp.header_latency.as_secs_f64() * 1e3);
    // The routing loop already counted its attempts (including this response's own).
    ctx.record.retries = ctx.record.retries.max(resp.retries);
    let limit = ctx.live.config.server.client_write_timeout;
    let deadline = resp.deadline();
    if !bounded(limit, deadline, s.write_head(&header)).await {
        ctx.record.cancelled = true;
        return Ok(Outcome::Abort);
    }
    ctx.record.status = status;
    if !ok {
        ctx.record.error_type = Some("provider_error");
    }
    let mut tail = (!sse && mode.account && ok).then(|| BodyTail {
        buf: Vec::new(),
        whole: true,
    });
    let mut watch_client = true;
    let result: Outcome = loop {
        let next = tokio::select! {
            biased;
            r = resp.chunk() => r,
            gone = s.client_gone(), if watch_client => {
                if gone {
                    ctx.record.cancelled = true;
                    break Outcome::Abort;
                }
                // Data after the request ended (the next request, kept): nothing to watch
                // for any more.
                watch_client = false;
                continue;
            }
        };
        let chunk = match next {
            Ok(Some(c)) => c,
            Ok(None) => break Outcome::Done,
            Err(e) => {
                ctx.record.error_type = Some(e.code());
                break Outcome::Abort;
            }
        };
        let mut out = transform(ctx, &mut tail, chunk);
        // What the provider has already sent goes out in the same write: one syscall for
        // several events instead of one each (streams arrive in bursts). Only what is ready
        // now is taken, so nothing waits for it and the first token is not delayed.
        let mut ended: Option<Result<(), GatewayError>> = None;
        let mut batch: Option<bytes::BytesMut> = None;
        while out.len() + batch.as_ref().map_or(0, |b| b.len()) < COALESCE_MAX {
            match resp.chunk_ready() {
                None => break,
                Some(Ok(Some(c))) => {
                    let more = transform(ctx, &mut tail, c);
                    if more.is_empty() {
                        continue;
                    }
                    let b = batch.get_or_insert_with(|| {
                        let mut b = bytes::BytesMut::with_capacity(out.len() + more.len() * 4);
                        b.extend_from_slice(&out);
                        b
                    });
                    b.extend_from_slice(&more);
                }
                Some(Ok(None)) => {
                    ended = Some(Ok(()));
                    break;
                }
                Some(Err(e)) => {
                    ended = Some(Err(e));
                    break;
                }
            }
        }
        if let Some(b) = batch {
            out = b.freeze();
        }
        if !out.is_empty() {
            ctx.record.response_bytes += out.len() as u64;
            if !bounded(limit, deadline, s.write_body(out, false)).await {
                ctx.record.cancelled = true;
                break Outcome::Abort;
            }
        }
        match ended {
            None => {}
            Some(Ok(())) => break Outcome::Done,
            Some(Err(e)) => {
                ctx.record.error_type = Some(e.code());
                break Outcome::Abort;
            }
        }
    };
    if let Some(sc) = &mut ctx.scanner {
        if result == Outcome::Done {
            let rest = sc.finish();
            if !rest.is_empty() {
                ctx.record.response_bytes += rest.len() as u64;
                if !bounded(limit, deadline, s.write_body(rest, false)).await {
                    ctx.record.cancelled = true;
                }
            }
        }
    }
    if let Some(t) = &tail {
        if result == Outcome::Done {
            ctx.usage = t.usage().map(|u| (u, UsageSource::Provider)).or_else(|| {
                // A provider that reports no usage (some self-hosted servers): the completion
                // is counted from the answer's text; the prompt is counted in `finish`.
                let model = ctx.record.provider_model.as_deref().unwrap_or_default();
                let completion = t
                    .whole
                    .then(|| crate::usage::estimate::completion_tokens(model, &t.buf))?;
                Some((
                    crate::usage::Usage {
                        completion_tokens: completion,
                        ..Default::default()
                    },
                    UsageSource::Estimated,
                ))
            });
        }
    }
    // A sampled answer goes to its judge: hand over the body already held (no copy).
    if let Some(t) = tail.as_mut().filter(|t| t.whole && ctx.online.is_some()) {
        ctx.answer = Some(std::mem::take(&mut t.buf));
    }
    if result != Outcome::Done || ctx.record.cancelled {
        return Ok(Outcome::Abort);
    }
    if !bounded(limit, deadline, s.write_body(Bytes::new(), true)).await {
        ctx.record.cancelled = true;
        return Ok(Outcome::Abort);
    }
    resp.release(upstream);
    Ok(Outcome::Done)
}
