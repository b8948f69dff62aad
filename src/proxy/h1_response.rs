//! Reads an HTTP/1.x response off a provider connection: the head parsed by `httparse` into
//! one small buffer (offsets, no header maps), the body framed by `content-length`, chunked
//! coding or the connection closing (RFC 9112 §6.3).
//!
//! Reads land in stack space that lives only while a read is polled; what the body carries is
//! copied out once, exactly sized, and nothing stays buffered between reads (only the rare
//! partial chunk-size line). So a response waiting for its provider — a non-streamed answer
//! being generated, a stream between two events — holds no read buffer at all.
//!
//! Why not pingora's client session: per response it built a `ResponseHeader` with two header
//! maps (each non-standard name allocated twice, and OpenAI's answers carry a dozen:
//! `openai-*`, `x-ratelimit-*`, `cf-ray`), and kept a 4 KiB head buffer and a 64 KiB body
//! buffer for the life of the response — which, for a held stream, is minutes.
//!
//! Everything here is cancel-safe: state changes only after a read returned, so the relay may
//! drop a pending read (it selects against the client, and polls once for what is ready).

use bytes::{Buf, Bytes, BytesMut};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Largest response head accepted (pingora's limit was larger; no provider sends 64 KiB).
const MAX_HEAD: usize = 64 << 10;
/// Most header fields in one response head.
const MAX_HEADERS: usize = 128;
/// What one read takes from the socket, in stack space: a burst of streamed events or a
/// slice of a large body.
const READ: usize = 16 << 10;
/// Longest chunk-size line (with extensions) and trailer section accepted.
const MAX_CHUNK_LINE: usize = 4 << 10;
const MAX_TRAILERS: usize = 16 << 10;

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The socket failed.
    Io(std::io::ErrorKind),
    /// The provider closed the connection before the head or the framed body ended.
    Closed,
    /// What the provider sent is not a valid HTTP/1 response.
    Protocol(&'static str),
}

/// A response head: status line and header fields as offsets into the raw bytes.
#[derive(Debug)]
pub struct Head {
    raw: Bytes,
    status: u16,
    http10: bool,
    /// (name start, name end, value start, value end) in `raw`.
    fields: Vec<[u32; 4]>,
}

impl Head {
    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.all(name).next()
    }

    /// Every value of header `name`, in order.
    fn all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.fields.iter().filter_map(move |f| {
            let n = &self.raw[f[0] as usize..f[1] as usize];
            n.eq_ignore_ascii_case(name.as_bytes())
                .then(|| &self.raw[f[2] as usize..f[3] as usize])
        })
    }

    /// Header fields in order: the name as sent, the value shared with the head (no copy).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], Bytes)> + '_ {
        self.fields.iter().map(|f| {
            (
                &self.raw[f[0] as usize..f[1] as usize],
                self.raw.slice(f[2] as usize..f[3] as usize),
            )
        })
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The body is chunked: `transfer-encoding`'s final coding is `chunked` (then any
    /// `content-length` is ignored, RFC 9112 §6.3).
    pub fn is_chunked(&self) -> bool {
        self.all("transfer-encoding")
            .last()
            .and_then(|v| v.rsplit(|&b| b == b',').next())
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    }

    /// `content-length`, reconciled across duplicates and comma lists (RFC 9110 §8.6):
    /// differing or invalid values are an unrecoverable framing error.
    fn content_length(&self) -> Result<Option<u64>, ReadError> {
        let mut found: Option<u64> = None;
        for value in self.all("content-length") {
            for part in value.split(|&b| b == b',') {
                let part = part.trim_ascii();
                let n =
                    (!part.is_empty() && part.len() <= 19 && part.iter().all(u8::is_ascii_digit))
                        .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                        .flatten()
                        .ok_or(ReadError::Protocol("invalid content-length"))?;
                if found.is_some_and(|f| f != n) {
                    return Err(ReadError::Protocol("conflicting content-length"));
                }
                found = Some(n);
            }
        }
        Ok(found)
    }

    /// The provider lets the connection serve another request: HTTP/1.1 without
    /// `connection: close` (HTTP/1.0 connections are not kept).
    fn keep_alive(&self) -> bool {
        !self.http10
            && !self.all("connection").any(|v| {
                v.split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            })
    }
}

/// Reads until `buf` holds a complete head, parses it and removes it from `buf` (what follows
/// it — body bytes, or the next head after an informational one — stays).
pub async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
) -> Result<Head, ReadError> {
    std::future::poll_fn(|cx| poll_head(io, buf, cx)).await
}

