//! Incremental scanner for an upstream SSE stream: finds usage and the first content event as
//! bytes arrive, and drops the usage-only chunk the gateway injected when the client did not ask
//! for it. Never holds more than one incomplete event.

use super::{json, Usage};
use bytes::{Bytes, BytesMut};
use memchr::memmem;

/// What one fed chunk produced.
#[derive(Debug, Default)]
pub struct Fed {
    /// Bytes to write to the client now (may be empty).
    pub out: Bytes,
    /// This chunk carried the first content event (time to first token).
    pub first_content: bool,
}

#[derive(Debug, Default)]
pub struct SseScanner {
    /// Drop usage-only chunks (`"choices":[]` with usage) instead of forwarding them.
    strip_usage_chunk: bool,
    /// Start of the event not yet complete, copied from previous chunks.
    partial: BytesMut,
    /// Usage reported by the provider, the last one seen.
    pub usage: Option<Usage>,
    /// Content events seen: an estimate of completion tokens when no usage arrives.
    pub content_events: u64,
    /// `data: [DONE]` seen.
    pub done: bool,
}

impl SseScanner {
    pub fn new(strip_usage_chunk: bool) -> Self {
        Self {
            strip_usage_chunk,
            ..Default::default()
        }
    }

    /// Feeds one upstream chunk.
    pub fn feed(&mut self, chunk: Bytes) -> Fed {
        let had_content = self.content_events > 0;
        if !self.strip_usage_chunk {
            // Forward as it came; scan on the side.
            self.scan(&chunk, None);
            return Fed {
                out: chunk,
                first_content: !had_content && self.content_events > 0,
            };
        }
        let mut out = BytesMut::new();
        if self.partial.is_empty() {
            let complete = self.scan(&chunk, Some(&mut out));
            if complete == chunk.len() && out.len() == chunk.len() {
                // Nothing dropped, nothing held back: forward the chunk itself, no copy.
                return Fed {
                    out: chunk,
                    first_content: !had_content && self.content_events > 0,
                };
            }
            self.partial.extend_from_slice(&chunk[complete..]);
        } else {
            self.partial.extend_from_slice(&chunk);
            let buf = std::mem::take(&mut self.partial);
            let complete = self.scan(&buf, Some(&mut out));
            self.partial.extend_from_slice(&buf[complete..]);
        }
        Fed {
            out: out.freeze(),
            first_content: !had_content && self.content_events > 0,
        }
    }

    /// The stream ended: whatever incomplete event is left goes to the client as is.
    pub fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            self.inspect_event(&rest);
        }
        rest.freeze()
    }

    /// Scans complete events in `buf`, appending kept ones to `out` when given; returns the
    /// length of the complete-event prefix. In pass-through mode the tail is kept in `partial`.
    fn scan(&mut self, buf: &[u8], mut out: Option<&mut BytesMut>) -> usize {
        let passthrough = out.is_none();
        let mut owned;
        let data: &[u8] = if passthrough && !self.partial.is_empty() {
            owned = std::mem::take(&mut self.partial);
            owned.extend_from_slice(buf);
            &owned[..]
        } else {
            buf
        };
        let mut at = 0;
        while let Some((end, next)) = event_end(&data[at..]) {
            let event = &data[at..at + end];
            let keep = self.inspect_event(event);
            if let Some(o) = out.as_deref_mut() {
                if keep {
                    o.extend_from_slice(&data[at..at + next]);
                }
            }
            at += next;
        }
        if passthrough {
            self.partial.extend_from_slice(&data[at..]);
        }
        at
    }

    /// Looks at one event; returns whether the client should get it.
    fn inspect_event(&mut self, event: &[u8]) -> bool {
        let Some(data) = event_data(event) else {
            return true;
        };
        let data: &[u8] = &data;
        if data == b"[DONE]" {
            self.done = true;
            return true;
        }
        let usage = json::from_fragment(data);
        if let Some(u) = usage {
            self.usage = Some(u);
            if empty_choices(data) {
                return !self.strip_usage_chunk;
            }
        }
        if has_content(data) {
            self.content_events += 1;
        }
        true
    }
}

