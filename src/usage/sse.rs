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

/// Largest event kept whole for inspection. A bigger event is relayed untouched as it arrives
/// (never stripped, no usage read from it; its first `MAX_EVENT` bytes still tell whether it
/// carried content), so a provider cannot make the gateway buffer without bound.
pub const MAX_EVENT: usize = 8 << 20;

/// Largest amount of streamed text kept to estimate completion tokens when no usage arrives.
const MAX_TEXT: usize = 4 << 20;

#[derive(Debug, Default)]
pub struct SseScanner {
    /// Drop usage-only chunks (`"choices":[]` with usage) instead of forwarding them.
    strip_usage_chunk: bool,
    /// Bytes of the current, incomplete event that earlier chunks carried. When stripping they
    /// are held back (not yet relayed); otherwise they were relayed and this is a copy.
    event: BytesMut,
    /// Bytes of the current line so far (0: the next terminator ends the event).
    line_len: usize,
    /// The last byte seen ended a line with `\r`: a `\n` right after it belongs to it.
    after_cr: bool,
    /// The current event outgrew `MAX_EVENT`: relayed as it comes, not kept.
    oversized: bool,
    /// The last read ended with the `\r` that closed an event (`Some(dropped)`): a `\n`
    /// starting the next read is the rest of that event's blank line, relayed or dropped with it.
    cr_event_end: Option<bool>,
    /// Usage reported by the provider, the last one seen.
    pub usage: Option<Usage>,
    /// Content events seen.
    pub content_events: u64,
    /// Generated text relayed (JSON-escaped, as in the events), for an estimate of completion
    /// tokens when the provider reports no usage; capped at `MAX_TEXT`.
    text: Vec<u8>,
    /// Bytes of generated text beyond `MAX_TEXT`.
    text_overflow: u64,
    /// `data: [DONE]` seen.
    pub done: bool,
    /// Bytes examined (for the linear-time property test).
    #[cfg(test)]
    examined: u64,
}

impl SseScanner {
    pub fn new(strip_usage_chunk: bool) -> Self {
        Self {
            strip_usage_chunk,
            ..Default::default()
        }
    }

    /// Feeds one upstream chunk; every byte is looked at a bounded number of times.
    pub fn feed(&mut self, chunk: Bytes) -> Fed {
        let had_content = self.content_events > 0;
        let strip = self.strip_usage_chunk;
        // Stripping: what goes out is `out` followed by `chunk[kept_from..]` up to where the
        // held tail starts; `copied` says whether `out` had to be used at all.
        let mut out = BytesMut::new();
        let mut copied = false;
        let mut kept_from = 0;
        let mut ev_start = 0; // start in `chunk` of the current event's bytes
        let mut at = 0;
        let cr_event_end = self.cr_event_end.take();
        #[cfg(test)]
        {
            self.examined += chunk.len() as u64;
        }
        while at < chunk.len() {
            let Some(j) = memchr::memchr2(b'\r', b'\n', &chunk[at..]) else {
                self.line_len += chunk.len() - at;
                break;
            };
            let pos = at + j;
            if chunk[pos] == b'\n' && self.after_cr && j == 0 {
                // The `\n` of a `\r\n` whose `\r` ended the previous read.
                self.after_cr = false;
                at = pos + 1;
                if let (Some(dropped), 0) = (cr_event_end, pos) {
                    ev_start = 1;
                    if dropped {
                        kept_from = 1;
                        copied = strip;
                    }
                }
                continue;
            }
            self.line_len += j;
            self.after_cr = chunk[pos] == b'\r';
            let mut end = pos + 1;
            if self.after_cr && chunk.get(end) == Some(&b'\n') {
                self.after_cr = false;
                end += 1;
            }
            at = end;
            if self.line_len > 0 {
                self.line_len = 0;
                continue;
            }
            // A blank line: the event ends at `end`.
            let held = !self.event.is_empty() && !self.oversized;
            let keep = self.complete(&chunk[ev_start..end]);
            if strip && !keep {
                // Dropped, with whatever of it was held.
                out.extend_from_slice(&chunk[kept_from..ev_start]);
                copied = true;
                kept_from = end;
            } else if strip && held {
                // Held bytes of the first event go out before the chunk's own.
                out.extend_from_slice(&self.event);
                copied = true;
            }
            if self.after_cr && end == chunk.len() {
                self.cr_event_end = Some(strip && !keep);
            }
            self.event.clear();
            self.oversized = false;
            ev_start = end;
        }
        let first_content = |s: &Self| !had_content && s.content_events > 0;
        if !strip {
            self.hold(&chunk[ev_start..]);
            let first_content = first_content(self);
            return Fed {
                out: chunk,
                first_content,
            };
        }
        if self.oversized {
            // An oversized event that began earlier and did not end here: relayed as it comes.
            let first_content = first_content(self);
            return Fed {
                out: chunk,
                first_content,
            };
        }
        let out = match self.hold(&chunk[ev_start..]) {
            None if !copied => chunk.slice(..ev_start),
            None => {
                out.extend_from_slice(&chunk[kept_from..ev_start]);
                out.freeze()
            }
            Some(now) => {
                out.extend_from_slice(&chunk[kept_from..ev_start]);
                out.extend_from_slice(&now);
                out.freeze()
            }
        };
        Fed {
            out,
            first_content: first_content(self),
        }
    }

