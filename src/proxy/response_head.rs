//! A response head the gateway sends a client: a status and header fields in order, no header
//! map. Values from a provider's parsed head are shared with it (no copy); values the gateway
//! writes are checked so nothing can split the response. How the body is framed is the
//! session's to decide (`h1::server`), never a field set here.

use bytes::Bytes;
use pingora_http::ResponseHeader;

#[derive(Debug, Clone)]
pub struct ResponseHead {
    status: u16,
    fields: Vec<(Bytes, Bytes)>,
}

/// A header name: a token (RFC 9110 §5.6.2).
pub(super) fn is_token(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value: visible ASCII, obs-text, spaces and tabs; no CR, LF or other control byte.
pub(super) fn is_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

impl ResponseHead {
    /// `None` for a status that is not three digits (100-999).
    pub fn new(status: u16, capacity: usize) -> Option<Self> {
        (100..=999).contains(&status).then(|| Self {
            status,
            fields: Vec::with_capacity(capacity),
        })
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// Appends a field; `false` (and nothing added) when the value holds a control byte. The
    /// name is one of ours (a literal), so only checked in debug builds.
    pub fn push(&mut self, name: &'static str, value: impl Into<Bytes>) -> bool {
        debug_assert!(is_token(name.as_bytes()), "{name}");
        let value = value.into();
        let ok = is_value(&value);
        if ok {
            self.fields
                .push((Bytes::from_static(name.as_bytes()), value));
        }
        ok
    }

    /// Appends a field from a provider's parsed head (name and value already valid HTTP).
    pub fn push_parsed(&mut self, name: Bytes, value: Bytes) {
        debug_assert!(is_token(&name) && is_value(&value));
        self.fields.push((name, value));
    }

    /// Replaces every field named `name` (ASCII case-insensitive) with this one; an invalid
    /// value is skipped, leaving the head as it was.
    pub fn set(&mut self, name: &'static str, value: impl Into<Bytes>) {
        let value = value.into();
        if is_value(&value) {
            self.remove(name);
            self.push(name, value);
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.fields
            .retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes()));
    }

    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &v[..])
    }

    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|(n, v)| (&n[..], &v[..]))
    }

    /// The same head for pingora's HTTP/2 session (which frames the body itself).
    pub fn to_pingora(&self) -> Option<ResponseHeader> {
        let mut h = ResponseHeader::build(self.status, Some(self.fields.len())).ok()?;
        for (n, v) in &self.fields {
            if n.eq_ignore_ascii_case(b"connection") || n.eq_ignore_ascii_case(b"transfer-encoding")
            {
                continue;
            }
            let name = http::HeaderName::from_bytes(n).ok()?;
            let value = http::HeaderValue::from_maybe_shared(v.clone()).ok()?;
            h.append_header(name, value).ok()?;
        }
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_could_split_the_response_are_refused() {
        let mut h = ResponseHead::new(200, 2).unwrap();
        assert!(!h.push("x-a", "a\r\nset-cookie: evil"));
        assert!(!h.push("x-b", "nul\0"));
        assert!(h.push("x-c", "tab\tand obs-text \u{e9}"));
        h.set("x-c", "b\nc");
        assert_eq!(h.get("X-C"), Some(&b"tab\tand obs-text \xc3\xa9"[..]));
        h.push_parsed(
            Bytes::from_static(b"X-Ratelimit-Limit-Requests"),
            Bytes::from_static(b"9"),
        );
        h.set("x-ratelimit-limit-requests", "5");
        assert_eq!(h.fields().count(), 2);
        assert_eq!(h.get("x-ratelimit-limit-requests"), Some(&b"5"[..]));
        assert!(ResponseHead::new(99, 0).is_none());
        assert!(ResponseHead::new(1000, 0).is_none());
    }
}
