//! The usage record as one JSON line, written field by field: the same bytes as its derived
//! `Serialize` (a test holds them equal), at under half the cost. serde_json escapes every
//! key of a struct byte by byte on each record — 37 keys, most of a 770-byte line — where
//! here each key and its punctuation is one constant copy; values still go through
//! serde_json's escaping. One line per request makes this the writer thread's main cost.

use super::record::{UsageRecord, UsageSource};
use std::io::{self, Write};

/// Writes one field's value after its constant `,"key":` prefix.
struct Line<'w, W: Write>(&'w mut W);

impl<W: Write> Line<'_, W> {
    fn raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.0.write_all(b)
    }

    fn str(&mut self, s: &str) -> io::Result<()> {
        serde_json::to_writer(&mut *self.0, s).map_err(io::Error::from)
    }

    fn opt_str(&mut self, s: Option<&str>) -> io::Result<()> {
        match s {
            Some(s) => self.str(s),
            None => self.raw(b"null"),
        }
    }

    fn int(&mut self, n: impl itoa::Integer) -> io::Result<()> {
        self.raw(itoa::Buffer::new().format(n).as_bytes())
    }

    fn opt_int(&mut self, n: Option<impl itoa::Integer>) -> io::Result<()> {
        match n {
            Some(n) => self.int(n),
            None => self.raw(b"null"),
        }
    }

    fn bool(&mut self, b: bool) -> io::Result<()> {
        self.raw(if b { b"true" } else { b"false" })
    }

    /// serde_json's float text (`null` when not finite), as the derived form writes it.
    fn float(&mut self, f: f64) -> io::Result<()> {
        serde_json::to_writer(&mut *self.0, &f).map_err(io::Error::from)
    }

    fn opt_float(&mut self, f: Option<f64>) -> io::Result<()> {
        match f {
            Some(f) => self.float(f),
            None => self.raw(b"null"),
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
    w.raw(b"{\"ts_ms\":")?;
    w.int(r.ts_ms)?;
    w.raw(b",\"request_id\":")?;
    w.str(&r.request_id)?;
    w.raw(b",\"endpoint\":")?;
    w.str(r.endpoint)?;
    w.raw(b",\"method\":")?;
    w.str(&r.method)?;
    w.raw(b",\"path\":")?;
    w.str(&r.path)?;
    w.raw(b",\"requested_model\":")?;
    w.opt_str(r.requested_model.as_deref())?;
    w.raw(b",\"provider\":")?;
    w.opt_str(r.provider.as_deref())?;
    w.raw(b",\"provider_model\":")?;
    w.opt_str(r.provider_model.as_deref())?;
    w.raw(b",\"stream\":")?;
    w.bool(r.stream)?;
    w.raw(b",\"status\":")?;
    w.int(r.status)?;
    w.raw(b",\"error_type\":")?;
    w.opt_str(r.error_type)?;
    w.raw(b",\"cancelled\":")?;
    w.bool(r.cancelled)?;
    w.raw(b",\"prompt_tokens\":")?;
    w.int(r.prompt_tokens)?;
    w.raw(b",\"cached_tokens\":")?;
    w.int(r.cached_tokens)?;
    w.raw(b",\"completion_tokens\":")?;
    w.int(r.completion_tokens)?;
    w.raw(b",\"usage_source\":")?;
    w.raw(match r.usage_source {
        UsageSource::Provider => b"\"provider\"",
        UsageSource::Estimated => b"\"estimated\"",
        UsageSource::None => b"\"none\"",
    })?;
    w.raw(b",\"cost_nanousd\":")?;
    w.opt_int(r.cost_nanousd)?;
    w.raw(b",\"cache_savings_nanousd\":")?;
    w.int(r.cache_savings_nanousd)?;
    w.raw(b",\"latency_ms\":")?;
    w.float(r.latency_ms)?;
    w.raw(b",\"ttft_ms\":")?;
    w.opt_float(r.ttft_ms)?;
    w.raw(b",\"upstream_latency_ms\":")?;
    w.opt_float(r.upstream_latency_ms)?;
    w.raw(b",\"retries\":")?;
    w.int(r.retries)?;
    w.raw(b",\"experiment\":")?;
    w.opt_str(r.experiment.as_deref())?;
    w.raw(b",\"variant\":")?;
    w.opt_str(r.variant.as_deref())?;
    w.raw(b",\"request_bytes\":")?;
    w.int(r.request_bytes)?;
    w.raw(b",\"response_bytes\":")?;
    w.int(r.response_bytes)?;
    w.raw(b",\"client_ip\":")?;
    w.opt_str(r.client_ip.as_deref())?;
    w.raw(b",\"end_user\":")?;
    w.opt_str(r.end_user.as_deref())?;
    w.raw(b",\"org\":")?;
    w.opt_str(r.org.as_deref())?;
    w.raw(b",\"team\":")?;
    w.opt_str(r.team.as_deref())?;
    w.raw(b",\"user\":")?;
    w.opt_str(r.user.as_deref())?;
    w.raw(b",\"key_id\":")?;
    w.opt_str(r.key_id.as_deref())?;
    w.raw(b",\"cost_center\":")?;
    w.opt_str(r.cost_center.as_deref())?;
    w.raw(b",\"department\":")?;
    w.opt_str(r.department.as_deref())?;
    w.raw(b",\"project\":")?;
    w.opt_str(r.project.as_deref())?;
    w.raw(b",\"tags\":[")?;
    for (i, t) in r.tags.iter().enumerate() {
        if i > 0 {
            w.raw(b",")?;
        }
        w.str(t)?;
    }
    w.raw(b"],\"config_generation\":")?;
    w.int(r.config_generation)?;
    w.raw(b"}")
}

#[cfg(test)]
mod tests {
    use super::*;
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
    const AWKWARD: [&str; 6] = [
        "",
        "plain",
        "quote \" back \\ slash",
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
            method: s(1),
            path: s(2),
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
