//! The client's side of an HTTP/1.x connection: one request at a time (pipelined bytes kept
//! for the next), its body read as the handler asks for it, and the response framed here —
//! a length when the head carries one, chunked coding otherwise, and for HTTP/1.0 clients the
//! connection's close.
//!
//! Why not pingora's `ServerSession` for HTTP/1 (pingora still accepts the connections, runs
//! TLS and serves HTTP/2): per request it parsed the head into two header maps (each
//! non-standard name allocated twice; the OpenAI SDKs send a dozen `x-stainless-*` fields),
//! kept a 4 KiB head buffer for the request's life, serialized the response from a header map
//! and kept that map too — for a held stream, minutes of memory that nothing reads.

use super::body::{Body, Framing};
use super::request::{self, HeadError, RequestHead, MAX_HEAD};
use super::{ends_head, poll_read, ReadError, READ};
use crate::proxy::deadline::within;
use crate::proxy::response_head::ResponseHead;
use bytes::{BufMut, Bytes, BytesMut};
use pingora_core::protocols::http::date::get_cached_date;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::Stream;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, ReadBuf};

/// Bodies up to this size go out in one write with their framing (a copy); larger ones are
/// written in place.
const GATHER: usize = 64 << 10;
/// What a response head adds to its fields and reason: the status line, our date, framing
/// and connection fields, the empty line.
const HEAD_OVERHEAD: usize = 128;
/// How long a refused connection is read (and discarded) after its answer, so the client's
/// TCP stack does not reset the connection before it reads the answer.
const LINGER: Duration = Duration::from_secs(2);
/// At most this much is discarded while lingering.
const LINGER_BYTES: usize = 16 << 20;

fn broken(why: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// A client's address as records show it: the IP alone for TCP, the path for a Unix socket.
pub fn peer_text(addr: &SocketAddr) -> Arc<str> {
    match addr.as_inet() {
        Some(i) => i.ip().to_string().into(),
        None => addr.to_string().into(),
    }
}

/// How long a connection waits for its client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the first byte of the next request.
    pub idle: Duration,
    /// For a whole request head once it started, and for each read of a body.
    pub read: Duration,
    /// For each write: a client that stops reading (one that pipelines requests and never
    /// reads their answers, say) is let go, not kept forever.
    pub write: Duration,
}

/// One write to the client, at most `limit` (no timer unless it has to wait).
async fn bounded(
    limit: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    match within(|| limit, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// A chunk-size line (`1a2b\r\n`), formatted without an allocation.
#[derive(Default)]
struct ChunkSize([u8; 18]);

impl ChunkSize {
    fn line(&mut self, n: usize) -> &[u8] {
        let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            let d = (n >> (4 * (digits - 1 - i))) & 0xf;
            self.0[i] = b"0123456789abcdef"[d];
        }
        self.0[digits..digits + 2].copy_from_slice(b"\r\n");
        &self.0[..digits + 2]
    }
}

/// A client connection between two requests.
pub struct Connection {
    io: Stream,
    /// The client's address as text, written once per connection: every request's record
    /// carries it.
    peer: Option<Arc<str>>,
    /// Bytes read past the previous request: the start of the next one (pipelining).
    ahead: BytesMut,
}

/// What a connection brought next.
// Moved straight into the request loop: boxing the session would be an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Next {
    Request(Session),
    /// A head that is not a request the gateway will read: answer (`Connection::refuse`) and
    /// close.
    Refused(Connection, HeadError),
    /// The client closed, went quiet past the idle timeout, or the socket failed.
    Closed,
}

impl Connection {
    pub fn new(io: Stream) -> Self {
        let peer = io
            .get_socket_digest()
            .and_then(|d| d.peer_addr().map(peer_text));
        Self {
            io,
            peer,
            ahead: BytesMut::new(),
        }
    }

    pub fn stream(&self) -> &Stream {
        &self.io
    }

