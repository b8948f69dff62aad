//! The usage record as one JSON line, written field by field: the same bytes as its derived
//! `Serialize` (a test holds them equal), at under half the cost. serde_json escapes every
//! key of a struct byte by byte on each record — 37 keys, most of a 770-byte line — where
//! here each key and its punctuation is one constant copy; a string value with nothing to
//! escape is copied as it is, and any other goes through serde_json's escaping. One line per request makes this the writer thread's main cost.

use super::record::UsageRecord;
use std::io::{self, Write};

/// Writes fields: each call writes the field's constant `,"key":` prefix, then its value.
struct Line<'w, W: Write>(&'w mut W);

impl<W: Write> Line<'_, W> {
    fn raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.0.write_all(b)
    }

    fn null(&mut self, key: &[u8]) -> io::Result<()> {
        self.raw(key)?;
        self.raw(b"null")
    }

    fn str(&mut self, key: &[u8], s: &str) -> io::Result<()> {
        self.raw(key)?;
        // serde_json escapes exactly `"`, `\` and control bytes; most values (ids, names,
        // paths) have none, and checking the whole string at once (no early exit, many bytes
        // per instruction) is cheaper than its byte-by-byte escape loop.
        let plain = s
            .bytes()
            .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
        if plain {
            self.raw(b"\"")?;
            self.raw(s.as_bytes())?;
            return self.raw(b"\"");
        }
        serde_json::to_writer(&mut *self.0, s).map_err(io::Error::from)
    }

    fn opt_str(&mut self, key: &[u8], s: Option<&str>) -> io::Result<()> {
        match s {
            Some(s) => self.str(key, s),
            None => self.null(key),
        }
    }

    fn int(&mut self, key: &[u8], n: impl itoa::Integer) -> io::Result<()> {
        self.raw(key)?;
        self.raw(itoa::Buffer::new().format(n).as_bytes())
    }

    fn opt_int(&mut self, key: &[u8], n: Option<impl itoa::Integer>) -> io::Result<()> {
        match n {
            Some(n) => self.int(key, n),
            None => self.null(key),
        }
    }

    fn bool(&mut self, key: &[u8], b: bool) -> io::Result<()> {
        self.raw(key)?;
        self.raw(if b { b"true" } else { b"false" })
    }

    /// serde_json's float text (`null` when not finite), as the derived form writes it.
    fn float(&mut self, key: &[u8], f: f64) -> io::Result<()> {
        self.raw(key)?;
        serde_json::to_writer(&mut *self.0, &f).map_err(io::Error::from)
    }

    fn opt_float(&mut self, key: &[u8], f: Option<f64>) -> io::Result<()> {
        match f {
            Some(f) => self.float(key, f),
            None => self.null(key),
        }
    }
}

impl crate::jsonl::JsonLine for UsageRecord {
    fn write_line<W: Write>(&self, out: &mut W) -> io::Result<()> {
        write(self, out)
    }
}

