//! Which headers cross the gateway in each direction, and the headers it adds.

use super::client::Client;
use super::h1::length_bit;
use super::h1::response::Head;
use super::response_head::ResponseHead;
use crate::error::GatewayError;
use crate::header_list::HeaderList;
use crate::routing::Provider;
use bytes::{BufMut, BytesMut};
use http::header::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use std::borrow::Cow;

/// Client headers never sent upstream: hop-by-hop, framing we recompute, the caller's own
/// credentials and account routing, gateway controls, and compression (we must read the body).
/// `name` as the client sent it: HTTP/1 names come in any case.
fn forward_request_header(name: &[u8]) -> bool {
    let mut lower = [0u8; 32];
    let Some(n) = lower.get_mut(..name.len()) else {
        // Longer than any name below; only the prefixes can match.
        return !has_prefix(name, b"x-model-bridge-") && !has_prefix(name, b"openai-");
    };
    n.copy_from_slice(name);
    n.make_ascii_lowercase();
    let n = &*n;
    !matches!(
        n,
        b"host"
            | b"authorization"
            | b"api-key"
            | b"x-api-key"
            | b"proxy-authorization"
            | b"cookie"
            | b"content-length"
            | b"transfer-encoding"
            | b"connection"
            | b"keep-alive"
            | b"proxy-connection"
            | b"te"
            | b"trailer"
            | b"upgrade"
            | b"expect"
            | b"accept-encoding"
            | b"x-request-id"
            | b"forwarded"
            | b"x-forwarded-for"
    ) && !n.starts_with(b"x-model-bridge-")
        && !n.starts_with(b"openai-")
        && !n.starts_with(b":")
}

/// `name` starts with `prefix` (lower-case), ASCII case-insensitive.
fn has_prefix(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Provider headers never relayed to the client (in any case).
const NOT_RELAYED: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"te",
    b"trailer",
    b"upgrade",
    b"set-cookie",
    b"x-request-id",
];

fn forward_response_header(name: &[u8]) -> bool {
    !NOT_RELAYED.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The lengths of `NOT_RELAYED` and `content-length`: a provider's field whose length is in
/// none of the sets a response head is checked against (most are) is relayed without
/// comparisons.
const DROPPED_LENGTHS: u64 = {
    let mut m = length_bit(b"content-length".len());
    let mut i = 0;
    while i < NOT_RELAYED.len() {
        m |= length_bit(NOT_RELAYED[i].len());
        i += 1;
    }
    m
};

/// A request head for a provider, serialized as it goes on the wire (HTTP/1.1): built straight
/// from the client's parsed header, with no header map made and hashed only to be serialized
/// (that cost a dozen allocations per request).
pub struct RequestHead {
    pub wire: BytesMut,
    /// A `HEAD` request: no body follows the response header, whatever it says.
    pub is_head: bool,
}

/// Writes a request head; every value is checked (no CR, LF or other control byte) so nothing
/// a client or a config sends can split the request.
struct HeadWriter(BytesMut);

impl HeadWriter {
    /// The request line and the provider's `host`.
    fn start(method: &str, path: &str, provider: &Provider) -> Option<Self> {
        // A request target is visible ASCII (or obs-text): no space, no control byte.
        if path.is_empty() || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return None;
        }
        let mut w = BytesMut::with_capacity(512);
        w.put_slice(method.as_bytes());
        w.put_u8(b' ');
        w.put_slice(path.as_bytes());
        w.put_slice(b" HTTP/1.1\r\n");
        let mut w = Self(w);
        if !provider_sets(provider, "host") {
            w.text("host", &provider.authority)?;
        }
        Some(w)
    }

    /// A header whose name and value are already valid (parsed).
    fn parsed(&mut self, name: &[u8], value: &[u8]) {
        self.raw(name, value);
    }

    /// A header from text: the name must be a token and the value free of control bytes.
    fn text(&mut self, name: &str, value: &str) -> Option<()> {
        use super::response_head::{is_token, is_value};
        (is_token(name.as_bytes()) && is_value(value.as_bytes())).then_some(())?;
        self.raw(name.as_bytes(), value.as_bytes());
        Some(())
    }

    fn content_length(&mut self, n: usize) {
        use std::fmt::Write;
        let _ = write!(self.0, "content-length: {n}\r\n");
    }

    fn raw(&mut self, name: &[u8], value: &[u8]) {
        self.0.put_slice(name);
        self.0.put_slice(b": ");
        self.0.put_slice(value);
        self.0.put_slice(b"\r\n");
    }

    fn finish(mut self, method: &str) -> RequestHead {
        self.0.put_slice(b"\r\n");
        RequestHead {
            wire: self.0,
            is_head: method == "HEAD",
        }
    }
}