    /// Waits for the next request head: at most `idle` for its first byte, then at most `read`
    /// for the whole head.
    pub async fn next(mut self, timeouts: Timeouts) -> Next {
        let Timeouts { idle, read, .. } = timeouts;
        let mut complete = !self.ahead.is_empty();
        let mut deadline: Option<Instant> = None;
        loop {
            if complete {
                match request::parse(&mut self.ahead) {
                    Ok(Some(head)) => return self.start(head, timeouts),
                    Ok(None) => {}
                    Err(e) => return Next::Refused(self, e),
                }
            }
            if self.ahead.len() > MAX_HEAD {
                return Next::Refused(self, HeadError::TooLarge);
            }
            let started = !self.ahead.is_empty();
            let wait = || {
                if !started {
                    return idle;
                }
                let now = Instant::now();
                deadline
                    .get_or_insert(now + read)
                    .saturating_duration_since(now)
            };
            let seen = self.ahead.len().saturating_sub(2);
            let got = within(wait, self.read_more()).await;
            match got {
                // Parsed again when an empty line may have arrived, and on a head's first
                // bytes: what is not HTTP at all (a TLS hello on the plaintext port) is
                // refused at once, not after the head timeout.
                Ok(Ok(true)) => complete = ends_head(&self.ahead, seen) || !started,
                _ => return Next::Closed,
            }
        }
    }

    /// One read appended to `ahead`; `false` at the end of the stream.
    async fn read_more(&mut self) -> Result<bool, ReadError> {
        std::future::poll_fn(|cx| {
            let mut space = [MaybeUninit::<u8>::uninit(); READ];
            let mut rb = ReadBuf::uninit(&mut space);
            ready!(poll_read(&mut self.io, &mut rb, cx))?;
            self.ahead.extend_from_slice(rb.filled());
            Poll::Ready(Ok(!rb.filled().is_empty()))
        })
        .await
    }

    fn start(mut self, head: RequestHead, timeouts: Timeouts) -> Next {
        let framing = match head.framing() {
            Ok(f) => f,
            Err(e) => return Next::Refused(self, e),
        };
        let bodyless = framing == Framing::Done;
        Next::Request(Session {
            expects_continue: head.expects_continue() && !bodyless,
            keep_alive: head.keep_alive(),
            body: Body::new(framing, true, std::mem::take(&mut self.ahead)),
            bodyless,
            head,
            io: self.io,
            peer: self.peer,
            sending: Sending::NotYet,
            out: BytesMut::new(),
            watched: BytesMut::new(),
            timeouts,
        })
    }

    /// Answers a refused head with `status` and `body` (JSON), then closes, lingering so the
    /// client can read the answer. Written straight to the socket: there is no request to
    /// answer through.
    pub async fn refuse(mut self, status: u16, body: &[u8]) {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut wire = BytesMut::with_capacity(128 + body.len());
        wire.put_slice(format!("HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes());
        wire.put_slice(body);
        let write = async {
            self.io.write_all(&wire).await?;
            self.io.flush().await?;
            self.io.shutdown().await
        };
        if pingora_timeout::timeout(LINGER, write).await.is_err() {
            return;
        }
        let linger = async {
            let mut discarded = 0;
            while discarded < LINGER_BYTES {
                self.ahead.clear();
                match self.read_more().await {
                    Ok(true) => discarded += self.ahead.len(),
                    _ => break,
                }
            }
        };
        let _ = pingora_timeout::timeout(LINGER, linger).await;
    }
}

/// How the response body is being framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// No head written yet.
    NotYet,
    /// Bytes of body left.
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients, no length known).
    Close,
    /// The response is complete.
    Done,
}

/// One request on a connection, and its response.
pub struct Session {
    io: Stream,
    peer: Option<Arc<str>>,
    head: RequestHead,
    body: Body,
    bodyless: bool,
    /// The client sent `Expect: 100-continue` and has had no answer yet.
    expects_continue: bool,
    /// The connection may carry another request after this one.
    keep_alive: bool,
    sending: Sending,
    /// A head held back to go out with its body (a response with a length).
    out: BytesMut,
    /// Bytes the client sent while its response was relayed: the next request.
    watched: BytesMut,
    timeouts: Timeouts,
}

impl Session {
    pub fn head(&self) -> &RequestHead {
        &self.head
    }

    pub fn stream(&self) -> &Stream {
        &self.io
    }

    /// The client's IP address (or socket path), when the socket has one.
    pub fn peer(&self) -> Option<&Arc<str>> {
        self.peer.as_ref()
    }

    /// The request has no body (no length, or length 0).
    pub fn is_body_empty(&self) -> bool {
        self.bodyless
    }

    pub fn is_body_done(&self) -> bool {
        self.body.is_done()
    }

