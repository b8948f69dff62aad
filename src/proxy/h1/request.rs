//! A client's request head — request line and header fields parsed into offsets — and how its
//! body is framed (RFC 9112 §6.3). Strict wherever a lenient reading would let one request
//! hide another from the gateway (request smuggling): both `transfer-encoding` and
//! `content-length`, a coding other than `chunked`, conflicting lengths, two `host` fields, and
//! anything `httparse` refuses (whitespace before a colon, obsolete line folding, control
//! bytes) are refused, never guessed at.

use super::body::Framing;
use super::{Fields, ReadError};
use bytes::{Buf, BytesMut};
use std::mem::MaybeUninit;

/// Largest request head accepted: far above what an SDK sends (a JWT is a few KiB), far below
/// what would let a client make the gateway hold much.
pub const MAX_HEAD: usize = 64 << 10;
/// Most header fields in one request head.
const MAX_HEADERS: usize = 128;

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Too many fields, or a head larger than `MAX_HEAD`: 431.
    TooLarge,
    /// Not a valid HTTP/1 request head, or framing that cannot be trusted: 400.
    Malformed(&'static str),
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    fields: Fields,
    method: http::Method,
    uri: http::Uri,
    http10: bool,
}

impl RequestHead {
    pub fn method(&self) -> &http::Method {
        &self.method
    }

    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }

    pub fn version(&self) -> http::Version {
        if self.http10 {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        }
    }

    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// The client lets the connection carry another request: HTTP/1.1 unless it says `close`,
    /// HTTP/1.0 only when it asks for `keep-alive`.
    pub fn keep_alive(&self) -> bool {
        if self.http10 {
            self.fields.has_token("connection", "keep-alive")
        } else {
            !self.fields.has_token("connection", "close")
        }
    }

    /// `Expect: 100-continue`: the client waits for a go-ahead before sending its body.
    pub fn expects_continue(&self) -> bool {
        !self.http10
            && self
                .fields
                .get("expect")
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
    }

    /// How the body is framed: chunked, a length, or none at all (a request is never delimited
    /// by closing the connection).
    pub(super) fn framing(&self) -> Result<Framing, HeadError> {
        let codings = self.fields.all("transfer-encoding").count();
        if codings > 0 {
            // HTTP/1.0 has no transfer codings; `chunked` must be the only one (we decode no
            // other); and a length beside it is the classic smuggling pair (RFC 9112 §6.1).
            let only_chunked = codings == 1
                && self
                    .fields
                    .get("transfer-encoding")
                    .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if self.http10 || !only_chunked {
                return Err(HeadError::Malformed("unsupported transfer-encoding"));
            }
            if self.fields.get("content-length").is_some() {
                return Err(HeadError::Malformed(
                    "both transfer-encoding and content-length",
                ));
            }
            return Ok(Framing::chunked());
        }
        match self.fields.content_length() {
            Ok(len) => Ok(Framing::length(len.unwrap_or(0))),
            Err(ReadError::Protocol(why)) => Err(HeadError::Malformed(why)),
            Err(_) => Err(HeadError::Malformed("invalid content-length")),
        }
    }
}

/// Parses a complete request head at the front of `buf` and removes it (what follows — the
/// body, or pipelined requests — stays); `None` when more bytes are needed. Empty lines before
/// a request are skipped (RFC 9112 §2.2).
pub fn parse(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    let blank = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    buf.advance(blank);
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("invalid request head")),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let method = req
        .method
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .ok_or(HeadError::Malformed("invalid method"))?;
    let target = req.path.unwrap_or_default();
    let fields = Fields::new(&buf[..len], req.headers);
    let http10 = req.version == Some(0);
    // The target shares the head's copy.
    let start = target.as_ptr() as usize - buf.as_ptr() as usize;
    let uri = http::Uri::from_maybe_shared(fields.raw().slice(start..start + target.len()))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    if fields.all("host").count() > 1 {
        return Err(HeadError::Malformed("more than one host"));
    }
    buf.advance(len);
    Ok(Some(RequestHead {
        fields,
        method,
        uri,
        http10,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(wire: impl AsRef<[u8]>) -> Result<Option<RequestHead>, HeadError> {
        parse(&mut BytesMut::from(wire.as_ref()))
    }

    #[test]
    fn a_request_head_is_parsed_and_what_follows_it_stays() {
        let mut buf = BytesMut::from(
            &b"\r\nPOST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nX-Stainless-Os: Linux\r\n\r\n{}GET"[..],
        );
        let h = parse(&mut buf).unwrap().unwrap();
        assert_eq!(h.method(), http::Method::POST);
        assert_eq!(h.uri().path(), "/v1/chat/completions");
        assert_eq!(h.uri().query(), Some("x=1"));
        assert_eq!(h.version(), http::Version::HTTP_11);
        assert_eq!(h.fields().get("x-stainless-os"), Some(&b"Linux"[..]));
        assert_eq!(h.framing(), Ok(Framing::Length(2)));
        assert!(h.keep_alive());
        assert_eq!(&buf[..], b"{}GET");
        // Incomplete: nothing consumed but the blank lines before it.
        let mut part = BytesMut::from(&b"GET / HTTP/1.1\r\nhost: x\r\n"[..]);
        assert!(parse(&mut part).unwrap().is_none());
        assert_eq!(part.len(), 25);
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_field() {
        for (wire, keep) in [
            ("GET / HTTP/1.1\r\n\r\n", true),
            (
                "GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
                false,
            ),
            ("GET / HTTP/1.0\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n", true),
        ] {
            assert_eq!(head(wire).unwrap().unwrap().keep_alive(), keep, "{wire}");
        }
        let h = head("POST / HTTP/1.1\r\nexpect: 100-Continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.expects_continue());
        assert_eq!(h.framing(), Ok(Framing::Done), "no length, no body");
    }

    /// Every ambiguous framing a front end and a back end could read differently is refused.
    #[test]
    fn smuggling_shapes_are_refused() {
        let chunked = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            head(chunked).unwrap().unwrap().framing(),
            Ok(Framing::chunked())
        );
        for wire in [
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 0x10\r\n\r\n",
        ] {
            let h = head(wire).unwrap().unwrap();
            assert!(
                matches!(h.framing(), Err(HeadError::Malformed(_))),
                "{wire}"
            );
        }
        for wire in [
            "POST / HTTP/1.1\r\ncontent-length : 5\r\n\r\n",
            "POST / HTTP/1.1\r\nx-a: 1\r\n folded\r\n\r\n",
            "POST / HTTP/1.1\r\nx-a: a\0b\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(head(wire), Err(HeadError::Malformed(_))),
                "{wire:?}"
            );
        }
        let raw = b"GET /metrics\xff HTTP/1.1\r\n\r\n";
        assert!(matches!(head(raw), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn oversized_heads_are_too_large() {
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect();
        assert_eq!(
            head(format!("GET / HTTP/1.1\r\n{many}\r\n")).err(),
            Some(HeadError::TooLarge)
        );
        let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(head(&big).err(), Some(HeadError::TooLarge));
    }
}
