//! Which headers cross the gateway in each direction, and the headers it adds.

use crate::error::GatewayError;
use crate::routing::Provider;
use http::header::HeaderName;
use pingora_core::protocols::http::ServerSession;
use pingora_http::{RequestHeader, ResponseHeader};

/// Client headers never sent upstream: hop-by-hop, framing we recompute, the caller's own
/// credentials and account routing, gateway controls, and compression (we must read the body).
fn forward_request_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    !matches!(
        n,
        "host"
            | "authorization"
            | "api-key"
            | "x-api-key"
            | "proxy-authorization"
            | "cookie"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
            | "accept-encoding"
            | "x-request-id"
            | "forwarded"
            | "x-forwarded-for"
    ) && !n.starts_with("x-model-bridge-")
        && !n.starts_with("openai-")
        && !n.starts_with(':')
}

/// Provider headers never relayed to the client.
fn forward_response_header(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "set-cookie"
            | "x-request-id"
    )
}

/// Request header for the provider. `body_len: None` means a chunked body follows.
pub fn upstream_request(
    s: &ServerSession,
    provider: &Provider,
    method: &str,
    path: &str,
    body_len: Option<usize>,
    request_id: &str,
) -> Result<RequestHeader, GatewayError> {
    let bad = |_| GatewayError::InvalidField {
        param: "path",
        message: "the request path cannot be forwarded".into(),
    };
    let req = s.req_header();
    let mut h =
        RequestHeader::build(method, path.as_bytes(), Some(req.headers.len() + 6)).map_err(bad)?;
    h.insert_header("host", provider.authority.as_str())
        .map_err(bad)?;
    for (name, value) in req.headers.iter() {
        if forward_request_header(name) {
            h.append_header(name.clone(), value.clone()).map_err(bad)?;
        }
    }
    match body_len {
        Some(0) if matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS") => {}
        Some(n) => {
            h.insert_header("content-length", n).map_err(bad)?;
        }
        None => {
            h.insert_header("transfer-encoding", "chunked")
                .map_err(bad)?;
        }
    }
    provider_headers(&mut h, provider, request_id).map_err(bad)?;
    Ok(h)
}

/// What every upstream request carries whoever asked: the provider's credential and extra
/// headers, and our request id.
fn provider_headers(
    h: &mut RequestHeader,
    provider: &Provider,
    request_id: &str,
) -> pingora_error::Result<()> {
    if let Some((name, value)) = provider.auth_header() {
        h.insert_header(name, value)?;
    }
    for (name, value) in &provider.extra_headers {
        h.insert_header(name.clone(), value.as_str())?;
    }
    h.insert_header("x-request-id", request_id)?;
    Ok(())
}

/// A request of the gateway's own (a judge's), with no client headers: JSON body, the
/// provider's credentials and headers, our request id.
pub fn internal_request(
    provider: &Provider,
    method: &str,
    path: &str,
    body_len: usize,
    request_id: &str,
) -> Result<RequestHeader, GatewayError> {
    let bad = |_| GatewayError::InvalidField {
        param: "path",
        message: "the request path cannot be sent".into(),
    };
    let mut h = RequestHeader::build(method, path.as_bytes(), Some(6)).map_err(bad)?;
    h.insert_header("host", provider.authority.as_str())
        .map_err(bad)?;
    h.insert_header("content-type", "application/json")
        .map_err(bad)?;
    h.insert_header("content-length", body_len).map_err(bad)?;
    provider_headers(&mut h, provider, request_id).map_err(bad)?;
    Ok(h)
}

/// Response header for the client from the provider's; `keep_length` false when the gateway
/// changes the body (then h1 clients get chunked framing).
pub fn client_response(
    up: &ResponseHeader,
    keep_length: bool,
    h1: bool,
    request_id: &str,
    provider: &str,
) -> Result<ResponseHeader, GatewayError> {
    let bad = |_| GatewayError::UpstreamProtocol {
        provider: provider.to_string(),
        detail: "response header cannot be relayed".into(),
    };
    let mut out = ResponseHeader::build(up.status, Some(up.headers.len() + 4)).map_err(bad)?;
    let mut has_length = false;
    for (name, value) in up.headers.iter() {
        if !forward_response_header(name) {
            continue;
        }
        if name == http::header::CONTENT_LENGTH {
            if !keep_length {
                continue;
            }
            has_length = true;
        }
        out.append_header(name.clone(), value.clone())
            .map_err(bad)?;
    }
    let bodyless = up.status == 204 || up.status == 304;
    if !has_length && h1 && !bodyless {
        out.insert_header("transfer-encoding", "chunked")
            .map_err(bad)?;
    }
    out.insert_header("x-request-id", request_id).map_err(bad)?;
    out.insert_header("x-model-bridge-provider", provider)
        .map_err(bad)?;
    Ok(out)
}

/// A complete gateway-made response header with a body of `len` bytes.
pub fn local_response(
    status: u16,
    len: usize,
    request_id: &str,
    close: bool,
) -> Option<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(4)).ok()?;
    h.insert_header("content-type", "application/json").ok()?;
    h.insert_header("content-length", len).ok()?;
    h.insert_header("x-request-id", request_id).ok()?;
    if close {
        h.insert_header("connection", "close").ok()?;
    }
    Some(h)
}

/// Adds extra headers (limits, budget warning) to a response; a value that is not a valid
/// header is skipped rather than failing the response.
pub fn add(h: &mut ResponseHeader, extra: &[(&'static str, String)]) {
    for (name, value) in extra {
        let _ = h.insert_header(*name, value.as_str());
    }
}
