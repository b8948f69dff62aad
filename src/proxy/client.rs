//! The client of one data-plane request, whichever protocol it speaks: HTTP/1 through our own
//! session (`h1::server`), HTTP/2 through pingora's. The request loop sees only this.

use super::h1::{self, FieldIter};
use super::response_head::ResponseHead;
use crate::error::GatewayError;
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;

// HTTP/1 is the common case: its session inline, not one more allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Client {
    H1(h1::server::Session),
    H2(Box<ServerSession>),
}

/// Why a response could not be written: the client is gone or stopped reading.
#[derive(Debug)]
pub struct WriteFailed;

/// Reading a request's header fields, on either plane.
pub(crate) trait RequestHeaders {
    /// The first value of `name` (ASCII case-insensitive).
    fn header(&self, name: &str) -> Option<&[u8]>;

    /// The first value of `name` as text: visible ASCII only, as `HeaderValue::to_str`.
    fn header_str(&self, name: &str) -> Option<&str> {
        let v = self.header(name)?;
        if v.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b)) {
            std::str::from_utf8(v).ok()
        } else {
            None
        }
    }
}

impl RequestHeaders for ServerSession {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.get_header(name).map(|v| v.as_bytes())
    }
}

/// Reading a request's body, on either plane.
pub(crate) trait RequestBody: RequestHeaders {
    /// The next piece of the body; `None` at its end.
    async fn read_body(&mut self) -> Result<Option<Bytes>, GatewayError>;

    /// Answers `Expect: 100-continue` (nothing when the client does not wait for it).
    async fn write_continue(&mut self) -> Result<(), WriteFailed>;

    /// The declared `content-length`, if any and valid.
    fn content_length(&self) -> Option<usize> {
        self.header_str("content-length")
            .and_then(|v| v.trim().parse().ok())
    }
}

impl RequestBody for ServerSession {
    async fn read_body(&mut self) -> Result<Option<Bytes>, GatewayError> {
        self.read_request_body()
            .await
            .map_err(|e| pingora_read_error(&e))
    }

    async fn write_continue(&mut self) -> Result<(), WriteFailed> {
        let expects = self
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
        if !expects {
            return Ok(());
        }
        self.write_continue_response()
            .await
            .map_err(|_| WriteFailed)
    }
}

impl RequestBody for Client {
    async fn read_body(&mut self) -> Result<Option<Bytes>, GatewayError> {
        match self {
            Self::H1(s) => s.read_body().await.map_err(read_error),
            Self::H2(s) => s.as_mut().read_body().await,
        }
    }

    async fn write_continue(&mut self) -> Result<(), WriteFailed> {
        match self {
            Self::H1(s) => s.write_continue().await.map_err(|_| WriteFailed),
            Self::H2(s) => RequestBody::write_continue(s.as_mut()).await,
        }
    }
}

impl RequestHeaders for Client {
    fn header(&self, name: &str) -> Option<&[u8]> {
        match self {
            Self::H1(s) => s.head().fields().get(name),
            Self::H2(s) => s.get_header(name).map(|v| v.as_bytes()),
        }
    }
}

/// A request's header fields in order: (name, value). Names of HTTP/1 requests are as the
/// client sent them (any case).
pub enum Headers<'a> {
    H1(FieldIter<'a>),
    H2(http::header::Iter<'a, http::HeaderValue>),
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::H1(i) => i.next(),
            Self::H2(i) => i.next().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        }
    }
}

fn read_error(e: h1::ReadError) -> GatewayError {
    match e {
        h1::ReadError::Io(_) | h1::ReadError::Closed => GatewayError::ClientClosed,
        h1::ReadError::Protocol(why) => GatewayError::InvalidField {
            param: "body",
            message: format!("malformed request body ({why})"),
        },
    }
}

fn pingora_read_error(e: &pingora_error::Error) -> GatewayError {
    use pingora_error::ErrorType;
    match e.etype() {
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::ReadTimedout => {
            GatewayError::ClientClosed
        }
        _ => GatewayError::InvalidField {
            param: "body",
            message: format!("malformed request body ({})", e.etype().as_str()),
        },
    }
}

impl Client {
    pub fn method(&self) -> &http::Method {
        match self {
            Self::H1(s) => s.head().method(),
            Self::H2(s) => &s.req_header().method,
        }
    }

    pub fn uri(&self) -> &http::Uri {
        match self {
            Self::H1(s) => s.head().uri(),
            Self::H2(s) => &s.req_header().uri,
        }
    }

    pub fn is_http10(&self) -> bool {
        match self {
            Self::H1(s) => s.head().version() == http::Version::HTTP_10,
            Self::H2(_) => false,
        }
    }

    pub fn is_http2(&self) -> bool {
        matches!(self, Self::H2(_))
    }

    pub fn headers(&self) -> Headers<'_> {
        match self {
            Self::H1(s) => Headers::H1(s.head().fields().iter()),
            Self::H2(s) => Headers::H2(s.req_header().headers.iter()),
        }
    }

    /// The client's IP address (or socket path): written once per connection for HTTP/1.
    pub fn client_addr(&self) -> Option<Arc<str>> {
        match self {
            Self::H1(s) => s.peer().cloned(),
            Self::H2(s) => s.client_addr().map(super::h1::server::peer_text),
        }
    }

    /// The request has no body.
    pub fn is_body_empty(&mut self) -> bool {
        match self {
            Self::H1(s) => s.is_body_empty(),
            Self::H2(s) => s.is_body_empty(),
        }
    }

    pub fn is_body_done(&mut self) -> bool {
        match self {
            Self::H1(s) => s.is_body_done(),
            Self::H2(s) => s.is_body_done(),
        }
    }

    /// Reads and discards the rest of the request body.
    /// A body that cannot be read to its end leaves the connection unreusable: the sessions
    /// see that themselves, so the error carries nothing for the caller.
    pub async fn drain_body(&mut self) {
        match self {
            Self::H1(s) => {
                let _ = s.drain_body().await;
            }
            Self::H2(s) => {
                let _ = s.drain_request_body().await;
            }
        }
    }

    pub async fn write_head(&mut self, head: &ResponseHead) -> Result<(), WriteFailed> {
        match self {
            Self::H1(s) => s.write_head(head).await.map_err(|_| WriteFailed),
            Self::H2(s) => {
                let h = head.to_pingora().ok_or(WriteFailed)?;
                s.write_response_header(Box::new(h))
                    .await
                    .map_err(|_| WriteFailed)
            }
        }
    }

    pub async fn write_body(&mut self, data: Bytes, end: bool) -> Result<(), WriteFailed> {
        match self {
            Self::H1(s) => s.write_body(data, end).await.map_err(|_| WriteFailed),
            Self::H2(s) => s
                .write_response_body(data, end)
                .await
                .map(|_| ())
                .map_err(|_| WriteFailed),
        }
    }

    /// A response head has gone out.
    pub fn response_written(&self) -> bool {
        match self {
            Self::H1(s) => s.response_written(),
            Self::H2(s) => s.response_written().is_some(),
        }
    }

    /// Closes the connection after this response (HTTP/1).
    pub fn close_after(&mut self) {
        match self {
            Self::H1(s) => s.close_after(),
            Self::H2(s) => s.set_keepalive(None),
        }
    }

    /// Resolves when the client hangs up (`true`) or sends something more (`false`).
    pub async fn client_gone(&mut self) -> bool {
        match self {
            Self::H1(s) => s.client_gone().await,
            Self::H2(s) => s.read_body_or_idle(true).await.is_err(),
        }
    }
}
