//! Token usage from an OpenAI-style JSON object: chat/completions/embeddings
//! (`prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens`) and the
//! Responses API (`input_tokens`, `output_tokens`, `input_tokens_details.cached_tokens`).

use super::Usage;
use memchr::memmem;
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
    #[serde(default)]
    input_tokens_details: Option<Details>,
}

impl From<WireUsage> for Usage {
    fn from(w: WireUsage) -> Self {
        let cached = w
            .prompt_tokens_details
            .or(w.input_tokens_details)
            .and_then(|d| d.cached_tokens);
        // A provider's figures are bounded before anything adds or prices them: no request
        // has billions of tokens, and 2^64-1 would wrap sums and saturate costs.
        let bound = |n: Option<u64>| n.unwrap_or(0).min(super::MAX_TOKENS);
        Usage {
            prompt_tokens: bound(w.prompt_tokens.or(w.input_tokens)),
            completion_tokens: bound(w.completion_tokens.or(w.output_tokens)),
            cached_tokens: bound(cached),
        }
    }
}

#[derive(Deserialize)]
struct TopLevel {
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    response: Option<Box<TopLevel>>,
}

/// Usage of a complete JSON response body (top-level `usage`, or `response.usage` as in the
/// Responses API's final stream event).
pub fn from_body(body: &[u8]) -> Option<Usage> {
    let t: TopLevel = serde_json::from_slice(body).ok()?;
    t.usage
        .or_else(|| t.response.and_then(|r| r.usage))
        .map(Usage::from)
}

/// How many `"usage":{` candidates `from_fragment` tries, from the last one back: each try
/// parses at most the rest of the input, so the work stays linear in its size whatever the
/// input nests or repeats.
const FRAGMENT_TRIES: usize = 4;

/// Usage from the last `"usage":{...}` in `bytes`, for bodies too large to keep whole (usage
/// comes last in OpenAI responses) and for SSE event data.
pub fn from_fragment(bytes: &[u8]) -> Option<Usage> {
    static USAGE: std::sync::LazyLock<memmem::FinderRev<'static>> =
        std::sync::LazyLock::new(|| memmem::FinderRev::new(b"\"usage\""));
    let mut tries = 0;
    for at in USAGE.rfind_iter(bytes) {
        if at > 0 && bytes[at - 1] == b'\\' {
            continue; // inside a string value
        }
        let mut i = at + 7;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) != Some(&b'{') {
            continue;
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes[i..]);
        if let Ok(w) = WireUsage::deserialize(&mut de) {
            return Some(Usage::from(w));
        }
        tries += 1;
        if tries == FRAGMENT_TRIES {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_usage() {
        let b = br#"{"id":"x","choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":99}"}}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        let u = Usage {
            prompt_tokens: 12,
            completion_tokens: 7,
            cached_tokens: 4,
        };
        assert_eq!(from_body(b), Some(u));
        assert_eq!(from_fragment(b), Some(u));
    }

    #[test]
    fn responses_usage() {
        let b = br#"{"type":"response.completed","response":{"id":"r","usage":{"input_tokens":3,"output_tokens":2,"input_tokens_details":{"cached_tokens":1}}}}"#;
        let u = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            cached_tokens: 1,
        };
        assert_eq!(from_body(b), Some(u));
        assert_eq!(from_fragment(b), Some(u));
    }

    #[test]
    fn null_or_missing_usage() {
        assert_eq!(from_body(br#"{"usage":null}"#), None);
        assert_eq!(from_fragment(br#"{"usage":null}"#), None);
        assert_eq!(from_body(b"not json"), None);
    }

    #[test]
    fn nested_usage_is_linear() {
        // 512 KiB of `"usage":{"x":` nesting: each candidate is tried at most a few times.
        let mut b = Vec::new();
        for _ in 0..(512 << 10) / 13 {
            b.extend_from_slice(br#""usage":{"x":"#);
        }
        let started = std::time::Instant::now();
        assert_eq!(from_fragment(&b), None);
        // Generous: the quadratic version took ~27 s; linear takes milliseconds.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn absurd_usage_is_bounded() {
        let b = br#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551615,"prompt_tokens_details":{"cached_tokens":18446744073709551615}}}"#;
        let u = from_body(b).unwrap();
        assert_eq!(u.prompt_tokens, crate::usage::MAX_TOKENS);
        assert_eq!(u.completion_tokens, crate::usage::MAX_TOKENS);
        assert_eq!(from_fragment(b), Some(u));
        // Sums of bounded figures cannot wrap.
        assert!(u.prompt_tokens.checked_add(u.completion_tokens).is_some());
    }
}