/// End of the first event in `b`: (length without the blank line, length with it).
fn event_end(b: &[u8]) -> Option<(usize, usize)> {
    let lf = memmem::find(b, b"\n\n").map(|i| (i, i + 2));
    let crlf = memmem::find(b, b"\r\n\r\n").map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(c)) => Some(if a.0 < c.0 { a } else { c }),
        (a, c) => a.or(c),
    }
}

/// The event's `data` (several `data:` lines joined by `\n`), if any.
fn event_data(event: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    let mut single: Option<&[u8]> = None;
    let mut joined: Option<Vec<u8>> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(v) = line.strip_prefix(b"data:") else {
            continue;
        };
        let v = v.strip_prefix(b" ").unwrap_or(v);
        match (&mut joined, single) {
            (Some(j), _) => {
                j.push(b'\n');
                j.extend_from_slice(v);
            }
            (None, Some(first)) => {
                let mut j = first.to_vec();
                j.push(b'\n');
                j.extend_from_slice(v);
                joined = Some(j);
            }
            (None, None) => single = Some(v),
        }
    }
    match joined {
        Some(j) => Some(j.into()),
        None => single.map(Into::into),
    }
}

/// `"choices"` followed by an empty array: the usage-only final chunk.
fn empty_choices(data: &[u8]) -> bool {
    let Some(at) = memmem::find(data, b"\"choices\"") else {
        return false;
    };
    let mut rest = data[at + 9..].iter().filter(|b| !b.is_ascii_whitespace());
    rest.next() == Some(&b':') && rest.next() == Some(&b'[') && rest.next() == Some(&b']')
}

/// Whether a chunk carries generated output (text, content, tool calls or a Responses delta).
fn has_content(data: &[u8]) -> bool {
    const KEYS: [&[u8]; 5] = [
        b"\"content\":\"",
        b"\"text\":\"",
        b"\"delta\":\"",
        b"\"reasoning_content\":\"",
        b"\"arguments\":\"",
    ];
    for k in KEYS {
        if let Some(i) = memmem::find(data, k) {
            if data.get(i + k.len()).is_some_and(|&b| b != b'"') {
                return true;
            }
        }
    }
    memmem::find(data, b"\"tool_calls\":[{").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: &str = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n";
    const C2: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n";
    const U: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":1}}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn whole() -> String {
        [C1, C2, C2, U, DONE].concat()
    }

    fn run(strip: bool, split: usize) -> (String, SseScanner, usize) {
        let mut s = SseScanner::new(strip);
        let all = whole();
        let mut out = Vec::new();
        let mut first_at = usize::MAX;
        for (i, piece) in all.as_bytes().chunks(split).enumerate() {
            let fed = s.feed(Bytes::copy_from_slice(piece));
            if fed.first_content && first_at == usize::MAX {
                first_at = i;
            }
            out.extend_from_slice(&fed.out);
        }
        out.extend_from_slice(&s.finish());
        (String::from_utf8(out).unwrap(), s, first_at)
    }

    #[test]
    fn strips_usage_chunk_at_any_split() {
        for split in [1, 3, 7, 40, 1000] {
            let (out, s, _) = run(true, split);
            assert_eq!(out, [C1, C2, C2, DONE].concat(), "split {split}");
            let u = s.usage.unwrap();
            assert_eq!(
                (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
                (5, 2, 1)
            );
            assert_eq!(s.content_events, 2);
            assert!(s.done);
        }
    }

    #[test]
    fn passes_everything_when_client_asked() {
        for split in [1, 5, 1000] {
            let (out, s, _) = run(false, split);
            assert_eq!(out, whole());
            assert_eq!(s.usage.unwrap().completion_tokens, 2);
        }
    }

    #[test]
    fn first_content_is_the_first_non_empty_delta() {
        let (_, _, first) = run(true, C1.len());
        assert_eq!(first, 1);
    }

    #[test]
    fn crlf_events_and_multiline_data() {
        let mut s = SseScanner::new(true);
        let ev = "event: x\r\ndata: {\"choices\":[],\r\ndata: \"usage\":{\"prompt_tokens\":9}}\r\n\r\ndata: [DONE]\r\n\r\n";
        let fed = s.feed(Bytes::from(ev));
        assert_eq!(&fed.out[..], b"data: [DONE]\r\n\r\n");
        assert_eq!(s.usage.unwrap().prompt_tokens, 9);
    }
}
