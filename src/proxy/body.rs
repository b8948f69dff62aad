//! Reading a client's request body into memory, bounded by the configured limit.

use crate::error::GatewayError;
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::ServerSession;
use pingora_error::ErrorType;

/// The declared `Content-Length`, if any and valid.
pub fn content_length(s: &ServerSession) -> Option<usize> {
    s.get_header(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn expects_continue(s: &ServerSession) -> bool {
    s.get_header(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

pub fn read_error(e: &pingora_error::Error) -> GatewayError {
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

/// Refuses a declared length over `limit` before reading (and before `100 Continue`), then
/// answers `Expect: 100-continue`.
pub async fn admit(s: &mut ServerSession, limit: usize) -> Result<(), GatewayError> {
    if content_length(s).is_some_and(|n| n > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    if expects_continue(s) {
        s.write_continue_response()
            .await
            .map_err(|_| GatewayError::ClientClosed)?;
    }
    Ok(())
}

/// Reads the whole body, at most `limit` bytes. A body that arrives in one piece is not copied.
pub async fn read_bounded(s: &mut ServerSession, limit: usize) -> Result<Bytes, GatewayError> {
    admit(s, limit).await?;
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(chunk) = s.read_request_body().await.map_err(|e| read_error(&e))? {
        total += chunk.len();
        if total > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        match (&mut buf, first.take()) {
            (Some(b), _) => b.extend_from_slice(&chunk),
            (None, None) => first = Some(chunk),
            (None, Some(f)) => {
                let cap = content_length(s).unwrap_or(total * 2).clamp(total, limit);
                let mut b = BytesMut::with_capacity(cap);
                b.extend_from_slice(&f);
                b.extend_from_slice(&chunk);
                buf = Some(b);
            }
        }
    }
    Ok(match (buf, first) {
        (Some(b), _) => b.freeze(),
        (None, Some(f)) => f,
        (None, None) => Bytes::new(),
    })
}
