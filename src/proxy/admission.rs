//! Admission on the request path: estimate what the request may use (tokens and worst-case
//! cost) and ask the limiter; a refusal becomes the 429, an admission travels in the context
//! until `finish` settles it.

use super::context::Ctx;
use crate::error::GatewayError;
use crate::limits::{headers, Request};
use crate::metrics::METRICS;
use crate::routing::rewrite::RequestFields;
use crate::routing::{Endpoint, ModelRoute};
use crate::state::Shared;

pub async fn admit(
    shared: &Shared,
    ctx: &mut Ctx,
    route: &ModelRoute,
    price: Option<crate::usage::pricing::Price>,
    ep: Endpoint,
    fields: &RequestFields,
    body_len: usize,
) -> Result<(), GatewayError> {
    let cfg = &ctx.live.config;
    let completion = if ep == Endpoint::Embeddings {
        0
    } else {
        fields.max_tokens.unwrap_or(cfg.limits.default_max_tokens)
    };
    let (tokens, worst_cost) = crate::limits::worst_case(body_len, completion, price);
    let r = &ctx.record;
    let req = Request {
        org: r.org.as_deref(),
        team: r.team.as_deref(),
        key_id: r.key_id.as_deref(),
        cost_center: r.cost_center.as_deref(),
        alias: &route.alias,
        tokens,
        worst_cost,
        request_id: &r.request_id,
    };
    let live = ctx.live.clone();
    match shared.limiter.admit(&live.config, &req).await {
        Ok(adm) => {
            headers::write(&mut ctx.added_headers, &adm.status, None);
            ctx.admission = Some(adm);
            Ok(())
        }
        Err(refusal) => {
            METRICS
                .rate_limited
                .with_label_values(&[refusal.kind.label(), &refusal.org])
                .inc();
            headers::write(
                &mut ctx.added_headers,
                &refusal.status,
                Some(refusal.retry_after),
            );
            if refusal.kind == crate::limits::Kind::Budget {
                // Retrying cannot help before the period ends; the OpenAI SDKs honour this.
                ctx.added_headers.push("x-should-retry", "false");
            }
            Err(GatewayError::Limited(refusal))
        }
    }
}
