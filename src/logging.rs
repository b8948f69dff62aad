//! The process log, on `tracing` + `tracing-subscriber`: text (default) or one JSON object per
//! line (`[server] log_format = "json"`, or `MB_LOG_FORMAT=json` before the config is read),
//! with `RUST_LOG` filtering. Records from the `log` crate (pingora, most of our modules) are
//! bridged in; request-scoped events carry `request_id` and `trace_id` fields.
//!
//! Every line passes `redact` on its way out. Our own code never logs credentials, but
//! libraries may quote what they were given (pingora logs the raw bytes of a request it cannot
//! parse, `Authorization` header included), so the last line of defence is at the sink: no
//! credential-shaped text is ever written, in any field, whoever logged it.

use regex::Regex;
use std::borrow::Cow;
use std::io::Write;
use std::sync::{LazyLock, OnceLock};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

/// Credential-shaped text, each with what replaces it.
static PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    let re = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("log redaction pattern: {e}"));
    vec![
        // Header values that are credentials, up to the end of the header line as raw or
        // escaped bytes (`\r`, `\n`, `\\r\\n`) or a closing quote.
        (
            re(
                r#"(?i)\b((?:proxy-)?authorization|api-key|x-api-key|cookie|set-cookie)(\s*[:=]\s*)[^\r\n\\"]*"#,
            ),
            "$1$2<redacted>",
        ),
        // Bearer tokens anywhere.
        (re(r"(?i)\b(bearer)\s+[^\s\\\x22]+"), "$1 <redacted>"),
        // Virtual keys: the id stays (it names the key), the secret goes.
        (
            re(r"\b(mbk_[A-Za-z0-9]{12})_[A-Za-z0-9]+"),
            "${1}_<redacted>",
        ),
        // JWTs.
        (
            re(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
            "<redacted-jwt>",
        ),
        // Provider keys in the OpenAI style.
        (re(r"\bsk-[A-Za-z0-9_-]{16,}"), "sk-<redacted>"),
    ]
});

/// `line` without credentials.
pub fn redact(line: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(line);
    for (re, with) in PATTERNS.iter() {
        if let Cow::Owned(s) = re.replace_all(&out, *with) {
            out = Cow::Owned(s);
        }
    }
    out
}

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `2026-12-01T10:00:00.123456Z  INFO target: message key=value`
    #[default]
    Text,
    /// `{"timestamp":…,"level":…,"target":…,"message":…,"request_id":…,"trace_id":…}`
    Json,
}

type Formatter = Box<dyn Layer<Registry> + Send + Sync>;

static FORMAT: OnceLock<reload::Handle<Formatter, Registry>> = OnceLock::new();

fn formatter(format: LogFormat) -> Formatter {
    match format {
        LogFormat::Text => fmt::layer().with_ansi(false).with_writer(Redacting).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(Redacting)
            .boxed(),
    }
}

/// Installs the logger (`RUST_LOG`, default `info`; `MB_LOG_FORMAT` = `text` | `json`).
pub fn init() {
    init_with_default("info");
}

/// `init` with another default level.
pub fn init_with_default(level: &str) {
    let format = match std::env::var("MB_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    let (layer, handle) = reload::Layer::new(formatter(format));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    if tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .try_init()
        .is_ok()
    {
        let _ = FORMAT.set(handle);
    }
}

/// Switches the line format (the config's `log_format`, once it is read).
pub fn set_format(format: LogFormat) {
    if let Some(h) = FORMAT.get() {
        let _ = h.reload(formatter(format));
    }
}

/// Hands the formatter a buffer per event, and writes the event redacted, in one write.
struct Redacting;

struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.0);
        let _ = std::io::stderr().lock().write_all(redact(&text).as_bytes());
    }
}

impl<'a> fmt::MakeWriter<'a> for Redacting {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_survive() {
        let key = "mbk_ABCDEFGHIJKL_0123456789abcdefghij0123456789abcdef";
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let lines = [
            format!(
                r#"buf: "POST /v1/\xff HTTP/1.1\r\nAuthorization: Bearer {key}\r\nHost: x\r\n""#
            ),
            format!("buf: POST /v1/x HTTP/1.1\\r\\nauthorization: Bearer {key}\\r\\n"),
            format!("api-key: {key}\r\n"),
            format!("token {jwt} rejected"),
            format!("Cookie: session={jwt}"),
            "provider key sk-proj-abcdefghijklmnop1234 refused".to_string(),
            format!("bearer {key}"),
        ];
        for l in &lines {
            let r = redact(l);
            for secret in ["0123456789abcdefghij", "c2lnbmF0dXJl", "sk-proj-abcdef"] {
                assert!(!r.contains(secret), "{l} -> {r}");
            }
        }
        assert!(
            redact(&lines[0]).contains("Host: x"),
            "only the credential goes"
        );
        assert_eq!(redact("plain text"), "plain text");
        assert!(matches!(redact("plain text"), Cow::Borrowed(_)));
        // The key id stays visible.
        assert!(redact(&format!("key {key}")).contains("mbk_ABCDEFGHIJKL_<redacted>"));
    }
}
