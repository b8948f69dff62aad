//! How limit state is told to clients: OpenAI's `x-ratelimit-*` headers (so the SDKs' retry
//! logic works), `retry-after`, and a budget warning header.

use super::budget::Level;
use super::spec::Period;
use super::{BudgetCheck, Scope, Status};
use std::time::Duration;

/// OpenAI's duration text: `20ms`, `1s`, `6m0s`, `1h2m3s`.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{}ms", ms.max(1));
    }
    let s = d.as_secs_f64().ceil() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

/// Header pairs for a response.
pub fn pairs(status: &Status, retry_after: Option<Duration>) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(8);
    if let Some(w) = status.requests {
        out.push(("x-ratelimit-limit-requests", w.limit.to_string()));
        out.push(("x-ratelimit-remaining-requests", w.remaining.to_string()));
        out.push(("x-ratelimit-reset-requests", duration_text(w.reset)));
    }
    if let Some(w) = status.tokens {
        out.push(("x-ratelimit-limit-tokens", w.limit.to_string()));
        out.push(("x-ratelimit-remaining-tokens", w.remaining.to_string()));
        out.push(("x-ratelimit-reset-tokens", duration_text(w.reset)));
    }
    if let Some(w) = &status.budget_warning {
        out.push(("x-model-bridge-budget-warning", w.clone()));
    }
    if let Some(r) = retry_after {
        // Whole seconds, rounded up: never invite a retry that is refused again.
        out.push(("retry-after", r.as_secs_f64().ceil().max(1.0).to_string()));
        out.push(("retry-after-ms", r.as_millis().max(1).to_string()));
    }
    out
}

pub fn budget_name(b: &BudgetCheck) -> String {
    match b.scope {
        Scope::Org => format!("org {}", b.org),
        Scope::Team => format!("team {}/{}", b.org, b.id),
        Scope::Key => format!("key {}/{}", b.org, b.id),
        Scope::CostCenter => format!("cost center {}/{}", b.org, b.id),
    }
}

pub fn budget_warning(b: &BudgetCheck, level: Level) -> String {
    format!(
        "{} has used {:.0}% of its {} budget ({} of {} USD)",
        budget_name(b),
        level.fraction * 100.0,
        match b.budget.period {
            Period::Month => "monthly".to_string(),
            Period::Rolling { days } => format!("{days}-day"),
        },
        crate::usage::pricing::format_usd(level.spent),
        crate::usage::pricing::format_usd(b.budget.nano)
    )
}

/// Until the budget can admit again: the next month, or a day for a rolling window.
pub fn until_period_end(p: Period, now: u64) -> Duration {
    match p {
        Period::Month => Duration::from_secs(p.end(now).saturating_sub(now).max(1)),
        Period::Rolling { .. } => Duration::from_secs(86_400 - now % 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_text(Duration::from_millis(20)), "20ms");
        assert_eq!(duration_text(Duration::from_millis(1200)), "2s");
        assert_eq!(duration_text(Duration::from_secs(360)), "6m0s");
        assert_eq!(duration_text(Duration::from_secs(3723)), "1h2m3s");
        let now = 1_795_400_000; // 2026-11-23
        let left = until_period_end(Period::Month, now);
        assert_eq!(crate::time::date(now + left.as_secs()), "2026-12-01");
    }
}