    /// The next piece of the request body (`None` at its end), each read bounded by the read
    /// timeout. A client waiting for `100 Continue` gets it first.
    pub async fn read_body(&mut self) -> Result<Option<Bytes>, ReadError> {
        if self.body.is_done() {
            return Ok(None);
        }
        self.write_continue()
            .await
            .map_err(|e| ReadError::Io(e.kind()))?;
        let wait = self.timeouts.read;
        match within(|| wait, self.body.next(&mut self.io)).await {
            Ok(r) => r,
            Err(_) => Err(ReadError::Io(std::io::ErrorKind::TimedOut)),
        }
    }

    /// Reads and discards the rest of the body. A client still waiting for `100 Continue` is
    /// not told to send it (it may or may not send the body anyway): the connection is closed
    /// after the response instead.
    pub async fn drain_body(&mut self) -> Result<(), ReadError> {
        if self.expects_continue {
            self.keep_alive = false;
            return Ok(());
        }
        while self.read_body().await?.is_some() {}
        Ok(())
    }

    /// Answers `Expect: 100-continue` (once, and only before any response).
    pub async fn write_continue(&mut self) -> std::io::Result<()> {
        if self.expects_continue && self.sending == Sending::NotYet {
            self.expects_continue = false;
            let io = &mut self.io;
            bounded(self.timeouts.write, async move {
                io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                io.flush().await
            })
            .await?;
        }
        Ok(())
    }

    /// A head has been written: the response has started.
    pub fn response_written(&self) -> bool {
        self.sending != Sending::NotYet
    }

    /// Closes the connection after this response.
    pub fn close_after(&mut self) {
        self.keep_alive = false;
    }

