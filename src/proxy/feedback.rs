//! Parsing a feedback call into a row: the caller's org, key and user are attached (the report
//! only joins feedback to usage rows of the same org).

use super::context::Ctx;
use crate::error::GatewayError;
use crate::warehouse::rows::FeedbackRow;

fn bad(param: &'static str, message: &str) -> GatewayError {
    GatewayError::InvalidField {
        param,
        message: message.into(),
    }
}

pub fn parse(body: &[u8], ctx: &Ctx) -> Result<FeedbackRow, GatewayError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    let request_id = v["request_id"]
        .as_str()
        .filter(|r| r.starts_with("req_") && r.len() <= 64)
        .ok_or_else(|| {
            bad(
                "request_id",
                "request_id must be a gateway request id (req_…)",
            )
        })?;
    let score = v["score"]
        .as_f64()
        .filter(|s| s.is_finite())
        .ok_or_else(|| bad("score", "score must be a finite number"))?;
    let comment = match &v["comment"] {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(c) if c.len() <= 2000 => c.clone(),
        _ => {
            return Err(bad(
                "comment",
                "comment must be a string of at most 2000 bytes",
            ))
        }
    };
    let r = &ctx.record;
    let now = crate::time::now_unix_ms();
    Ok(FeedbackRow {
        ts: (now / 1000) as u32,
        ts_ms: now,
        feedback_id: format!("fb_{:024x}", rand::random::<u128>() & ((1u128 << 96) - 1)),
        batch_id: String::new(),
        request_id: request_id.to_string(),
        score,
        comment,
        org: r.org.as_deref().unwrap_or_default().to_string(),
        key_id: r.key_id.as_deref().unwrap_or_default().to_string(),
        user: r.user.as_deref().unwrap_or_default().to_string(),
    })
}