/// The request head for the provider of a client's request whose body (`body_len` bytes) is in
/// hand. `traceparent`: the attempt's span, sent in place of the client's.
pub fn upstream_request<'a>(
    req: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    provider: &Provider,
    method: &str,
    path: &str,
    body_len: usize,
    request_id: &str,
    traceparent: Option<&str>,
) -> Result<RequestHead, GatewayError> {
    let bad = || GatewayError::InvalidField {
        param: "path",
        message: "the request path cannot be forwarded".into(),
    };
    let mut w = HeadWriter::start(method, path, provider).ok_or_else(bad)?;
    // A provider's own header (or our span) replaces the client's of the same name.
    let replaced = |n: &[u8]| {
        (traceparent.is_some() && n.eq_ignore_ascii_case(b"traceparent"))
            || provider
                .extra_headers
                .iter()
                .any(|(e, _)| e.as_bytes().eq_ignore_ascii_case(n))
    };
    for (name, value) in req {
        if forward_request_header(name) && !replaced(name) {
            w.parsed(name, value);
        }
    }
    if (body_len > 0 || !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS"))
        && !provider_sets(provider, "content-length")
    {
        w.content_length(body_len);
    }
    // The attempt's span replaces a provider's own `traceparent` too.
    for (name, value) in provider_headers(provider, request_id)
        .filter(|(n, _)| traceparent.is_none() || *n != "traceparent")
    {
        w.text(name, &value).ok_or_else(bad)?;
    }
    if let Some(t) = traceparent {
        w.text("traceparent", t).ok_or_else(bad)?;
    }
    Ok(w.finish(method))
}

/// Whether the provider's configured headers set `name` (lower-case): one of its own replaces
/// the one the gateway would write (`host`, the credential, framing), as a header map's
/// `insert` did, so no name goes out twice.
fn provider_sets(provider: &Provider, name: &str) -> bool {
    provider.extra_headers.iter().any(|(n, _)| n == name)
}

/// What every upstream request carries whoever asked: the provider's credential and extra
/// headers (an extra header of the credential's name wins), and our request id (which wins
/// over an extra header of its name).
fn provider_headers<'a>(
    provider: &'a Provider,
    request_id: &'a str,
) -> impl Iterator<Item = (&'a str, Cow<'a, str>)> {
    let credential = provider
        .auth_header()
        .filter(|(n, _)| !provider_sets(provider, n))
        .map(|(n, v)| (n, Cow::Borrowed(v)));
    let extra = provider
        .extra_headers
        .iter()
        .filter(|(n, _)| n != "x-request-id")
        .map(|(n, v)| (n.as_str(), Cow::Borrowed(v.as_str())));
    credential
        .into_iter()
        .chain(extra)
        .chain(std::iter::once(("x-request-id", Cow::Borrowed(request_id))))
}

/// Request header for a provider when the client's body streams through as it is read (large
/// passthrough uploads): pingora's client session frames that body, so it gets a parsed header.
/// `body_len: None` means a chunked body follows.
pub fn upstream_request_streamed(
    s: &Client,
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
    let mut h = RequestHeader::build(method, path.as_bytes(), Some(24)).map_err(bad)?;
    h.insert_header("host", provider.authority.as_str())
        .map_err(bad)?;
    for (name, value) in s.headers() {
        if forward_request_header(name) {
            let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            else {
                continue;
            };
            h.append_header(name, value).map_err(bad)?;
        }
    }
    match body_len {
        Some(n) => h.insert_header("content-length", n).map_err(bad)?,
        None => h
            .insert_header("transfer-encoding", "chunked")
            .map_err(bad)?,
    }
    for (name, value) in provider_headers(provider, request_id) {
        h.insert_header(name.to_string(), value.as_ref())
            .map_err(bad)?;
    }
    Ok(h)
}