fn poll_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, ReadError>> {
    // Parsed again only once an empty line may have arrived: a provider trickling its head a
    // byte at a time would otherwise cost a parse of the whole head per byte.
    let mut complete = !buf.is_empty();
    loop {
        if complete {
            if let Some(head) = parse_head(buf)? {
                return Poll::Ready(Ok(head));
            }
        }
        if buf.len() >= MAX_HEAD {
            return Poll::Ready(Err(ReadError::Protocol("response head too large")));
        }
        let mut space = [MaybeUninit::<u8>::uninit(); READ];
        let mut rb = ReadBuf::uninit(&mut space);
        ready!(poll_read(io, &mut rb, cx))?;
        if rb.filled().is_empty() {
            return Poll::Ready(Err(ReadError::Closed));
        }
        let seen = buf.len().saturating_sub(2);
        buf.extend_from_slice(rb.filled());
        let tail = &buf[seen..];
        complete = tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n");
    }
}

/// One read into `rb`; nothing filled means the end of the stream.
fn poll_read<S: AsyncRead + Unpin>(
    io: &mut S,
    rb: &mut ReadBuf<'_>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ReadError>> {
    Pin::new(io)
        .poll_read(cx, rb)
        .map_err(|e| ReadError::Io(e.kind()))
}

/// Parses a complete head at the front of `buf` into its own small buffer; `None` when more
/// bytes are needed.
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, ReadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ReadError::Protocol("too many response headers"))
        }
        Err(_) => return Err(ReadError::Protocol("invalid response head")),
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let fields = resp
        .headers
        .iter()
        .map(|h| {
            let (n, v) = (at(h.name.as_bytes()), at(h.value));
            [n, n + h.name.len() as u32, v, v + h.value.len() as u32]
        })
        .collect();
    let head = Head {
        status: resp.code.unwrap_or_default(),
        http10: resp.version == Some(0),
        raw: Bytes::copy_from_slice(&buf[..len]),
        fields,
    };
    buf.advance(len);
    Ok(Some(head))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Bytes of body left.
    Length(u64),
    Chunked(Chunk),
    /// Until the provider closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines (skipped), `seen` bytes of them so far.
    Trailers(usize),
}

/// One response's body as it arrives.
#[derive(Debug)]
pub struct Body {
    framing: Framing,
    /// Read but not yet decoded: what arrived with the head, or an incomplete chunk-size
    /// line or CRLF. Usually empty, and then it holds no memory.
    pending: BytesMut,
    keep_alive: bool,
    /// Bytes arrived past the end of the framed body.
    overread: bool,
}

impl Body {
    /// The body that follows `head` (RFC 9112 §6.3); `rest` holds what was read past the head.
    /// `head_request`: a response to `HEAD` has no body, whatever its header says.
    pub fn new(head: &Head, head_request: bool, rest: BytesMut) -> Result<Self, ReadError> {
        let framing = if head_request || head.status == 204 || head.status == 304 {
            Framing::Done
        } else if head.is_chunked() {
            Framing::Chunked(Chunk::Size)
        } else if let Some(len) = head.content_length()? {
            if len == 0 {
                Framing::Done
            } else {
                Framing::Length(len)
            }
        } else {
            Framing::Close
        };
        Ok(Self {
            keep_alive: head.keep_alive() && framing != Framing::Close,
            overread: framing == Framing::Done && !rest.is_empty(),
            pending: if framing == Framing::Done {
                BytesMut::new()
            } else {
                rest
            },
            framing,
        })
    }

    pub fn is_done(&self) -> bool {
        self.framing == Framing::Done
    }

    /// The connection may serve another request: the body was read to its end, nothing
    /// beyond it arrived (more bytes than framed mean the framing is not to be trusted) and
    /// the provider did not ask to close.
    pub fn reusable(&self) -> bool {
        self.is_done() && !self.overread && self.keep_alive
    }

