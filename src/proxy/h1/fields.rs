//! A head's header fields as offsets into one exact-size copy of the head.

use super::ReadError;
use bytes::Bytes;

/// Header fields: (name start, name end, value start, value end) in `raw`, in order.
#[derive(Debug)]
pub struct Fields {
    raw: Bytes,
    at: Vec<[u32; 4]>,
    /// Bit `n % 64` set when some name is `n` bytes long: a lookup of a name whose length no
    /// field has (most are: framing fields a request or response usually lacks) scans nothing.
    lengths: u64,
}

/// Bit `len % 64`: one member of a set of name lengths, for a comparison-free "no name of this
/// length here" (the headers a client's response head drops use it too).
pub const fn length_bit(len: usize) -> u64 {
    1 << (len % 64)
}

impl Fields {
    /// Copies `head` (a whole parsed head) once; `headers` are `httparse`'s slices into it.
    pub(super) fn new(head: &[u8], headers: &[httparse::Header<'_>]) -> Self {
        let base = head.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        Self {
            at: headers
                .iter()
                .map(|h| {
                    let (n, v) = (at(h.name.as_bytes()), at(h.value));
                    [n, n + h.name.len() as u32, v, v + h.value.len() as u32]
                })
                .collect(),
            lengths: headers.iter().fold(0, |m, h| m | length_bit(h.name.len())),
            raw: Bytes::copy_from_slice(head),
        }
    }

    /// The whole head as received.
    pub(super) fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.all(name).next()
    }

    /// Every value of header `name`, in order.
    pub fn all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        let none = self.lengths & length_bit(name.len()) == 0;
        let at = if none { &[][..] } else { &self.at[..] };
        FieldIter {
            raw: &self.raw,
            at: at.iter(),
        }
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v)
    }

    /// Header fields in order, names as sent.
    pub fn iter(&self) -> FieldIter<'_> {
        FieldIter {
            raw: &self.raw,
            at: self.at.iter(),
        }
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Some value of `name`, a comma-separated list, holds `token` (ASCII case-insensitive):
    /// `connection: keep-alive, Close`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    /// `transfer-encoding`'s final coding is `chunked` (then any `content-length` is ignored,
    /// RFC 9112 §6.3).
    pub fn is_chunked(&self) -> bool {
        self.all("transfer-encoding")
            .last()
            .and_then(|v| v.rsplit(|&b| b == b',').next())
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    }

    /// `content-length`, reconciled across duplicates and comma lists (RFC 9110 §8.6):
    /// differing or invalid values are an unrecoverable framing error.
    pub fn content_length(&self) -> Result<Option<u64>, ReadError> {
        let mut found: Option<u64> = None;
        for value in self.all("content-length") {
            for part in value.split(|&b| b == b',') {
                let part = part.trim_ascii();
                let n =
                    (!part.is_empty() && part.len() <= 19 && part.iter().all(u8::is_ascii_digit))
                        .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                        .flatten()
                        .ok_or(ReadError::Protocol("invalid content-length"))?;
                if found.is_some_and(|f| f != n) {
                    return Err(ReadError::Protocol("conflicting content-length"));
                }
                found = Some(n);
            }
        }
        Ok(found)
    }
}

/// Header fields in order: (name as sent, value).
pub struct FieldIter<'a> {
    raw: &'a [u8],
    at: std::slice::Iter<'a, [u32; 4]>,
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let f = self.at.next()?;
        Some((
            &self.raw[f[0] as usize..f[1] as usize],
            &self.raw[f[2] as usize..f[3] as usize],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(head: &[u8]) -> Fields {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(head).unwrap().is_complete());
        Fields::new(head, req.headers)
    }

    #[test]
    fn lookups_by_name_whatever_lengths_the_other_names_share() {
        // A 78-byte name shares its length bit with content-length (14): still told apart.
        let long = "x".repeat(78);
        let head = format!(
            "POST / HTTP/1.1\r\nHost: a\r\n{long}: 1\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n"
        );
        let f = fields(head.as_bytes());
        assert_eq!(f.content_length().unwrap(), Some(7));
        assert_eq!(f.get("host"), Some(&b"a"[..]));
        assert_eq!(f.get(&long), Some(&b"1"[..]));
        assert_eq!(f.all("content-length").count(), 2);
        assert!(f.get("transfer-encoding").is_none() && !f.is_chunked());
        assert!(f.get("hots").is_none(), "same length, other name");
        assert_eq!(f.iter().count(), 4, "iteration sees every field");
    }
}