/// A request of the gateway's own (a judge's), with no client headers: JSON body, the
/// provider's credentials and headers, our request id.
pub fn internal_request(
    provider: &Provider,
    method: &str,
    path: &str,
    body_len: usize,
    request_id: &str,
) -> Result<RequestHead, GatewayError> {
    let bad = || GatewayError::InvalidField {
        param: "path",
        message: "the request path cannot be sent".into(),
    };
    let mut w = HeadWriter::start(method, path, provider).ok_or_else(bad)?;
    if !provider_sets(provider, "content-type") {
        w.text("content-type", "application/json").ok_or_else(bad)?;
    }
    if !provider_sets(provider, "content-length") {
        w.content_length(body_len);
    }
    for (name, value) in provider_headers(provider, request_id) {
        w.text(name, &value).ok_or_else(bad)?;
    }
    Ok(w.finish(method))
}

/// Our own response headers, named once.
const X_REQUEST_ID: &str = "x-request-id";
const X_PROVIDER: &str = "x-model-bridge-provider";
/// The names of the fields every relayed response gets from us.
const OURS: [&str; 3] = ["content-length", X_REQUEST_ID, X_PROVIDER];

/// Response head for the client from the provider's, with `extra` headers (limits, budget
/// warning, CORS) added; `keep_length` false when the gateway changes the body (the client's
/// session then frames it: chunked, or by closing for HTTP/1.0).
///
/// No header map: names and values are shared with the provider's head (no copy); only our
/// own values are checked (theirs were parsed).
pub fn client_response(
    up: &Head,
    keep_length: bool,
    request_id: &str,
    provider: &str,
    extra: &HeaderList,
) -> Result<ResponseHead, GatewayError> {
    let bad = || GatewayError::UpstreamProtocol {
        provider: provider.to_string(),
        detail: "response header cannot be relayed".into(),
    };
    let mut h = ResponseHead::with_capacity(
        up.status(),
        up.len() + 3 + extra.len(),
        up.raw_len()
            + OURS.iter().map(|n| n.len()).sum::<usize>()
            + request_id.len()
            + provider.len()
            + extra.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>(),
    )
    .ok_or_else(bad)?;
    let checked = extra
        .iter()
        .fold(DROPPED_LENGTHS, |m, (n, _)| m | length_bit(n.len()));
    for (name, value) in up.fields() {
        // The length goes out once, reconciled (a provider may repeat it: `2, 2`); a chunked
        // body's content-length is not its length (RFC 9112 §6.3) and is never relayed. An
        // extra header of ours (limits) replaces the provider's of its name.
        let dropped = || {
            !forward_response_header(name)
                || name.eq_ignore_ascii_case(b"content-length")
                || extra
                    .iter()
                    .any(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes()))
        };
        if checked & length_bit(name.len()) != 0 && dropped() {
            continue;
        }
        h.push_parsed(name, value);
    }
    if let Some(n) = up.content_length().filter(|_| keep_length) {
        h.push("content-length", itoa::Buffer::new().format(n));
    }
    if !h.push(X_REQUEST_ID, request_id) || !h.push(X_PROVIDER, provider) {
        return Err(bad());
    }
    for (name, value) in extra.iter() {
        h.push(name, value);
    }
    Ok(h)
}

/// A complete gateway-made response head with a body of `len` bytes.
pub fn local_response(
    status: u16,
    len: usize,
    request_id: &str,
    close: bool,
) -> Option<ResponseHead> {
    let mut h = ResponseHead::new(status, 8)?;
    h.push("content-type", "application/json");
    h.push("content-length", itoa::Buffer::new().format(len));
    if !h.push("x-request-id", request_id) {
        return None;
    }
    if close {
        h.push("connection", "close");
    }
    Some(h)
}

