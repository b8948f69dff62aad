//! What limits and budgets say, as config declares them: values per org, team and key (with
//! per-model overrides) and USD budgets per period.

use std::collections::HashMap;
use std::time::Duration;

/// Limit values; `None` means no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LimitValues {
    pub rps: Option<u64>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrent: Option<u64>,
}

impl LimitValues {
    pub fn is_empty(&self) -> bool {
        self.rps.is_none() && self.rpm.is_none() && self.tpm.is_none() && self.concurrent.is_none()
    }
}

/// The limits of one org, team or key: base values and per-alias replacements.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitSet {
    pub base: LimitValues,
    pub models: HashMap<String, LimitValues>,
}

impl LimitSet {
    /// The values for requests to `alias`, and whether they are the alias's own (its own
    /// counters) or the shared base.
    pub fn for_model(&self, alias: &str) -> (LimitValues, bool) {
        match self.models.get(alias) {
            Some(v) => (*v, true),
            None => (self.base, false),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// Calendar month, UTC.
    Month,
    /// The last `days` days.
    Rolling { days: u32 },
}

impl Period {
    pub fn parse(text: &str) -> Option<Period> {
        if text == "month" {
            return Some(Period::Month);
        }
        let days: u32 = text.strip_suffix('d')?.parse().ok()?;
        (1..=366)
            .contains(&days)
            .then_some(Period::Rolling { days })
    }

    /// Start of the period containing `now` (Unix seconds): the month's first second, or
    /// `days` back (whole days, matching the daily rollup).
    pub fn start(&self, now: u64) -> u64 {
        match self {
            Period::Month => {
                let (y, m, _) = crate::time::civil(now);
                crate::time::parse_rfc3339(&format!("{y:04}-{m:02}-01T00:00:00Z")).unwrap_or(0)
            }
            Period::Rolling { days } => {
                (now / 86_400).saturating_sub(u64::from(*days) - 1) * 86_400
            }
        }
    }

    /// When the period containing `now` ends: the next month's first second; never for a
    /// rolling window (it moves with time, and reconciliation keeps it current).
    pub fn end(&self, now: u64) -> u64 {
        match self {
            Period::Month => Period::Month.start(Period::Month.start(now) + 32 * 86_400),
            Period::Rolling { .. } => u64::MAX,
        }
    }

    /// A label naming the current period (`2026-11`, or `30d`): Redis keys and reconciliation
    /// use it so a new month starts from zero.
    pub fn label(&self, now: u64) -> String {
        match self {
            Period::Month => crate::time::date(now)[..7].to_string(),
            Period::Rolling { days } => format!("{days}d"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// The hard limit in nano-USD.
    pub nano: i64,
    pub period: Period,
    /// Warning fractions, ascending.
    pub soft: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    Redis,
}

#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub backend: Backend,
    pub redis_url: Option<String>,
    pub redis_timeout: Duration,
    pub fallback_share: f64,
    pub default_max_tokens: u64,
    pub reconcile_interval: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            backend: Backend::Local,
            redis_url: None,
            redis_timeout: Duration::from_millis(50),
            fallback_share: 1.0,
            default_max_tokens: 4096,
            reconcile_interval: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        let now = 1_795_400_000; // 2026-11-23T…
        assert_eq!(Period::parse("month"), Some(Period::Month));
        assert_eq!(Period::parse("30d"), Some(Period::Rolling { days: 30 }));
        assert_eq!(Period::parse("0d"), None);
        assert_eq!(Period::parse("weekly"), None);
        assert_eq!(crate::time::date(Period::Month.start(now)), "2026-11-01");
        assert_eq!(
            crate::time::date(Period::Rolling { days: 1 }.start(now)),
            crate::time::date(now)
        );
        assert_eq!(Period::Month.label(now), "2026-11");
        assert_eq!(crate::time::date(Period::Month.end(now)), "2026-12-01");
        assert_eq!(Period::Rolling { days: 30 }.end(now), u64::MAX);
    }
}
