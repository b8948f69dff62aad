//! Reading a client's request body into memory, bounded by the configured limit.

use super::client::RequestBody;
use crate::error::GatewayError;
use bytes::{Bytes, BytesMut};

/// Refuses a declared length over `limit` before reading (and before `100 Continue`), then
/// answers `Expect: 100-continue`.
pub async fn admit(s: &mut impl RequestBody, limit: usize) -> Result<(), GatewayError> {
    if s.content_length().is_some_and(|n| n > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    s.write_continue()
        .await
        .map_err(|_| GatewayError::ClientClosed)
}

/// Reads the whole body, at most `limit` bytes. A body that arrives in one piece is not copied.
pub async fn read_bounded(s: &mut impl RequestBody, limit: usize) -> Result<Bytes, GatewayError> {
    admit(s, limit).await?;
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(chunk) = s.read_body().await? {
        total += chunk.len();
        if total > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        match (&mut buf, first.take()) {
            (Some(b), _) => b.extend_from_slice(&chunk),
            (None, None) => first = Some(chunk),
            (None, Some(f)) => {
                let cap = s.content_length().unwrap_or(total * 2).clamp(total, limit);
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
