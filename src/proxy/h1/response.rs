//! Reads an HTTP/1.x response off a provider connection: the head parsed into offsets, the
//! body framed by `content-length`, chunked coding or the connection closing (`body`).
//!
//! Why not pingora's client session: per response it built a `ResponseHeader` with two header
//! maps (each non-standard name allocated twice, and OpenAI's answers carry a dozen:
//! `openai-*`, `x-ratelimit-*`, `cf-ray`), and kept a 4 KiB head buffer and a 64 KiB body
//! buffer for the life of the response — which, for a held stream, is minutes.
//!
//! Everything here is cancel-safe: state changes only after a read returned, so the relay may
//! drop a pending read (it selects against the client, and polls once for what is ready).

use super::body::{Body, Framing};
use super::{ends_head, poll_read, FieldIter, Fields, ReadError, READ};
use bytes::{Buf, BytesMut};
use std::mem::MaybeUninit;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Largest response head accepted (pingora's limit was larger; no provider sends 64 KiB).
const MAX_HEAD: usize = 64 << 10;
/// Most header fields in one response head.
const MAX_HEADERS: usize = 128;

/// A response head: the status line, and header fields as offsets into the raw bytes.
#[derive(Debug)]
pub struct Head {
    fields: Fields,
    status: u16,
    http10: bool,
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
        self.fields.get(name)
    }

    /// Header fields in order, names as sent.
    pub fn fields(&self) -> FieldIter<'_> {
        self.fields.iter()
    }

    /// Bytes of the whole head as received.
    pub fn raw_len(&self) -> usize {
        self.fields.raw().len()
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The body is chunked (its `content-length`, if any, is not its length).
    pub fn is_chunked(&self) -> bool {
        self.fields.is_chunked()
    }

    /// The body's length from `content-length` (duplicates reconciled), unless chunked.
    pub fn content_length(&self) -> Option<u64> {
        if self.is_chunked() {
            return None;
        }
        self.fields.content_length().ok().flatten()
    }

    /// The provider lets the connection serve another request: HTTP/1.1 without
    /// `connection: close` (HTTP/1.0 connections are not kept).
    fn keep_alive(&self) -> bool {
        !self.http10 && !self.fields.has_token("connection", "close")
    }

    /// The body that follows this head (RFC 9112 §6.3); `rest` holds what was read past it.
    /// `head_request`: a response to `HEAD` has no body, whatever its header says.
    pub fn body(&self, head_request: bool, rest: BytesMut) -> Result<Body, ReadError> {
        let framing = if head_request || self.status == 204 || self.status == 304 {
            Framing::Done
        } else if self.is_chunked() {
            Framing::chunked()
        } else {
            match self.fields.content_length()? {
                Some(len) => Framing::length(len),
                None => Framing::Close,
            }
        };
        Ok(Body::new(framing, self.keep_alive(), rest))
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
        complete = ends_head(buf, seen);
    }
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
    let head = Head {
        status: resp.code.unwrap_or_default(),
        http10: resp.version == Some(0),
        fields: Fields::new(&buf[..len], resp.headers),
    };
    buf.advance(len);
    Ok(Some(head))
}

#[cfg(test)]
mod tests {
    use super::super::body::{MAX_CHUNK_LINE, MAX_TRAILERS};
    use super::super::test_io::Trickle;
    use super::*;

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
        let mut body = head.body(head_request, buf)?;
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
        let mut body = head.body(false, buf).unwrap();
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