    /// Keeps the incomplete tail of the current event, up to `MAX_EVENT`. When the event
    /// outgrows that, it becomes oversized: its first `MAX_EVENT` bytes are inspected for
    /// content, and when stripping, everything held so far is returned to be relayed now.
    fn hold(&mut self, tail: &[u8]) -> Option<BytesMut> {
        if self.oversized || tail.is_empty() {
            return None;
        }
        #[cfg(test)]
        {
            self.examined += tail.len() as u64;
        }
        if self.event.len() + tail.len() <= MAX_EVENT {
            self.event.extend_from_slice(tail);
            return None;
        }
        let mut all = std::mem::take(&mut self.event);
        all.extend_from_slice(tail);
        if has_content(&all[..MAX_EVENT]) {
            self.content_events += 1;
        }
        self.oversized = true;
        self.strip_usage_chunk.then_some(all)
    }

    /// One event is complete (`rest` is its part in the current chunk, after any held bytes);
    /// returns whether the client gets it.
    fn complete(&mut self, rest: &[u8]) -> bool {
        if self.oversized {
            return true;
        }
        if self.event.is_empty() {
            return self.inspect_event(rest);
        }
        let held = self.event.len();
        let mut ev = std::mem::take(&mut self.event);
        ev.extend_from_slice(rest);
        let keep = self.inspect_event(&ev);
        ev.truncate(held);
        self.event = ev; // the held part, for `feed` to relay
        keep
    }

    /// The stream ended: an incomplete event left over is inspected, and when it was held back
    /// (stripping mode) it goes to the client as is. Bytes already relayed are never returned.
    pub fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.event);
        self.line_len = 0;
        if rest.is_empty() || self.oversized {
            return Bytes::new();
        }
        let keep = self.inspect_event(&rest);
        if self.strip_usage_chunk && keep {
            rest.freeze()
        } else {
            Bytes::new()
        }
    }

    /// Generated text seen so far (JSON string contents, unescaped), and how many bytes of it
    /// did not fit the buffer.
    pub fn text(&self) -> (String, u64) {
        let mut quoted = Vec::with_capacity(self.text.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(&self.text);
        quoted.push(b'"');
        let s = serde_json::from_slice::<String>(&quoted)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.text).into_owned());
        (s, self.text_overflow)
    }

    /// Looks at one event; returns whether the client should get it.
    fn inspect_event(&mut self, event: &[u8]) -> bool {
        #[cfg(test)]
        {
            self.examined += event.len() as u64;
        }
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
        let (text, overflow) = (&mut self.text, &mut self.text_overflow);
        let content = scan_content(data, |piece| {
            if piece.len() <= MAX_TEXT.saturating_sub(text.len()) {
                text.extend_from_slice(piece);
            } else {
                *overflow += piece.len() as u64;
            }
        });
        if content {
            self.content_events += 1;
        }
        true
    }
}

/// Length of a JSON string's contents up to its closing quote (escapes skipped).
fn string_end(v: &[u8]) -> usize {
    let mut i = 0;
    while let Some(j) = memchr::memchr2(b'"', b'\\', &v[i..]) {
        if v[i + j] == b'"' {
            return i + j;
        }
        i += j + 2;
        if i >= v.len() {
            return v.len();
        }
    }
    v.len()
}