    /// The next piece of the body; `Ok(None)` at its end.
    pub async fn next<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
    ) -> Result<Option<Bytes>, ReadError> {
        std::future::poll_fn(|cx| self.poll_next(io, cx)).await
    }

    /// The body bytes of what is buffered or can be read now, in one piece (a burst of
    /// chunks is one piece, its framing removed). Cancel-safe: nothing is read unless it is
    /// decoded in the same call.
    pub fn poll_next<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, ReadError>> {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            if let Some(piece) = self.decode(&pending)? {
                return Poll::Ready(Ok(Some(piece)));
            }
        }
        loop {
            if self.framing == Framing::Done {
                return Poll::Ready(Ok(None));
            }
            let mut space = [MaybeUninit::<u8>::uninit(); READ];
            let mut rb = ReadBuf::uninit(&mut space);
            ready!(poll_read(io, &mut rb, cx))?;
            let read = rb.filled();
            if read.is_empty() {
                if self.framing != Framing::Close {
                    return Poll::Ready(Err(ReadError::Closed));
                }
                self.framing = Framing::Done;
                continue;
            }
            let piece = if self.pending.is_empty() {
                self.decode(read)?
            } else {
                let mut joined = std::mem::take(&mut self.pending);
                joined.extend_from_slice(read);
                self.decode(&joined)?
            };
            if let Some(piece) = piece {
                return Poll::Ready(Ok(Some(piece)));
            }
        }
    }

    /// Runs the framing over `input`: its body bytes, copied out in one exact-size piece
    /// (`None` if it held none); an incomplete tail is kept in `pending` for the next read.
    fn decode(&mut self, mut input: &[u8]) -> Result<Option<Bytes>, ReadError> {
        let mut out: Vec<u8> = Vec::new();
        let mut data = |d: &[u8], left: usize| {
            if out.capacity() == 0 {
                out.reserve_exact(d.len() + left);
            }
            out.extend_from_slice(d);
        };
        while !input.is_empty() {
            match self.framing {
                Framing::Done => {
                    self.overread = true;
                    break;
                }
                Framing::Close => {
                    data(input, 0);
                    input = &[];
                }
                Framing::Length(left) => {
                    let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    data(&input[..n], 0);
                    input = &input[n..];
                    let left = left - n as u64;
                    self.framing = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(input) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        input = &input[used..];
                        self.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers(0)
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) if input.len() < MAX_CHUNK_LINE => break,
                    _ => return Err(ReadError::Protocol("invalid chunk size")),
                },
                Framing::Chunked(Chunk::Data(left)) => {
                    let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    // Room for the rest of this read too: later chunks of a burst join it.
                    data(&input[..n], input.len() - n);
                    input = &input[n..];
                    let left = left - n as u64;
                    self.framing = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if input.len() < 2 {
                        break;
                    }
                    if &input[..2] != b"\r\n" {
                        return Err(ReadError::Protocol("chunk data longer than its size"));
                    }
                    input = &input[2..];
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers(seen)) => {
                    let Some(eol) = input.windows(2).position(|w| w == b"\r\n") else {
                        if seen + input.len() > MAX_TRAILERS {
                            return Err(ReadError::Protocol("trailers too large"));
                        }
                        break;
                    };
                    input = &input[eol + 2..];
                    // An empty line ends the message.
                    self.framing = if eol == 0 {
                        Framing::Done
                    } else {
                        Framing::Chunked(Chunk::Trailers(seen + eol + 2))
                    };
                }
            }
        }
        if !input.is_empty() && !self.overread {
            self.pending.extend_from_slice(input);
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Hands out its bytes `step` at a time, then reports the end (or an error): every way a
    /// response can be split across reads.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
        fail_at_end: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.at == self.data.len() && self.fail_at_end {
                return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
            }
            let n = self
                .step
                .min(self.data.len() - self.at)
                .min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Reads a whole response (skipping informational heads) in `step`-byte reads: the final
    /// head, the body, and whether the connection may be reused.
    async fn read(
        wire: &[u8],
        step: usize,
        head_request: bool,
    ) -> Result<(Head, Vec<u8>, bool), ReadError> {
        let mut io = Trickle {
            data: wire.to_vec(),
            at: 0,
            step,
            fail_at_end: false,
        };
        let mut buf = BytesMut::new();
        let head = loop {
            let h = read_head(&mut io, &mut buf).await?;
            if !h.is_informational() {
                break h;
            }
        };
        let mut body = Body::new(&head, head_request, buf)?;
        let mut out = Vec::new();
        while let Some(b) = body.next(&mut io).await? {
            assert!(!b.is_empty(), "an empty piece is not data");
            out.extend_from_slice(&b);
        }
        Ok((head, out, body.reusable()))
    }

    async fn each_split(wire: &[u8]) -> (Head, Vec<u8>, bool) {
        let whole = read(wire, wire.len(), false).await.unwrap();
        for step in 1..wire.len().min(64) {
            let split = read(wire, step, false).await.unwrap();
            assert_eq!(split.1, whole.1, "body read {step} bytes at a time");
            assert_eq!(split.2, whole.2, "reuse read {step} bytes at a time");
        }
        whole
    }

    #[tokio::test]
    async fn content_length_bodies_end_at_their_length_and_keep_the_connection() {
        let (head, body, reuse) = each_split(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Ratelimit-Remaining: 7\r\nContent-Length: 11\r\n\r\n{\"a\":\"b c\"}",
        )
        .await;
        assert_eq!(head.status(), 200);
        assert_eq!(head.get("content-type"), Some(&b"application/json"[..]));
        assert_eq!(head.get("x-ratelimit-remaining"), Some(&b"7"[..]));
        assert_eq!(head.len(), 3);
        assert_eq!(body, b"{\"a\":\"b c\"}");
        assert!(reuse);
        // Bare LF line ends (RFC 9112 §2.2 lets a recipient accept them), read a byte at a
        // time too: the head is found when its empty line arrives.
        let (head, body, _) = each_split(b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok").await;
        assert_eq!(head.get("content-length"), Some(&b"2"[..]));
        assert_eq!(body, b"ok");
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_with_extensions_and_trailers() {
        let (head, body, reuse) = each_split(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: t\r\n\r\n",
        )
        .await;
        assert!(head.is_chunked());
        assert_eq!(body, b"hello 0123456789");
        assert!(reuse);
        let (_, body, reuse) = each_split(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(body, b"abc");
        assert!(reuse);
    }

    #[tokio::test]
    async fn unframed_bodies_end_with_the_connection_which_is_not_reused() {
        let (_, body, reuse) =
            each_split(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close").await;
        assert_eq!(body, b"until close");
        assert!(!reuse);
    }

    #[tokio::test]
    async fn bodiless_responses_have_no_body_whatever_their_header_says() {
        for wire in [
            &b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        ] {
            let (_, body, reuse) = each_split(wire).await;
            assert!(body.is_empty());
            assert!(reuse, "{}", String::from_utf8_lossy(wire));
        }
        let (_, body, reuse) = read(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", 7, true)
            .await
            .unwrap();
        assert!(body.is_empty(), "a HEAD response has no body");
        assert!(reuse);
    }

    #[tokio::test]
    async fn informational_heads_are_separate_from_the_response() {
        let (head, body, _) = each_split(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        assert_eq!(head.status(), 201);
        assert_eq!(head.get("link"), None);
        assert_eq!(body, b"ok");
    }

    #[tokio::test]
    async fn the_connection_is_not_reused_when_the_provider_says_close_or_sends_too_much() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 1\r\n\r\nx"[..],
            b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nxy",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\nHTTP",
        ] {
            let (_, body, reuse) = read(wire, wire.len(), false).await.unwrap();
            assert_eq!(body, b"x");
            assert!(!reuse, "{}", String::from_utf8_lossy(wire));
        }
    }

    #[tokio::test]
    async fn content_length_is_reconciled_or_refused() {
        let (_, body, _) =
            each_split(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nok")
                .await;
        assert_eq!(body, b"ok");
        for (wire, want) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
                "conflicting content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2,3\r\n\r\nok",
                "conflicting content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\nok",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\nok",
                "invalid content-length",
            ),
        ] {
            assert_eq!(
                read(wire, wire.len(), false).await.err(),
                Some(ReadError::Protocol(want)),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[tokio::test]
    async fn broken_responses_are_errors_not_bodies() {
        for (wire, want) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"[..],
                ReadError::Closed,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
                ReadError::Closed,
            ),
            (b"HTTP/1.1 200 OK\r\ncontent-le", ReadError::Closed),
            (b"", ReadError::Closed),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                ReadError::Protocol("invalid chunk size"),
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nabc\r\n",
                ReadError::Protocol("chunk data longer than its size"),
            ),
            (
                b"SSH-2.0-OpenSSH\r\n\r\n",
                ReadError::Protocol("invalid response head"),
            ),
        ] {
            for step in [1, 3, wire.len().max(1)] {
                assert_eq!(
                    read(wire, step, false).await.err(),
                    Some(want.clone()),
                    "{}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
    }

    #[tokio::test]
    async fn endless_heads_chunk_lines_and_trailers_are_refused() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while head.len() <= MAX_HEAD {
            head.extend_from_slice(b"x-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(
            read(&head, 4096, false).await.err(),
            Some(ReadError::Protocol(_))
        ));
        let mut ext = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;".to_vec();
        ext.extend(std::iter::repeat_n(b'e', MAX_CHUNK_LINE));
        assert_eq!(
            read(&ext, 512, false).await.err(),
            Some(ReadError::Protocol("invalid chunk size"))
        );
        let mut trailers = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n".to_vec();
        trailers.extend(std::iter::repeat_n(b't', MAX_TRAILERS + 1));
        assert_eq!(
            read(&trailers, 512, false).await.err(),
            Some(ReadError::Protocol("trailers too large"))
        );
    }

    #[tokio::test]
    async fn a_socket_error_mid_body_is_reported() {
        let mut io = Trickle {
            data: b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc".to_vec(),
            at: 0,
            step: 1024,
            fail_at_end: true,
        };
        let mut buf = BytesMut::new();
        let head = read_head(&mut io, &mut buf).await.unwrap();
        let mut body = Body::new(&head, false, buf).unwrap();
        assert_eq!(
            body.next(&mut io).await.unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(
            body.next(&mut io).await.err(),
            Some(ReadError::Io(std::io::ErrorKind::ConnectionReset))
        );
        assert!(!body.reusable());
    }
}
