//! How limit state is told to clients: OpenAI's `x-ratelimit-*` headers (so the SDKs' retry
//! logic works), `retry-after`, and a budget warning header.

use super::budget::Level;
use super::spec::Period;
use super::{BudgetCheck, Scope, Status};
use crate::header_list::HeaderList;
use std::time::Duration;

/// OpenAI's duration text: `20ms`, `1s`, `6m0s`, `1h2m3s`.
pub fn duration_text(d: Duration) -> String {
    let mut s = String::new();
    write_duration(&mut s, d);
    s
}

/// Appends `d` as OpenAI's duration text (see `duration_text`).
pub fn write_duration(out: &mut String, d: Duration) {
    let ms = d.as_millis();
    let mut num = itoa::Buffer::new();
    if ms < 1000 {
        out.push_str(num.format(ms.max(1)));
        out.push_str("ms");
        return;
    }
    let s = d.as_secs_f64().ceil() as u64;
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        out.push_str(num.format(h));
        out.push('h');
    }
    if h > 0 || m > 0 {
        out.push_str(num.format(m));
        out.push('m');
    }
    out.push_str(num.format(s));
    out.push('s');
}

/// Adds the limit state's headers for a response to `out`.
pub fn write(out: &mut HeaderList, status: &Status, retry_after: Option<Duration>) {
    if let Some(w) = status.requests {
        out.push_int("x-ratelimit-limit-requests", w.limit);
        out.push_int("x-ratelimit-remaining-requests", w.remaining);
        out.push_with("x-ratelimit-reset-requests", |s| write_duration(s, w.reset));
    }
    if let Some(w) = status.tokens {
        out.push_int("x-ratelimit-limit-tokens", w.limit);
        out.push_int("x-ratelimit-remaining-tokens", w.remaining);
        out.push_with("x-ratelimit-reset-tokens", |s| write_duration(s, w.reset));
    }
    if let Some(w) = &status.budget_warning {
        out.push("x-model-bridge-budget-warning", w);
    }
    if let Some(r) = retry_after {
        // Whole seconds, rounded up: never invite a retry that is refused again.
        out.push_int(
            "retry-after",
            r.as_secs()
                .saturating_add(u64::from(r.subsec_nanos() > 0))
                .max(1),
        );
        out.push_int("retry-after-ms", r.as_millis().max(1));
    }
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
    fn limit_state_goes_out_as_openai_headers_with_retry_rounded_up() {
        let w = |limit, remaining, ms| super::super::Window {
            limit,
            remaining,
            reset: Duration::from_millis(ms),
        };
        let status = Status {
            requests: Some(w(100, 0, 1_500)),
            tokens: Some(w(5_000, 4_321, 20)),
            budget_warning: Some("org a has used 80%".into()),
        };
        let mut out = HeaderList::default();
        write(&mut out, &status, Some(Duration::from_millis(1_001)));
        let got: Vec<_> = out.iter().collect();
        assert_eq!(
            got,
            [
                ("x-ratelimit-limit-requests", "100"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "2s"),
                ("x-ratelimit-limit-tokens", "5000"),
                ("x-ratelimit-remaining-tokens", "4321"),
                ("x-ratelimit-reset-tokens", "20ms"),
                ("x-model-bridge-budget-warning", "org a has used 80%"),
                ("retry-after", "2"),
                ("retry-after-ms", "1001"),
            ]
        );
        let mut out = HeaderList::default();
        let none = Status {
            requests: None,
            tokens: None,
            budget_warning: None,
        };
        write(&mut out, &none, Some(Duration::from_secs(3)));
        assert_eq!(
            out.iter().collect::<Vec<_>>(),
            [("retry-after", "3"), ("retry-after-ms", "3000")]
        );
        let mut out = HeaderList::default();
        write(&mut out, &none, Some(Duration::ZERO));
        assert_eq!(
            out.iter().collect::<Vec<_>>(),
            [("retry-after", "1"), ("retry-after-ms", "1")]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration_text(Duration::from_millis(20)), "20ms");
        assert_eq!(duration_text(Duration::from_millis(1200)), "2s");
        assert_eq!(duration_text(Duration::from_secs(360)), "6m0s");
        assert_eq!(duration_text(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(duration_text(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(duration_text(Duration::from_secs(7205)), "2h0m5s");
        assert_eq!(duration_text(Duration::from_secs(59)), "59s");
        assert_eq!(duration_text(Duration::from_millis(59_001)), "1m0s");
        assert_eq!(duration_text(Duration::ZERO), "1ms");
        assert_eq!(duration_text(Duration::from_micros(999_999)), "999ms");
        let now = 1_795_400_000; // 2026-11-23
        let left = until_period_end(Period::Month, now);
        assert_eq!(crate::time::date(now + left.as_secs()), "2026-12-01");
    }
}
