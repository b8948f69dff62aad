//! Cross-origin calls to the data plane from allowed browser origins (the console): the
//! preflight answer, and the headers an allowed origin's responses carry. Credentials travel
//! in `Authorization`, never cookies, so no `allow-credentials`.

use super::client::{Client, RequestHeaders};
use super::relay::Outcome;
use super::response_head::ResponseHead;
use crate::header_list::HeaderList;

/// Response headers a page may read: the request id, where the request went, limits.
const EXPOSED: &str = "x-request-id, x-model-bridge-provider, x-model-bridge-variant, \
     x-model-bridge-budget-warning, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, \
     x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, \
     x-ratelimit-reset-tokens, retry-after";

/// Adds what an allowed origin's responses carry.
pub fn allow(headers: &mut HeaderList, origin: &str) {
    headers.push("access-control-allow-origin", origin);
    headers.push("access-control-expose-headers", EXPOSED);
    headers.push("vary", "origin");
}

/// Answers a preflight from an allowed origin: 204, the methods the API has, and the request
/// headers the page asked for when they are plain header names.
pub async fn preflight(s: &mut Client, origin: &str) -> Outcome {
    let asked = s
        .header_str("access-control-request-headers")
        .filter(|v| {
            v.len() <= 1024
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b))
        })
        .unwrap_or("authorization, content-type")
        .to_string();
    let _ = s.drain_body().await;
    let Some(mut h) = ResponseHead::new(204, 6) else {
        return Outcome::Abort;
    };
    for (name, value) in [
        ("access-control-allow-origin", origin),
        ("access-control-allow-methods", "GET, POST, OPTIONS"),
        ("access-control-allow-headers", asked.as_str()),
        ("access-control-max-age", "600"),
        ("vary", "origin"),
        ("content-length", "0"),
    ] {
        if !h.push(name, value) {
            return Outcome::Abort;
        }
    }
    if s.write_head(&h).await.is_err() || s.write_body(bytes::Bytes::new(), true).await.is_err() {
        return Outcome::Abort;
    }
    Outcome::Done
}
