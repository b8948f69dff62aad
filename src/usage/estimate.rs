//! Token counts for records whose provider reported none (a client that went away, an upstream
//! that dropped, a stream without usage). A provider bills the prompt it received whatever
//! happened after, so the record counts it: with the model's real tokenizer (OpenAI's BPE
//! encodings through `tiktoken-rs`), and completion tokens from the text actually relayed.
//!
//! Encodings are chosen from the provider model name (`gpt-4o*`, `o1`…`o4`, `gpt-4.1`, `gpt-5`:
//! o200k_base; `gpt-4`, `gpt-3.5`: cl100k_base). Models tiktoken does not know (Llama, Mistral,
//! Qwen behind vLLM or Ollama) are counted with o200k_base: within ~10-15% of their own
//! tokenizers on English text, far closer than the zero the record would otherwise carry.
//!
//! An encoding costs ~35 MB of memory and a quarter second to load, so it is loaded on a thread of its own
//! when the first estimate needs it (or at start with `[usage] tokenizer_preload`); until then,
//! and for text beyond `MAX_TOKENIZED` bytes, the estimate is one token per 4 bytes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

/// Text beyond this is not tokenized (bytes / 4 instead): the estimate runs on the request's
/// worker, and a client must not buy seconds of CPU by disconnecting from huge prompts.
const MAX_TOKENIZED: usize = 256 << 10;

/// Overhead per chat message and for priming the reply (OpenAI's counting recipe).
const PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;

/// The encodings used: o200k_base and cl100k_base.
#[derive(Clone, Copy)]
enum Encoding {
    O200k = 0,
    Cl100k = 1,
}

impl Encoding {
    fn of(model: &str) -> Self {
        match get_tokenizer(model) {
            Some(Tokenizer::Cl100kBase) => Encoding::Cl100k,
            _ => Encoding::O200k,
        }
    }

    fn load(self) -> &'static CoreBPE {
        match self {
            Encoding::O200k => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100k => tiktoken_rs::cl100k_base_singleton(),
        }
    }
}

static LOADED: [OnceLock<&'static CoreBPE>; 2] = [OnceLock::new(), OnceLock::new()];
static LOADING: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// Starts loading `e` on a thread of its own, once.
fn start_loading(e: Encoding) {
    if LOADING[e as usize].swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("tokenizer-load".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let _ = LOADED[e as usize].set(e.load());
            log::info!("tokenizer encoding loaded in {:?}", started.elapsed());
        });
    if let Err(err) = spawned {
        log::warn!("tokenizer load thread: {err}; estimates use bytes / 4");
    }
}

/// Loads both encodings now, off the request path.
pub fn preload() {
    start_loading(Encoding::O200k);
    start_loading(Encoding::Cl100k);
}

/// The encoding for `model` if it is loaded (otherwise it starts loading).
fn bpe(model: &str) -> Option<&'static CoreBPE> {
    let e = Encoding::of(model);
    let loaded = LOADED[e as usize].get().copied();
    if loaded.is_none() {
        start_loading(e);
    }
    loaded
}

fn by_bytes(n: usize) -> u64 {
    (n as u64).div_ceil(4)
}

/// Tokens of `text` (plus `extra_bytes` of text not kept, counted by bytes).
pub fn text_tokens(model: &str, text: &str, extra_bytes: u64) -> u64 {
    let extra = extra_bytes.div_ceil(4);
    match bpe(model) {
        Some(b) if text.len() <= MAX_TOKENIZED => b.encode_ordinary(text).len() as u64 + extra,
        Some(b) => {
            let mut cut = MAX_TOKENIZED;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let head = b.encode_ordinary(&text[..cut]).len() as u64;
            head + by_bytes(text.len() - cut) + extra
        }
        None => by_bytes(text.len()) + extra,
    }
}

/// Prompt tokens of a request body: chat `messages` (string or text parts, names, tool
/// calls), completions `prompt`, embeddings / Responses `input` and `instructions`. A body
/// that is not JSON is counted by bytes.
pub fn prompt_tokens(model: &str, body: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return by_bytes(body.len());
    };
    let mut text = String::new();
    let mut overhead = 0;
    if let Some(msgs) = v.get("messages").and_then(|m| m.as_array()) {
        overhead += REPLY_PRIMING;
        for m in msgs {
            overhead += PER_MESSAGE;
            for k in ["role", "name", "content", "tool_calls", "function_call"] {
                if let Some(x) = m.get(k) {
                    collect(x, &mut text);
                }
            }
        }
    }
    for k in ["prompt", "input", "instructions", "system"] {
        if let Some(x) = v.get(k) {
            collect(x, &mut text);
        }
    }
    overhead + text_tokens(model, &text, 0)
}

/// Completion tokens of a complete JSON answer without usage: the generated text of every
/// choice (chat `message.content` and tool call arguments, completions `text`, Responses
/// `output[].content[].text`); embeddings have none.
pub fn completion_tokens(model: &str, body: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    let mut text = String::new();
    for c in v
        .get("choices")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
    {
        let message = c.get("message");
        let parts = ["content", "tool_calls", "reasoning_content"]
            .iter()
            .filter_map(|k| message.and_then(|m| m.get(*k)));
        for x in parts.chain(c.get("text")) {
            collect(x, &mut text);
        }
    }
    if let Some(x) = v.get("output") {
        collect(x, &mut text);
    }
    if text.is_empty() {
        return 0;
    }
    text_tokens(model, &text, 0)
}

/// Appends every string inside `v` (text parts, tool arguments), separated by newlines.
fn collect(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        serde_json::Value::Object(o) => {
            // Image parts carry URLs or base64 that providers bill by image, not by text.
            if o.get("type").and_then(|t| t.as_str()) == Some("image_url") {
                return;
            }
            o.values().for_each(|x| collect(x, out));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() {
        for e in [Encoding::O200k, Encoding::Cl100k] {
            let _ = LOADED[e as usize].set(e.load());
        }
    }

    #[test]
    fn counts_with_the_real_encoding() {
        ready();
        // "hello world" is two tokens in both encodings.
        assert_eq!(text_tokens("gpt-4o", "hello world", 0), 2);
        assert_eq!(text_tokens("gpt-4", "hello world", 0), 2);
        assert_eq!(text_tokens("llama-3-8b", "hello world", 8), 4);
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hello world"},{"role":"system","content":[{"type":"text","text":"hello"},{"type":"image_url","image_url":{"url":"data:xxxx"}}]}]}"#;
        let n = prompt_tokens("gpt-4o", body);
        // 2 messages x 3 + 3 priming + role and content tokens.
        assert!((12..=20).contains(&n), "{n}");
        assert_eq!(prompt_tokens("gpt-4o", b"\xff not json"), 3);
        let answer =
            br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hello world"}}]}"#;
        // "hello world" and a newline.
        assert!((2..=4).contains(&completion_tokens("gpt-4o", answer)));
        assert_eq!(
            completion_tokens("gpt-4o", br#"{"data":[{"embedding":[0.1]}]}"#),
            0
        );
        let long = "word ".repeat(200_000);
        let n = text_tokens("gpt-4o", &long, 0);
        assert!((180_000..=260_000).contains(&n), "{n}");
    }
}
