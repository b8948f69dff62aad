//! Request paths as the gateway routes and forwards them: one canonical form, decided before
//! anything looks at the path, so that what the gateway meters and authorizes is exactly what
//! the provider serves. A provider normalises `/v1/%63hat/completions` to its chat endpoint and
//! resolves `/v1/%2e%2e/admin` above `/v1`; neither may pass as an unmetered passthrough.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `.` or `..` as a segment, literally or percent-encoded.
    DotSegment,
    /// An encoded `/` or `\`, a NUL or control character, or a bad `%` escape.
    Encoding,
    /// An empty segment (`//`).
    EmptySegment,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            Self::DotSegment => "the request path must not contain dot segments",
            Self::Encoding => {
                "the request path must not contain encoded slashes, control characters or bad escapes"
            }
            Self::EmptySegment => "the request path must not contain empty segments",
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The canonical form of `path` (RFC 3986 §6.2.2: percent-encoded unreserved characters
/// decoded, other escapes upper-cased), or why it is refused. Paths without `%` and without
/// anything to refuse are returned borrowed.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.iter().any(|&c| c < 0x20 || c == 0x7f || c == b'\\') {
        return Err(PathError::Encoding);
    }
    let out: Cow<'_, str> = if b.contains(&b'%') {
        let mut out = String::with_capacity(path.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'%' {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::Encoding);
            };
            let v = h << 4 | l;
            if unreserved(v) {
                out.push(v as char);
            } else if v < 0x20 || v == 0x7f || v == b'/' || v == b'\\' {
                return Err(PathError::Encoding);
            } else {
                out.push('%');
                out.push_str(&format!("{v:02X}"));
            }
            i += 3;
        }
        Cow::Owned(out)
    } else {
        Cow::Borrowed(path)
    };
    // Non-ASCII bytes stay as they came (pingora gives a valid `str`); only ASCII was decoded.
    let mut segments = out.split('/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        if seg == "." || seg == ".." {
            return Err(PathError::DotSegment);
        }
        // A trailing slash is an empty last segment and is allowed.
        if seg.is_empty() && segments.peek().is_some() {
            return Err(PathError::EmptySegment);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths() {
        assert_eq!(
            normalize("/v1/chat/completions").unwrap(),
            "/v1/chat/completions"
        );
        assert!(matches!(normalize("/v1/files").unwrap(), Cow::Borrowed(_)));
        assert_eq!(
            normalize("/v1/%63hat/completions").unwrap(),
            "/v1/chat/completions"
        );
        assert_eq!(
            normalize("/v1/files/a%20b%2a").unwrap(),
            "/v1/files/a%20b%2A"
        );
        assert_eq!(normalize("/v1/models/").unwrap(), "/v1/models/");
        assert_eq!(normalize("/v1/x.y/..z").unwrap(), "/v1/x.y/..z");
    }

    #[test]
    fn refused_paths() {
        for (p, e) in [
            ("/v1/../admin", PathError::DotSegment),
            ("/v1/%2e%2e/%2e%2e/admin", PathError::DotSegment),
            ("/v1/%2E%2e/admin", PathError::DotSegment),
            ("/v1/.%2e/admin", PathError::DotSegment),
            ("/v1/%2e/files", PathError::DotSegment),
            ("/v1/./files", PathError::DotSegment),
            ("/v1/files/..", PathError::DotSegment),
            ("/v1/a%2fb", PathError::Encoding),
            ("/v1/a%5Cb", PathError::Encoding),
            ("/v1/a\\b", PathError::Encoding),
            ("/v1/a%00b", PathError::Encoding),
            ("/v1/a%zz", PathError::Encoding),
            ("/v1/a%2", PathError::Encoding),
            ("/v1//chat/completions", PathError::EmptySegment),
        ] {
            assert_eq!(normalize(p), Err(e), "{p}");
        }
    }
}
