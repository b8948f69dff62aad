//! Reads the few fields routing needs from a JSON request body without building a tree, and
//! rewrites the body by splicing: every byte not changed is forwarded exactly as the client sent it.

use crate::error::GatewayError;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::ops::Range;

/// What routing and accounting need from a request body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestFields {
    pub model: Option<String>,
    model_span: Option<Range<usize>>,
    pub stream: bool,
    /// The client's own `stream_options.include_usage`.
    pub include_usage: bool,
    stream_options_span: Option<Range<usize>>,
    pub max_tokens: Option<u64>,
    /// OpenAI's end-user identifier field.
    pub user: Option<String>,
    /// Offset of the body's closing `}`.
    close: usize,
}

enum Key {
    Model,
    Stream,
    StreamOptions,
    MaxTokens,
    User,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "model" => Key::Model,
                    "stream" => Key::Stream,
                    "stream_options" => Key::StreamOptions,
                    "max_tokens" | "max_completion_tokens" | "max_output_tokens" => Key::MaxTokens,
                    "user" => Key::User,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Default)]
struct Raw<'a> {
    model: Option<&'a RawValue>,
    stream: Option<&'a RawValue>,
    stream_options: Option<&'a RawValue>,
    max_tokens: Option<&'a RawValue>,
    user: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Raw<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Raw<'a>, M::Error> {
                let mut r = Raw::default();
                while let Some(k) = m.next_key::<Key>()? {
                    let slot = match k {
                        Key::Model => &mut r.model,
                        Key::Stream => &mut r.stream,
                        Key::StreamOptions => &mut r.stream_options,
                        Key::MaxTokens => &mut r.max_tokens,
                        Key::User => &mut r.user,
                        Key::Other => {
                            m.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(m.next_value::<&'de RawValue>()?);
                }
                Ok(r)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    // RawValue borrows from `body`, so its address lies inside it.
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    start..start + raw.get().len()
}

fn invalid(param: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::InvalidField {
        param,
        message: message.into(),
    }
}

impl RequestFields {
    /// Parses the routing fields; the whole body must be a valid JSON object.
    pub fn parse(body: &[u8]) -> Result<RequestFields, GatewayError> {
        let raw: Raw = serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                GatewayError::InvalidJson("the body must be a JSON object".into())
            } else {
                GatewayError::InvalidJson(e.to_string())
            }
        })?;
        let close = body
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .filter(|&i| body[i] == b'}')
            .ok_or_else(|| GatewayError::InvalidJson("the body must be a JSON object".into()))?;
        let mut f = RequestFields {
            close,
            ..Default::default()
        };
        if let Some(m) = raw.model {
            let v: Option<String> = serde_json::from_str(m.get())
                .map_err(|_| invalid("model", "`model` must be a string"))?;
            f.model = v;
            f.model_span = Some(span_of(body, m));
        }
        if let Some(s) = raw.stream {
            f.stream = serde_json::from_str::<Option<bool>>(s.get())
                .map_err(|_| invalid("stream", "`stream` must be a boolean"))?
                .unwrap_or(false);
        }
        if let Some(o) = raw.stream_options {
            let opts: Option<StreamOptions> = serde_json::from_str(o.get())
                .map_err(|_| invalid("stream_options", "`stream_options` must be an object"))?;
            f.include_usage = opts.and_then(|o| o.include_usage).unwrap_or(false);
            f.stream_options_span = Some(span_of(body, o));
        }
        if let Some(t) = raw.max_tokens {
            f.max_tokens = serde_json::from_str::<Option<u64>>(t.get())
                .map_err(|_| invalid("max_tokens", "`max_tokens` must be a positive integer"))?;
        }
        if let Some(u) = raw.user {
            f.user = serde_json::from_str::<Option<String>>(u.get())
                .map_err(|_| invalid("user", "`user` must be a string"))?;
        }
        Ok(f)
    }

    /// The body to send upstream: `model` replaced by `provider_model_json` (when it differs)
    /// and, when `force_include_usage`, `stream_options.include_usage` set to true. Returns
    /// `None` when the client's body can be forwarded unchanged.
    pub fn rewrite(
        &self,
        body: &[u8],
        provider_model_json: &[u8],
        force_include_usage: bool,
    ) -> Option<Vec<u8>> {
        let mut edits: Vec<(Range<usize>, std::borrow::Cow<'_, [u8]>)> = Vec::with_capacity(2);
        if let Some(span) = &self.model_span {
            if &body[span.clone()] != provider_model_json {
                edits.push((span.clone(), provider_model_json.into()));
            }
        }
        if force_include_usage && !self.include_usage {
            match &self.stream_options_span {
                Some(span) => {
                    let mut opts: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_slice(&body[span.clone()]).unwrap_or_default();
                    opts.insert("include_usage".into(), serde_json::Value::Bool(true));
                    let v = serde_json::to_vec(&opts).ok()?;
                    edits.push((span.clone(), v.into()));
                }
                None => {
                    let has_members = body[..self.close]
                        .iter()
                        .rposition(|b| !b.is_ascii_whitespace())
                        .is_some_and(|i| body[i] != b'{');
                    let ins: &[u8] = if has_members {
                        b",\"stream_options\":{\"include_usage\":true}"
                    } else {
                        b"\"stream_options\":{\"include_usage\":true}"
                    };
                    edits.push((self.close..self.close, ins.into()));
                }
            }
        }
        if edits.is_empty() {
            return None;
        }
        edits.sort_by_key(|e| e.0.start);
        let extra: usize = edits.iter().map(|e| e.1.len()).sum();
        let mut out = Vec::with_capacity(body.len() + extra);
        let mut at = 0;
        for (span, with) in &edits {
            out.extend_from_slice(&body[at..span.start]);
            out.extend_from_slice(with);
            at = span.end;
        }
        out.extend_from_slice(&body[at..]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn parses_fields() {
        let b = br#"{"model":"a","stream":true,"max_tokens":5,"user":"u1","messages":[{"role":"user","content":"hi \"model\""}]}"#;
        let f = RequestFields::parse(b).unwrap();
        assert_eq!(f.model.as_deref(), Some("a"));
        assert!(f.stream);
        assert!(!f.include_usage);
        assert_eq!(f.max_tokens, Some(5));
        assert_eq!(f.user.as_deref(), Some("u1"));
    }

    #[test]
    fn rewrite_is_a_splice() {
        let b = br#"{ "model" : "alias",  "messages": [ {"role":"user","content":"x"} ] }"#;
        let f = RequestFields::parse(b).unwrap();
        let out = f.rewrite(b, br#""prov-1""#, false).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "model" : "prov-1",  "messages": [ {"role":"user","content":"x"} ] }"#
        );
        assert!(f.rewrite(b, br#""alias""#, false).is_none());
    }

    #[test]
    fn injects_include_usage() {
        let b = br#"{"model":"m","stream":true,"messages":[]}"#;
        let f = RequestFields::parse(b).unwrap();
        let out = f.rewrite(b, br#""m""#, true).unwrap();
        assert_eq!(
            j(std::str::from_utf8(&out).unwrap()),
            j(
                r#"{"model":"m","stream":true,"messages":[],"stream_options":{"include_usage":true}}"#
            )
        );
        let b2 = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#;
        let f2 = RequestFields::parse(b2).unwrap();
        let v = j(std::str::from_utf8(&f2.rewrite(b2, br#""p""#, true).unwrap()).unwrap());
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["x"], 1);
        assert_eq!(v["model"], "p");
        let b3 = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let f3 = RequestFields::parse(b3).unwrap();
        assert!(f3.include_usage);
        assert!(f3.rewrite(b3, br#""m""#, true).is_none());
    }

    #[test]
    fn rejects_bad_bodies() {
        assert!(matches!(
            RequestFields::parse(b"{\"model\":"),
            Err(GatewayError::InvalidJson(_))
        ));
        assert!(matches!(
            RequestFields::parse(b"[1,2]"),
            Err(GatewayError::InvalidJson(_))
        ));
        assert!(matches!(
            RequestFields::parse(br#"{"model":5}"#),
            Err(GatewayError::InvalidField { param: "model", .. })
        ));
        assert!(RequestFields::parse(br#"{"model":"a"} x"#).is_err());
    }

    #[test]
    fn escaped_keys_and_values() {
        let b = br#"{"mod\u0065l":"a\/b","stream":null}"#;
        let f = RequestFields::parse(b).unwrap();
        assert_eq!(f.model.as_deref(), Some("a/b"));
        let out = f.rewrite(b, br#""a/b""#, false).unwrap();
        assert_eq!(&out[..], br#"{"mod\u0065l":"a/b","stream":null}"#);
    }
}