/// The lines of an event, split at `\r\n`, `\r` or `\n`.
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(event);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr2(b'\r', b'\n', r) {
            Some(i) => {
                let skip = if r[i] == b'\r' && r.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = Some(&r[i + skip..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// The event's `data` (several `data:` lines joined by `\n`), if any.
fn event_data(event: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    let mut single: Option<&[u8]> = None;
    let mut joined: Option<Vec<u8>> = None;
    for line in lines(event) {
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

/// Keys whose non-empty string value is generated output (text, content, a Responses delta,
/// reasoning, tool arguments); searchers built once.
static CONTENT_KEYS: std::sync::LazyLock<[memmem::Finder<'static>; 5]> =
    std::sync::LazyLock::new(|| {
        [
            b"\"content\":\"".as_slice(),
            b"\"text\":\"",
            b"\"delta\":\"",
            b"\"reasoning_content\":\"",
            b"\"arguments\":\"",
        ]
        .map(memmem::Finder::new)
    });

static TOOL_CALLS: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"tool_calls\":[{"));

/// Whether a chunk carries generated output; hands each piece of generated text (JSON-escaped)
/// to `text`. One search per key.
fn scan_content(data: &[u8], mut text: impl FnMut(&[u8])) -> bool {
    let mut content = false;
    for f in CONTENT_KEYS.iter() {
        let Some(i) = f.find(data) else { continue };
        let v = &data[i + f.needle().len()..];
        if v.first().is_some_and(|&b| b != b'"') {
            content = true;
            text(&v[..string_end(v)]);
        }
    }
    content || TOOL_CALLS.find(data).is_some()
}

fn has_content(data: &[u8]) -> bool {
    scan_content(data, |_| {})
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

    #[test]
    fn passthrough_never_repeats_an_unterminated_last_event() {
        // Responses-API streams end without a blank line after the last event.
        for strip in [false, true] {
            let mut s = SseScanner::new(strip);
            let mut out = Vec::new();
            out.extend_from_slice(&s.feed(Bytes::from_static(C2.as_bytes())).out);
            out.extend_from_slice(&s.feed(Bytes::from_static(b"data: [DONE]\n")).out);
            out.extend_from_slice(&s.finish());
            assert_eq!(
                out,
                [C2, "data: [DONE]\n"].concat().as_bytes(),
                "strip {strip}"
            );
            assert!(s.done);
        }
    }

    #[test]
    fn cr_only_and_mixed_terminators_end_events() {
        let mut s = SseScanner::new(true);
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\r\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\r\rdata: [DONE]\r\r";
        let fed = s.feed(Bytes::from(stream));
        assert_eq!(
            &fed.out[..],
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\r\ndata: [DONE]\r\r"
        );
        assert!(s.finish().is_empty());
        assert_eq!(s.usage.unwrap().prompt_tokens, 3);
        assert_eq!(s.content_events, 1);
    }

    #[test]
    fn oversized_events_are_relayed_not_held() {
        for strip in [false, true] {
            let mut s = SseScanner::new(strip);
            let big = vec![b'x'; MAX_EVENT / 4];
            let mut out = Vec::new();
            let head: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"";
            out.extend_from_slice(&s.feed(Bytes::from_static(head)).out);
            for _ in 0..6 {
                out.extend_from_slice(&s.feed(Bytes::from(big.clone())).out);
                assert!(s.event.len() <= MAX_EVENT);
            }
            out.extend_from_slice(&s.feed(Bytes::from_static(b"\"}}]}\n\n")).out);
            out.extend_from_slice(&s.feed(Bytes::from_static(DONE.as_bytes())).out);
            out.extend_from_slice(&s.finish());
            let want = head.len() + 6 * big.len() + 7 + DONE.len();
            assert_eq!(out.len(), want, "strip {strip}");
            assert_eq!(s.content_events, 1);
            assert!(s.done);
        }
    }

    #[test]
    fn streamed_text_is_collected_for_estimates() {
        let (_, s, _) = run(true, 7);
        assert_eq!(s.text().0, "HiHi");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Ev {
            Content(String),
            Role,
            UsageOnly(u64, u64),
            Comment,
            Done,
        }

        fn ev() -> impl Strategy<Value = Ev> {
            prop_oneof![
                "[a-z \\\\\"]{0,12}".prop_map(Ev::Content),
                Just(Ev::Role),
                (0u64..1000, 0u64..1000).prop_map(|(p, c)| Ev::UsageOnly(p, c)),
                Just(Ev::Comment),
                Just(Ev::Done),
            ]
        }

        fn render(e: &Ev, nl: &str) -> String {
            let body = match e {
                Ev::Content(t) => {
                    let t = serde_json::to_string(t).unwrap();
                    format!("data: {{\"choices\":[{{\"delta\":{{\"content\":{t}}}}}],\"usage\":null}}")
                }
                Ev::Role => "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}".into(),
                Ev::UsageOnly(p, c) => format!(
                    "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}}}"
                ),
                Ev::Comment => ": keep-alive".into(),
                Ev::Done => "data: [DONE]".into(),
            };
            format!("{body}{nl}{nl}")
        }

        fn feed_all(strip: bool, input: &[u8], cuts: &[usize]) -> (Vec<u8>, SseScanner) {
            let mut s = SseScanner::new(strip);
            let mut out = Vec::new();
            let mut at = 0;
            for &c in cuts.iter().chain(std::iter::once(&input.len())) {
                let c = c.clamp(at, input.len());
                out.extend_from_slice(&s.feed(Bytes::copy_from_slice(&input[at..c])).out);
                at = c;
            }
            out.extend_from_slice(&s.finish());
            (out, s)
        }

        proptest! {
            // Failing seeds are kept next to this file (the repository's top level holds only
            // what the layout names).
            #![proptest_config(ProptestConfig {
                failure_persistence: Some(Box::new(
                    proptest::test_runner::FileFailurePersistence::SourceParallel("proptest-regressions"),
                )),
                ..ProptestConfig::default()
            })]
            #[test]
            fn any_split_gives_the_same_bytes_events_and_usage(
                events in proptest::collection::vec(ev(), 0..12),
                nl in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
                unterminated in any::<bool>(),
                mut cuts in proptest::collection::vec(0usize..2000, 0..20),
                strip in any::<bool>(),
            ) {
                let mut input = String::new();
                let mut expected = String::new();
                let mut usage = None;
                let mut contents = 0;
                for e in &events {
                    let r = render(e, nl);
                    input.push_str(&r);
                    match e {
                        Ev::UsageOnly(p, c) => {
                            usage = Some((*p, *c));
                            if !strip { expected.push_str(&r); }
                        }
                        Ev::Content(t) => {
                            if !t.is_empty() { contents += 1; }
                            expected.push_str(&r);
                        }
                        _ => expected.push_str(&r),
                    }
                }
                if unterminated && !input.is_empty() {
                    // The last event lacks its blank line (and it is never the stripped kind).
                    let drop = nl.len();
                    if !matches!(events.last(), Some(Ev::UsageOnly(..))) {
                        input.truncate(input.len() - drop);
                        expected.truncate(expected.len() - drop);
                    }
                }
                cuts.sort_unstable();
                let (out, s) = feed_all(strip, input.as_bytes(), &cuts);
                prop_assert_eq!(String::from_utf8(out).unwrap(), expected);
                prop_assert_eq!(s.usage.map(|u| (u.prompt_tokens, u.completion_tokens)), usage);
                prop_assert_eq!(s.content_events, contents);
                // Work is linear: each byte is scanned once, held once and inspected once.
                prop_assert!(s.examined <= 3 * input.len() as u64 + 16);
            }
        }

        #[test]
        fn one_huge_event_without_newline_is_linear() {
            let n = 256 << 10;
            let mut input = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
            input.resize(n, b'a');
            for piece in [1usize, 17, 4096] {
                let cuts: Vec<usize> = (piece..n).step_by(piece).collect();
                for strip in [false, true] {
                    let (out, s) = feed_all(strip, &input, &cuts);
                    assert_eq!(out.len(), n);
                    assert!(
                        s.examined <= 3 * n as u64,
                        "{piece} {strip}: {}",
                        s.examined
                    );
                }
            }
        }

        #[test]
        fn nested_usage_in_one_event_is_linear() {
            let mut input = b"data: {".to_vec();
            while input.len() < 512 << 10 {
                input.extend_from_slice(br#""usage":{"x":"#);
            }
            input.extend_from_slice(b"\n\n");
            let started = std::time::Instant::now();
            let (out, s) = feed_all(true, &input, &[1000, 100_000]);
            assert_eq!(out.len(), input.len());
            assert!(s.usage.is_none());
            assert!(s.examined <= 3 * input.len() as u64);
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
    }
}
