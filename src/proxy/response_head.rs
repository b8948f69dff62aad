//! A response head the gateway sends a client: a status and header fields in order, no header
//! map. Every name and value is copied into one buffer as it is added: a provider's few dozen
//! bytes cost less to copy than to share (a reference count taken and dropped per name and per
//! value), and the head is one allocation for its bytes and one for its list. Values the
//! gateway writes are checked so nothing can split the response. How the body is framed is the
//! session's to decide (`h1::server`), never a field set here.

use pingora_http::ResponseHeader;

#[derive(Debug, Clone)]
pub struct ResponseHead {
    status: u16,
    /// Names and values, back to back.
    bytes: Vec<u8>,
    /// (name start, value start, value end) in `bytes`; a name ends where its value starts.
    fields: Vec<[u32; 3]>,
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
    // No early exit: the whole value is checked at once, many bytes per instruction.
    value.iter().fold(true, |ok, &b| {
        ok & ((b == b'\t') | ((b >= b' ') & (b != 0x7f)))
    })
}

/// Offsets saturate: a head is far below 4 GiB (clients and providers cap heads at kilobytes).
fn at(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl ResponseHead {
    /// `None` for a status that is not three digits (100-999). `fields` and `bytes` size the
    /// head ahead (a guess: it grows past them).
    pub fn new(status: u16, fields: usize) -> Option<Self> {
        Self::with_capacity(status, fields, fields * 32)
    }

    pub fn with_capacity(status: u16, fields: usize, bytes: usize) -> Option<Self> {
        (100..=999).contains(&status).then(|| Self {
            status,
            bytes: Vec::with_capacity(bytes),
            fields: Vec::with_capacity(fields),
        })
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    fn append(&mut self, name: &[u8], value: &[u8]) {
        let n = at(self.bytes.len());
        self.bytes.extend_from_slice(name);
        let v = at(self.bytes.len());
        self.bytes.extend_from_slice(value);
        self.fields.push([n, v, at(self.bytes.len())]);
    }

    /// Appends a field; `false` (and nothing added) when the value holds a control byte. The
    /// name is one of ours (a literal), so only checked in debug builds.
    pub fn push(&mut self, name: &'static str, value: impl AsRef<[u8]>) -> bool {
        debug_assert!(is_token(name.as_bytes()), "{name}");
        let value = value.as_ref();
        let ok = is_value(value);
        if ok {
            self.append(name.as_bytes(), value);
        }
        ok
    }

    /// Appends a field from a provider's parsed head (name and value already valid HTTP).
    pub fn push_parsed(&mut self, name: &[u8], value: &[u8]) {
        debug_assert!(is_token(name) && is_value(value));
        self.append(name, value);
    }

    /// Replaces every field named `name` (ASCII case-insensitive) with this one; an invalid
    /// value is skipped, leaving the head as it was.
    pub fn set(&mut self, name: &'static str, value: impl AsRef<[u8]>) {
        if is_value(value.as_ref()) {
            self.remove(name);
            self.push(name, value);
        }
    }

    /// Takes the fields named `name` out of the list (their bytes stay, unreferenced).
    pub fn remove(&mut self, name: &str) {
        let bytes = &self.bytes;
        self.fields
            .retain(|f| !bytes[f[0] as usize..f[1] as usize].eq_ignore_ascii_case(name.as_bytes()));
    }

    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let f = self.fields.iter().find(|f| {
            (f[1] - f[0]) as usize == name.len()
                && self.bytes[f[0] as usize..f[1] as usize].eq_ignore_ascii_case(name.as_bytes())
        })?;
        Some(&self.bytes[f[1] as usize..f[2] as usize])
    }

    /// Fields in order: (name, value).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|f| {
            let (n, v, e) = (f[0] as usize, f[1] as usize, f[2] as usize);
            (&self.bytes[n..v], &self.bytes[v..e])
        })
    }

    /// The same head for pingora's HTTP/2 session (which frames the body itself).
    pub fn to_pingora(&self) -> Option<ResponseHeader> {
        let mut h = ResponseHeader::build(self.status, Some(self.fields.len())).ok()?;
        for (n, v) in self.fields() {
            if n.eq_ignore_ascii_case(b"connection") || n.eq_ignore_ascii_case(b"transfer-encoding")
            {
                continue;
            }
            let name = http::HeaderName::from_bytes(n).ok()?;
            let value = http::HeaderValue::from_bytes(v).ok()?;
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
        assert!(!h.push(
            "x-d",
            "del\x7f and a long value past any one vector of bytes"
        ));
        assert!(!h.push(
            "x-e",
            "a long value past any one vector of bytes, then \x1b"
        ));
        assert!(h.push("x-c", "tab\tand obs-text \u{e9}"));
        h.set("x-c", "b\nc");
        assert_eq!(h.get("X-C"), Some(&b"tab\tand obs-text \xc3\xa9"[..]));
        h.push_parsed(b"X-Ratelimit-Limit-Requests", b"9");
        h.set("x-ratelimit-limit-requests", "5");
        assert_eq!(h.fields().count(), 2);
        assert_eq!(h.get("x-ratelimit-limit-requests"), Some(&b"5"[..]));
        assert!(ResponseHead::new(99, 0).is_none());
        assert!(ResponseHead::new(1000, 0).is_none());
    }
}