    /// Writes the response head, choosing the body's framing. A head with a length waits to
    /// go out with the first piece of its body (one write); any other is sent now, so a
    /// stream's client sees it before the first event.
    pub async fn write_head(&mut self, resp: &ResponseHead) -> std::io::Result<()> {
        if self.sending != Sending::NotYet {
            return Err(broken("response already started"));
        }
        let status = resp.status();
        let http10 = self.head.version() == http::Version::HTTP_10;
        let bodyless = self.head.method() == http::Method::HEAD
            || (100..200).contains(&status)
            || status == 204
            || status == 304;
        let length = match resp.get("content-length") {
            None => None,
            Some(v) => Some(
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| broken("invalid content-length"))?,
            ),
        };
        // A client still waiting for `100 Continue` may or may not send its body after a final
        // answer: the connection cannot be trusted with another request.
        let mut close = !self.keep_alive
            || self.expects_continue
            || resp
                .get("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
        let sending = match length {
            _ if bodyless => Sending::Done,
            Some(0) => Sending::Done,
            Some(n) => Sending::Length(n),
            None if http10 => {
                close = true;
                Sending::Close
            }
            None => Sending::Chunked,
        };
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        // One allocation for the head and, when it is small and has a length, the body that
        // follows it (`write_body` gathers both into one write).
        let fields: usize = resp.fields().map(|(n, v)| n.len() + v.len() + 4).sum();
        let body = match sending {
            Sending::Length(n) if n <= GATHER as u64 => n as usize,
            _ => 0,
        };
        let w = &mut self.out;
        w.reserve(HEAD_OVERHEAD + reason.len() + fields + body);
        w.put_slice(b"HTTP/1.1 ");
        // Three digits (`ResponseHead` holds 100-999).
        w.put_slice(&[
            b'0' + (status / 100) as u8,
            b'0' + (status / 10 % 10) as u8,
            b'0' + (status % 10) as u8,
        ]);
        w.put_u8(b' ');
        w.put_slice(reason.as_bytes());
        w.put_slice(b"\r\n");
        for (name, value) in resp.fields() {
            // Framing and connection management are this session's.
            if name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"connection")
                || name.eq_ignore_ascii_case(b"keep-alive")
            {
                continue;
            }
            w.put_slice(name);
            w.put_slice(b": ");
            w.put_slice(value);
            w.put_slice(b"\r\n");
        }
        // RFC 9110 §6.6.1: a response is dated; a provider's own date is relayed, any other
        // answer gets ours (formatted once a second per thread, as pingora's was).
        if !(100..200).contains(&status) && resp.get("date").is_none() {
            w.put_slice(b"date: ");
            w.put_slice(get_cached_date().as_bytes());
            w.put_slice(b"\r\n");
        }
        if sending == Sending::Chunked {
            w.put_slice(b"transfer-encoding: chunked\r\n");
        }
        if close {
            w.put_slice(b"connection: close\r\n");
        } else if http10 {
            w.put_slice(b"connection: keep-alive\r\n");
        }
        w.put_slice(b"\r\n");
        self.keep_alive = !close;
        self.sending = sending;
        if matches!(sending, Sending::Length(_)) {
            return Ok(());
        }
        self.flush_out().await
    }

    async fn flush_out(&mut self) -> std::io::Result<()> {
        let out = std::mem::take(&mut self.out);
        let io = &mut self.io;
        bounded(self.timeouts.write, async move {
            if !out.is_empty() {
                io.write_all(&out).await?;
            }
            io.flush().await
        })
        .await
    }

    /// Writes a piece of the body (`end`: the last one). More than the head's length is
    /// refused; so is ending short of it.
    pub async fn write_body(&mut self, data: Bytes, end: bool) -> std::io::Result<()> {
        let mut hex = ChunkSize::default();
        let (prefix, suffix): (&[u8], &[u8]) = match self.sending {
            Sending::NotYet => return Err(broken("body before head")),
            // A response to HEAD (or a 204/304) carries no body, whatever is written.
            Sending::Done => return self.flush_out().await,
            Sending::Length(left) => {
                let n = data.len() as u64;
                if n > left || (end && n < left) {
                    self.keep_alive = false;
                    return Err(broken("body does not match its content-length"));
                }
                self.sending = if n == left {
                    Sending::Done
                } else {
                    Sending::Length(left - n)
                };
                (b"", b"")
            }
            Sending::Chunked => {
                let prefix = if data.is_empty() {
                    &b""[..]
                } else {
                    hex.line(data.len())
                };
                let suffix: &[u8] = match (data.is_empty(), end) {
                    (true, true) => b"0\r\n\r\n",
                    (false, true) => b"\r\n0\r\n\r\n",
                    (false, false) => b"\r\n",
                    (true, false) => b"",
                };
                if end {
                    self.sending = Sending::Done;
                }
                (prefix, suffix)
            }
            Sending::Close => {
                if end {
                    self.sending = Sending::Done;
                }
                (b"", b"")
            }
        };
        let framed = prefix.len() + suffix.len();
        if self.out.is_empty() && framed == 0 {
            if !data.is_empty() {
                bounded(self.timeouts.write, self.io.write_all(&data)).await?;
            }
        } else if data.len() <= GATHER {
            let w = &mut self.out;
            w.reserve(framed + data.len());
            w.put_slice(prefix);
            w.put_slice(&data);
            w.put_slice(suffix);
        } else {
            self.out.put_slice(prefix);
            self.flush_out().await?;
            bounded(self.timeouts.write, self.io.write_all(&data)).await?;
            self.out.put_slice(suffix);
        }
        self.flush_out().await
    }

    /// Resolves when the client hangs up (`true`) or sends more (`false`; kept for the next
    /// request). Cancel-safe. Never resolves while the request body is unread: those bytes
    /// are the body's.
    pub async fn client_gone(&mut self) -> bool {
        if !self.body.is_done() {
            return std::future::pending().await;
        }
        std::future::poll_fn(|cx| {
            let mut space = [MaybeUninit::<u8>::uninit(); READ];
            let mut rb = ReadBuf::uninit(&mut space);
            match ready!(poll_read(&mut self.io, &mut rb, cx)) {
                Err(_) => Poll::Ready(true),
                Ok(()) if rb.filled().is_empty() => Poll::Ready(true),
                Ok(()) => {
                    self.watched.extend_from_slice(rb.filled());
                    Poll::Ready(false)
                }
            }
        })
        .await
    }

    /// Closes the connection now (the response is incomplete or the client is gone).
    pub async fn shutdown(&mut self) {
        let _ = pingora_timeout::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }

    /// The connection, ready for the next request — if the response is complete, the request
    /// was read to its end and both sides keep the connection.
    pub fn finish(mut self) -> Option<Connection> {
        if !self.keep_alive || self.sending != Sending::Done || !self.body.is_done() {
            return None;
        }
        let mut ahead = self.body.take_rest();
        ahead.extend_from_slice(&self.watched);
        Some(Connection {
            io: self.io,
            peer: self.peer,
            ahead,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, DuplexStream};

    const T: Timeouts = Timeouts {
        idle: Duration::from_secs(5),
        read: Duration::from_secs(5),
        write: Duration::from_secs(5),
    };

    /// A connection over an in-memory pipe, and the client's end.
    fn pair() -> (Connection, DuplexStream) {
        let (server, client) = tokio::io::duplex(1 << 20);
        (Connection::new(Box::new(server)), client)
    }

    /// A session for the request(s) in `wire`, sent by the client before the server reads.
    async fn session(wire: &[u8]) -> (Session, DuplexStream) {
        let (conn, mut client) = pair();
        client.write_all(wire).await.unwrap();
        (request(conn).await, client)
    }

    async fn request(conn: Connection) -> Session {
        match conn.next(T).await {
            Next::Request(s) => s,
            Next::Refused(_, e) => panic!("refused: {e:?}"),
            Next::Closed => panic!("closed"),
        }
    }

    async fn body(s: &mut Session) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = s.read_body().await.unwrap() {
            out.extend_from_slice(&b);
        }
        out
    }

    fn ok(len: Option<usize>) -> ResponseHead {
        let mut h = ResponseHead::new(200, 3).unwrap();
        h.push("x-request-id", "req_1");
        // A fixed date keeps the expected bytes exact (an undated head gets the clock's).
        h.push("date", "Thu, 03 Dec 2026 00:00:00 GMT");
        if let Some(n) = len {
            h.push("content-length", n.to_string());
        }
        h
    }

    /// What the client reads until the server side is dropped.
    async fn read_all(client: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn pipelined_requests_are_served_in_order_on_one_connection() {
        let (mut s, mut client) = session(b"POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello\r\nPOST /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").await;
        assert_eq!(s.head().uri().path(), "/a");
        assert_eq!(body(&mut s).await, b"hello");
        s.write_head(&ok(Some(2))).await.unwrap();
        s.write_body(Bytes::from_static(b"ok"), true).await.unwrap();
        let mut s = request(s.finish().expect("kept")).await;
        assert_eq!(s.head().uri().path(), "/b");
        assert_eq!(body(&mut s).await, b"abc");
        s.write_head(&ok(None)).await.unwrap();
        s.write_body(Bytes::from_static(b"data: 1\n\n"), false)
            .await
            .unwrap();
        s.write_body(Bytes::new(), true).await.unwrap();
        let conn = s.finish().expect("kept");
        drop(conn);
        let out = read_all(&mut client).await;
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nx-request-id: req_1\r\ndate: Thu, 03 Dec 2026 00:00:00 GMT\r\ncontent-length: 2\r\n\r\nok\
             HTTP/1.1 200 OK\r\nx-request-id: req_1\r\ndate: Thu, 03 Dec 2026 00:00:00 GMT\r\ntransfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn http10_clients_get_close_delimited_bodies_and_head_requests_no_body() {
        let (mut s, mut client) = session(b"GET /s HTTP/1.0\r\n\r\n").await;
        s.write_head(&ok(None)).await.unwrap();
        s.write_body(Bytes::from_static(b"data: 1\n\n"), true)
            .await
            .unwrap();
        assert!(
            s.finish().is_none(),
            "a close-delimited body ends the connection"
        );
        let out = read_all(&mut client).await;
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nx-request-id: req_1\r\ndate: Thu, 03 Dec 2026 00:00:00 GMT\r\nconnection: close\r\n\r\ndata: 1\n\n"
        );

        let (mut s, mut client) = session(b"HEAD /m HTTP/1.1\r\n\r\n").await;
        s.write_head(&ok(Some(7))).await.unwrap();
        s.write_body(Bytes::from_static(b"ignored"), true)
            .await
            .unwrap();
        drop(s.finish().expect("kept"));
        let out = read_all(&mut client).await;
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nx-request-id: req_1\r\ndate: Thu, 03 Dec 2026 00:00:00 GMT\r\ncontent-length: 7\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn expect_continue_is_answered_before_the_body_is_read_and_never_after_a_response() {
        let (mut s, mut client) =
            session(b"POST /a HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n").await;
        s.write_continue().await.unwrap();
        let mut got = [0u8; 25];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"{}").await.unwrap();
        assert_eq!(body(&mut s).await, b"{}");

        // Refused before the body: no 100, and the connection is not reused.
        let (mut s, mut client) =
            session(b"POST /a HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n").await;
        s.write_head(&ok(Some(0))).await.unwrap();
        s.drain_body().await.unwrap();
        assert!(s.write_continue().await.is_ok());
        assert!(s.finish().is_none());
        let out = read_all(&mut client).await;
        assert!(!out.contains("100 Continue"), "{out}");
        assert!(out.contains("connection: close"), "{out}");
    }

    #[tokio::test]
    async fn a_body_must_match_its_length() {
        let (conn, _client) = pair();
        let mut conn = conn;
        conn.ahead.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let mut s = request(conn).await;
        s.write_head(&ok(Some(2))).await.unwrap();
        assert!(s
            .write_body(Bytes::from_static(b"toolong"), true)
            .await
            .is_err());
        assert!(s.finish().is_none());
    }

    #[tokio::test]
    async fn bytes_sent_during_a_response_are_the_next_request_and_a_hangup_is_seen() {
        let (mut s, mut client) = session(b"GET /a HTTP/1.1\r\n\r\n").await;
        client.write_all(b"GET /b HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(!s.client_gone().await, "data, not a hangup");
        s.write_head(&ok(Some(0))).await.unwrap();
        let s = request(s.finish().unwrap()).await;
        assert_eq!(s.head().uri().path(), "/b");
        let mut s = s;
        drop(client);
        assert!(s.client_gone().await);
    }

    #[tokio::test]
    async fn bad_heads_are_refused_and_idle_connections_closed() {
        let (conn, mut client) = pair();
        client
            .write_all(
                b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        let Next::Refused(conn, e) = conn.next(T).await else {
            panic!("not refused")
        };
        assert!(matches!(e, HeadError::Malformed(_)));
        client.shutdown().await.unwrap();
        conn.refuse(400, b"{}").await;
        let out = read_all(&mut client).await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(out.ends_with("connection: close\r\n\r\n{}"), "{out}");

        let (conn, mut client) = pair();
        let endless = vec![b'a'; MAX_HEAD + READ];
        client.write_all(b"GET / HTTP/1.1\r\nx-a: ").await.unwrap();
        client.write_all(&endless).await.unwrap();
        assert!(matches!(
            conn.next(T).await,
            Next::Refused(_, HeadError::TooLarge)
        ));

        let (conn, _client) = pair();
        assert!(matches!(
            conn.next(Timeouts {
                idle: Duration::from_millis(1),
                ..T
            })
            .await,
            Next::Closed
        ));
    }

    #[test]
    fn chunk_size_lines_are_lower_hex() {
        let mut c = ChunkSize::default();
        for n in [0usize, 1, 9, 10, 15, 16, 255, 0x1a2b, 1 << 20, usize::MAX] {
            assert_eq!(c.line(n), format!("{n:x}\r\n").as_bytes(), "{n}");
        }
    }

    /// A client that sends requests and never reads the answers is let go after the write
    /// timeout, not served (and held) forever.
    #[tokio::test]
    async fn a_client_that_never_reads_is_let_go() {
        // A pipe with room for 64 bytes: the answer cannot fit.
        let (server, mut client) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let quick = Timeouts {
            write: Duration::from_millis(50),
            ..T
        };
        let Next::Request(mut s) = Connection::new(Box::new(server)).next(quick).await else {
            panic!("no request")
        };
        let body = Bytes::from(vec![b'x'; 4096]);
        s.write_head(&ok(Some(body.len()))).await.unwrap();
        // (The outer bound only turns a broken timeout into a failure instead of a hang.)
        let err = tokio::time::timeout(Duration::from_secs(10), s.write_body(body, true))
            .await
            .expect("the write gave up by itself")
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test]
    async fn an_undated_answer_gets_the_date() {
        let (mut s, mut client) = session(b"GET / HTTP/1.1\r\n\r\n").await;
        let h = ResponseHead::new(204, 0).unwrap();
        s.write_head(&h).await.unwrap();
        drop(s.finish());
        let out = read_all(&mut client).await;
        let date = out
            .lines()
            .find_map(|l| l.strip_prefix("date: "))
            .expect("a date field");
        assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
    }

    /// Bytes that are not HTTP (a TLS hello on the plaintext port) are refused as they arrive,
    /// not after the head timeout.
    #[tokio::test]
    async fn what_is_not_http_is_refused_at_once() {
        let (conn, mut client) = pair();
        client
            .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            .await
            .unwrap();
        let slow = Timeouts {
            read: Duration::from_secs(3600),
            ..T
        };
        let next = tokio::time::timeout(Duration::from_secs(10), conn.next(slow))
            .await
            .expect("refused before the head timeout");
        assert!(matches!(next, Next::Refused(_, HeadError::Malformed(_))));
    }
}