/// Writes `r` as one JSON object (no newline).
pub fn write<W: Write>(r: &UsageRecord, out: &mut W) -> io::Result<()> {
    let mut w = Line(out);
    w.int(b"{\"ts_ms\":", r.ts_ms)?;
    w.str(b",\"request_id\":", &r.request_id)?;
    w.str(b",\"endpoint\":", r.endpoint)?;
    w.str(b",\"method\":", &r.method)?;
    w.str(b",\"path\":", &r.path)?;
    w.opt_str(b",\"requested_model\":", r.requested_model.as_deref())?;
    w.opt_str(b",\"provider\":", r.provider.as_deref())?;
    w.opt_str(b",\"provider_model\":", r.provider_model.as_deref())?;
    w.bool(b",\"stream\":", r.stream)?;
    w.int(b",\"status\":", r.status)?;
    w.opt_str(b",\"error_type\":", r.error_type)?;
    w.bool(b",\"cancelled\":", r.cancelled)?;
    w.int(b",\"prompt_tokens\":", r.prompt_tokens)?;
    w.int(b",\"cached_tokens\":", r.cached_tokens)?;
    w.int(b",\"completion_tokens\":", r.completion_tokens)?;
    w.str(b",\"usage_source\":", r.usage_source.label())?;
    w.opt_int(b",\"cost_nanousd\":", r.cost_nanousd)?;
    w.int(b",\"cache_savings_nanousd\":", r.cache_savings_nanousd)?;
    w.float(b",\"latency_ms\":", r.latency_ms)?;
    w.opt_float(b",\"ttft_ms\":", r.ttft_ms)?;
    w.opt_float(b",\"upstream_latency_ms\":", r.upstream_latency_ms)?;
    w.int(b",\"retries\":", r.retries)?;
    w.opt_str(b",\"experiment\":", r.experiment.as_deref())?;
    w.opt_str(b",\"variant\":", r.variant.as_deref())?;
    w.int(b",\"request_bytes\":", r.request_bytes)?;
    w.int(b",\"response_bytes\":", r.response_bytes)?;
    w.opt_str(b",\"client_ip\":", r.client_ip.as_deref())?;
    w.opt_str(b",\"end_user\":", r.end_user.as_deref())?;
    w.opt_str(b",\"org\":", r.org.as_deref())?;
    w.opt_str(b",\"team\":", r.team.as_deref())?;
    w.opt_str(b",\"user\":", r.user.as_deref())?;
    w.opt_str(b",\"key_id\":", r.key_id.as_deref())?;
    w.opt_str(b",\"cost_center\":", r.cost_center.as_deref())?;
    w.opt_str(b",\"department\":", r.department.as_deref())?;
    w.opt_str(b",\"project\":", r.project.as_deref())?;
    w.raw(b",\"tags\":")?;
    serde_json::to_writer(&mut *w.0, &r.tags).map_err(io::Error::from)?;
    w.int(b",\"config_generation\":", r.config_generation)?;
    w.raw(b"}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::record::UsageSource;
    use std::sync::Arc;

    fn derived(r: &UsageRecord) -> String {
        serde_json::to_string(r).unwrap()
    }

    fn ours(r: &UsageRecord) -> String {
        let mut out = Vec::new();
        write(r, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Strings that need every kind of escape, and some that need none.
    const AWKWARD: [&str; 9] = [
        "",
        "plain",
        "quote \" back \\ slash",
        "only a \" quote",
        "only a \\ backslash",
        "only a control byte \u{1f} among forty-odd plain ones",
        "control \u{0} \u{1f} \n\r\t \u{7f}",
        "unicode é 日本 🦀 \u{2028}",
        "</script>",
    ];

    fn record(i: usize) -> UsageRecord {
        let s = |k: usize| AWKWARD[(i + k) % AWKWARD.len()].to_string();
        let a = |k: usize| -> Arc<str> { s(k).into() };
        let some = i.is_multiple_of(2);
        UsageRecord {
            ts_ms: 1_796_278_532_614 + i as u64,
            request_id: s(0),
            endpoint: ["chat_completions", "embeddings", "passthrough"][i % 3],
            method: s(1).into(),
            path: s(2).into(),
            requested_model: some.then(|| s(3)),
            provider: some.then(|| a(4)),
            provider_model: (!some).then(|| s(5)),
            stream: some,
            status: [0, 200, 429, 502][i % 4],
            error_type: (!some).then_some("provider_error"),
            cancelled: !some,
            prompt_tokens: [0, 42, u64::MAX][i % 3],
            cached_tokens: i as u64,
            completion_tokens: 8,
            usage_source: [
                UsageSource::Provider,
                UsageSource::Estimated,
                UsageSource::None,
            ][i % 3],
            cost_nanousd: [None, Some(0), Some(-5), Some(i64::MAX), Some(i64::MIN)][i % 5],
            cache_savings_nanousd: [0, 7, -1][i % 3],
            latency_ms: [0.0, 4.363428, 1e-7, 123456789.5, f64::NAN, f64::INFINITY][i % 6],
            ttft_ms: [None, Some(0.15286799999999998), Some(f64::NEG_INFINITY)][i % 3],
            upstream_latency_ms: [Some(2.5), None][i % 2],
            retries: [0, 3, u32::MAX][i % 3],
            experiment: some.then(|| a(0)),
            variant: some.then(|| a(1)),
            request_bytes: 176,
            response_bytes: i as u64 * 1000,
            client_ip: some.then(|| a(2)),
            end_user: (!some).then(|| s(3)),
            org: some.then(|| a(4)),
            team: (!some).then(|| a(5)),
            user: some.then(|| a(0)),
            key_id: some.then(|| a(1)),
            cost_center: (!some).then(|| a(2)),
            department: some.then(|| s(3)),
            project: (!some).then(|| s(4)),
            tags: (0..i % 4).map(s).collect(),
            config_generation: i as u64,
        }
    }

    #[test]
    fn the_line_is_byte_for_byte_what_the_derived_serialization_writes() {
        for i in 0..60 {
            let r = record(i);
            assert_eq!(ours(&r), derived(&r), "record {i}");
        }
    }
}