/// Adds extra headers (limits, budget warning, CORS), each replacing any of its name; a value
/// that is not a valid header is skipped rather than failing the response.
pub fn add(h: &mut ResponseHead, extra: &HeaderList) {
    if extra.is_empty() {
        return;
    }
    for (name, value) in extra.iter() {
        h.set(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each header name goes out once: a provider's configured header replaces the gateway's
    /// (host, credential, content-type), our request id and the attempt's span replace a
    /// configured one, and the client's copy of any of them is dropped.
    #[test]
    fn a_configured_header_replaces_the_gateways_and_no_name_goes_out_twice() {
        let raw: crate::config::raw::RawProvider = toml::from_str(
            r#"kind = "openai_compatible"
base_url = "https://api.example.com/v1"
api_key = "sk-key"
headers = { Host = "vhost.internal", Authorization = "Token custom", "X-Request-Id" = "fixed", traceparent = "00-configured", "X-Team" = "a", "Content-Type" = "application/x-custom" }"#,
        )
        .unwrap();
        let provider = Provider::from_raw("p", &raw).unwrap();
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        for (n, v) in [
            ("Host", "gateway"),
            ("X-Team", "client"),
            ("traceparent", "00-client"),
            ("Content-Type", "application/json"),
        ] {
            req.append_header(n, v).unwrap();
        }
        let count = |wire: &[u8], name: &str| {
            let text = std::str::from_utf8(wire).unwrap().to_ascii_lowercase();
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}:")))
                .count()
        };
        let head = upstream_request(
            req.headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            &provider,
            "POST",
            "/v1/chat/completions",
            2,
            "req_1",
            Some("00-attempt"),
        )
        .unwrap();
        let text = std::str::from_utf8(&head.wire).unwrap();
        for (name, value) in [
            ("host", "vhost.internal"),
            ("authorization", "Token custom"),
            ("x-request-id", "req_1"),
            ("traceparent", "00-attempt"),
            ("x-team", "a"),
            ("content-type", "application/x-custom"),
            ("content-length", "2"),
        ] {
            assert_eq!(count(&head.wire, name), 1, "{name} in {text}");
            assert!(
                text.contains(&format!("{name}: {value}\r\n")),
                "{name} in {text}"
            );
        }
        let internal =
            internal_request(&provider, "POST", "/v1/chat/completions", 2, "req_2").unwrap();
        let text = std::str::from_utf8(&internal.wire).unwrap();
        for name in ["host", "authorization", "x-request-id", "content-type"] {
            assert_eq!(count(&internal.wire, name), 1, "{name} in {text}");
        }
        assert!(
            text.contains("content-type: application/x-custom\r\n"),
            "{text}"
        );
    }

    /// The client gets one reconciled length (a provider may repeat it), never a chunked
    /// body's, never a provider's hop-by-hop fields or its request id; ours replace them.
    #[test]
    fn the_client_response_head_carries_one_length_and_our_own_ids() {
        use crate::proxy::h1::response::parse_head;
        let head = |wire: &[u8]| parse_head(&mut BytesMut::from(wire)).unwrap().unwrap();
        let up = head(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\ncontent-length: 2\r\nConnection: keep-alive\r\nX-Request-Id: theirs\r\nX-Ratelimit-Limit-Requests: 9\r\nopenai-version: 2020-10-01\r\n\r\n");
        let mut extra = HeaderList::default();
        extra.push("x-ratelimit-limit-requests", "5");
        extra.push_int("retry-after", 3u8);
        let h = client_response(&up, true, "req_1", "p", &extra).unwrap();
        let fields: Vec<(String, String)> = h
            .fields()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).to_ascii_lowercase(),
                    String::from_utf8_lossy(v).to_string(),
                )
            })
            .collect();
        let get = |n: &str| {
            fields
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("content-length"), ["2"]);
        assert_eq!(get("x-request-id"), ["req_1"]);
        assert_eq!(get("x-ratelimit-limit-requests"), ["5"]);
        assert_eq!(get("retry-after"), ["3"]);
        assert_eq!(get("x-model-bridge-provider"), ["p"]);
        assert_eq!(get("openai-version"), ["2020-10-01"]);
        assert!(get("connection").is_empty());
        let h = client_response(&up, false, "req_1", "p", &HeaderList::default()).unwrap();
        assert_eq!(
            h.get("content-length"),
            None,
            "a rewritten body has no length"
        );
        let chunked =
            head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n");
        let h = client_response(&chunked, true, "req_1", "p", &HeaderList::default()).unwrap();
        assert_eq!(h.get("content-length"), None);
        assert_eq!(h.get("transfer-encoding"), None);
    }
}
