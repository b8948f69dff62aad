//! The process log: env_logger, with every line passed through `redact` first. Our own code
//! never logs credentials, but libraries may quote what they were given (pingora logs the raw
//! bytes of a request it cannot parse, `Authorization` header included), so the last line of
//! defence is at the sink: no credential-shaped text is ever written, whoever logged it.

use regex::Regex;
use std::borrow::Cow;
use std::io::Write;
use std::sync::LazyLock;

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

/// Installs the logger (`RUST_LOG`, default `info`).
pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            let msg = record.args().to_string();
            writeln!(
                buf,
                "[{} {:<5} {}] {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                redact(&msg)
            )
        })
        .init();
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
