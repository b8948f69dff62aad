//! A/B splits: an alias routes to weighted variants, each subject (key, user or the request's
//! `user` field) sticky to one. hash(experiment, subject) → a point in [0, 1) → the variant
//! whose cumulative weight range holds it; variants keep their order, so a weight change moves
//! only the subjects between the old and the new boundaries.

use super::Target;
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The caller's key id (falls back to user, then org).
    Key,
    /// The authenticated user (falls back to key, then org).
    User,
    /// OpenAI's `user` field of the request (falls back to user, key, org).
    EndUser,
}

impl Subject {
    pub fn parse(s: &str) -> Option<Subject> {
        Some(match s {
            "key" => Subject::Key,
            "user" => Subject::User,
            "end_user" => Subject::EndUser,
            _ => return None,
        })
    }
}

/// Per-variant request parameter overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pub temperature: Option<f64>,
    /// `max_tokens` (and `max_completion_tokens`) are lowered to this when higher or absent.
    pub max_tokens_cap: Option<u64>,
}

impl Params {
    pub fn is_empty(&self) -> bool {
        self.temperature.is_none() && self.max_tokens_cap.is_none()
    }

    /// Applies the overrides to a JSON request body; `None` if it is not a JSON object.
    pub fn apply(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let o = v.as_object_mut()?;
        if let Some(t) = self.temperature {
            o.insert("temperature".into(), serde_json::json!(t));
        }
        if let Some(cap) = self.max_tokens_cap {
            let key = if o.contains_key("max_completion_tokens") {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            let cur = o.get(key).and_then(serde_json::Value::as_u64);
            if cur.is_none_or(|c| c > cap) {
                o.insert(key.into(), serde_json::json!(cap));
            }
        }
        serde_json::to_vec(&v).ok()
    }
}

#[derive(Debug, Clone)]
pub struct Variant {
    pub name: Arc<str>,
    pub weight: u32,
    /// Primary target first, then its fallbacks.
    pub targets: Vec<Target>,
    pub params: Params,
}

#[derive(Debug, Clone)]
pub struct Split {
    pub experiment: Arc<str>,
    pub subject: Subject,
    /// Unix seconds; outside [start, end) the alias routes to its default.
    pub start: u64,
    pub end: Option<u64>,
    pub variants: Vec<Variant>,
    total: u64,
}

/// hash(experiment, subject) as a point in [0, 1).
pub fn point(experiment: &str, subject: &str) -> f64 {
    let mut h = Sha256::new();
    h.update((experiment.len() as u64).to_le_bytes());
    h.update(experiment.as_bytes());
    h.update(subject.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    // 53 bits: exactly representable.
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

impl Split {
    pub fn new(
        experiment: &str,
        subject: Subject,
        start: u64,
        end: Option<u64>,
        variants: Vec<Variant>,
    ) -> Self {
        let total = variants.iter().map(|v| u64::from(v.weight)).sum();
        Self {
            experiment: Arc::from(experiment),
            subject,
            start,
            end,
            variants,
            total,
        }
    }

    pub fn active(&self, now: u64) -> bool {
        now >= self.start && self.end.is_none_or(|e| now < e)
    }

    /// The variant of `subject`.
    pub fn assign(&self, subject: &str) -> &Variant {
        let x = point(&self.experiment, subject) * self.total as f64;
        let mut acc = 0.0;
        for v in &self.variants {
            acc += f64::from(v.weight);
            if x < acc {
                return v;
            }
        }
        // Only reachable through rounding at the very top.
        &self.variants[self.variants.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[u32]) -> Split {
        let variants = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Variant {
                name: Arc::from(format!("v{i}")),
                weight: *w,
                targets: Vec::new(),
                params: Params::default(),
            })
            .collect();
        Split::new("exp", Subject::Key, 0, None, variants)
    }

    #[test]
    fn weights_stickiness_and_minimal_movement() {
        let a = split(&[50, 50]);
        let b = split(&[60, 40]);
        let n = 20_000;
        let (mut first, mut moved) = (0, 0);
        for i in 0..n {
            let s = format!("subject-{i}");
            let va = a.assign(&s).name.clone();
            assert_eq!(a.assign(&s).name, va, "sticky");
            if &*va == "v0" {
                first += 1;
            }
            let vb = b.assign(&s).name.clone();
            if va != vb {
                moved += 1;
                assert_eq!((&*va, &*vb), ("v1", "v0"), "only B→A moves");
            }
        }
        let share = f64::from(first) / f64::from(n);
        assert!((share - 0.5).abs() < 0.01, "{share}");
        let moved = f64::from(moved) / f64::from(n);
        assert!((moved - 0.10).abs() < 0.01, "{moved}");
    }

    #[test]
    fn window() {
        let mut s = split(&[1, 1]);
        s.start = 100;
        s.end = Some(200);
        assert!(!s.active(99));
        assert!(s.active(100) && s.active(199));
        assert!(!s.active(200));
    }

    #[test]
    fn params_override() {
        let p = Params {
            temperature: Some(0.2),
            max_tokens_cap: Some(100),
        };
        let out = p
            .apply(br#"{"model":"m","max_tokens":500,"temperature":1}"#)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["temperature"].as_f64(), v["max_tokens"].as_u64()),
            (Some(0.2), Some(100))
        );
        let out = p.apply(br#"{"model":"m","max_tokens":50}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_tokens"], 50);
    }
}
