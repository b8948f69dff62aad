//! Allocations: a key's, project's or team's spend shared across cost centers by percentage
//! (`[[orgs.<org>.allocations]]`), and the exact split chargeback makes of it.
//!
//! Shares are basis points (percentages with at most two decimals) summing to exactly 100%.
//! An amount is split by floor division per share; what the floors leave over (less than one
//! nano-dollar per share) goes to the *first* share — the largest, ties by cost center id — so
//! the parts always sum to the amount, to the nano-dollar, the same way every time. The SQL of
//! the chargeback dashboard and API computes exactly this (see `warehouse::chargeback`).
//!
//! A row matching several allocations follows the most specific: its key's, else its
//! project's, else its team's; a row matching none stays with its own cost center.

use std::collections::BTreeMap;

/// What an allocation shares out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceKind {
    Key,
    Project,
    Team,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Key => "key",
            SourceKind::Project => "project",
            SourceKind::Team => "team",
        }
    }
}

/// One allocation of an org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub kind: SourceKind,
    pub id: String,
    /// (cost center, basis points), largest first, ties by cost center: the first takes the
    /// remainder.
    pub shares: Vec<(String, u32)>,
}

impl Allocation {
    /// `kind:id`, as the source is named in config and in the `allocations` table.
    pub fn source(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }
}

/// Basis points of a percentage given as a TOML number (at most two decimals).
fn basis_points(v: &toml::Value) -> Option<u32> {
    let bp = match v {
        toml::Value::Integer(i) => i.checked_mul(100)?,
        toml::Value::Float(f) => {
            let scaled = (f * 100.0).round();
            // 33.333 is not a whole number of basis points.
            if (f * 100.0 - scaled).abs() > 1e-6 {
                return None;
            }
            scaled as i64
        }
        _ => return None,
    };
    u32::try_from(bp).ok().filter(|b| *b > 0 && *b <= 10_000)
}

/// Validates one `[[orgs.<org>.allocations]]` entry: `source = "key:<id>" | "project:<name>"
/// | "team:<id>"`, `split = { <cost center> = <percent>, … }` over cost centers of the org,
/// summing to 100.
pub fn parse(
    source: &str,
    split: &BTreeMap<String, toml::Value>,
    teams: &dyn Fn(&str) -> bool,
    cost_centers: &dyn Fn(&str) -> bool,
) -> Result<Allocation, (&'static str, String)> {
    let (kind, id) = match source.split_once(':') {
        Some(("key", id)) => (SourceKind::Key, id),
        Some(("project", id)) => (SourceKind::Project, id),
        Some(("team", id)) => (SourceKind::Team, id),
        _ => {
            return Err((
                "source",
                format!("`{source}` is not key:<id>, project:<name> or team:<id>"),
            ))
        }
    };
    if id.is_empty() {
        return Err(("source", format!("`{source}` names nothing")));
    }
    if kind == SourceKind::Team && !teams(id) {
        return Err(("source", format!("unknown team `{id}`")));
    }
    if split.is_empty() {
        return Err(("split", "names no cost center".into()));
    }
    let mut shares = Vec::new();
    for (cc, pct) in split {
        if !cost_centers(cc) {
            return Err(("split", format!("unknown cost center `{cc}`")));
        }
        let Some(bp) = basis_points(pct) else {
            return Err((
                "split",
                format!("`{cc}`: a percentage above 0, at most 100, with at most two decimals"),
            ));
        };
        shares.push((cc.clone(), bp));
    }
    let total: u32 = shares.iter().map(|(_, b)| b).sum();
    if total != 10_000 {
        return Err((
            "split",
            format!(
                "percentages sum to {}.{:02}, not 100",
                total / 100,
                total % 100
            ),
        ));
    }
    shares.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(Allocation {
        kind,
        id: id.to_string(),
        shares,
    })
}

/// `amount` (nano-USD) split by `shares` (basis points summing to 10,000): floors, with the
/// remainder on the first share. Exact for every `i64` (no intermediate overflow).
pub fn split(amount: i64, shares: &[(String, u32)]) -> Vec<i64> {
    // Truncating division, as ClickHouse's intDiv and % do: the SQL gives the same parts.
    let (q, r) = (amount / 10_000, amount % 10_000);
    let mut parts: Vec<i64> = shares
        .iter()
        .map(|(_, bp)| q * i64::from(*bp) + r * i64::from(*bp) / 10_000)
        .collect();
    let rest = amount - parts.iter().sum::<i64>();
    if let Some(first) = parts.first_mut() {
        *first += rest;
    }
    parts
}

/// The allocation a row of `key`, `project` and `team` follows, if any (most specific first).
pub fn applicable<'a>(
    allocations: &'a [Allocation],
    key: &str,
    project: &str,
    team: &str,
) -> Option<&'a Allocation> {
    [
        (SourceKind::Key, key),
        (SourceKind::Project, project),
        (SourceKind::Team, team),
    ]
    .into_iter()
    .filter(|(_, id)| !id.is_empty())
    .find_map(|(kind, id)| allocations.iter().find(|a| a.kind == kind && a.id == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_of(pairs: &[(&str, toml::Value)]) -> BTreeMap<String, toml::Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn yes(_: &str) -> bool {
        true
    }

    #[test]
    fn parses_and_orders_shares() {
        let a = parse(
            "project:apollo",
            &split_of(&[
                ("ops", toml::Value::Integer(40)),
                ("eng", toml::Value::Integer(60)),
            ]),
            &yes,
            &yes,
        )
        .unwrap();
        assert_eq!(a.source(), "project:apollo");
        assert_eq!(a.shares, vec![("eng".into(), 6000), ("ops".into(), 4000)]);
        let thirds = parse(
            "key:k1",
            &split_of(&[
                ("a", toml::Value::Float(33.33)),
                ("b", toml::Value::Float(33.33)),
                ("c", toml::Value::Float(33.34)),
            ]),
            &yes,
            &yes,
        )
        .unwrap();
        assert_eq!(thirds.shares[0], ("c".into(), 3334));
        for (source, split, field) in [
            (
                "user:x",
                split_of(&[("a", toml::Value::Integer(100))]),
                "source",
            ),
            (
                "key:",
                split_of(&[("a", toml::Value::Integer(100))]),
                "source",
            ),
            (
                "key:k",
                split_of(&[("a", toml::Value::Integer(90))]),
                "split",
            ),
            (
                "key:k",
                split_of(&[("a", toml::Value::Float(33.333))]),
                "split",
            ),
            (
                "key:k",
                split_of(&[("a", toml::Value::Integer(0))]),
                "split",
            ),
            ("key:k", split_of(&[]), "split"),
        ] {
            assert_eq!(
                parse(source, &split, &yes, &yes).unwrap_err().0,
                field,
                "{source}"
            );
        }
        let no = |_: &str| false;
        assert!(parse(
            "team:t",
            &split_of(&[("a", toml::Value::Integer(100))]),
            &no,
            &yes
        )
        .is_err());
        assert!(parse(
            "key:k",
            &split_of(&[("a", toml::Value::Integer(100))]),
            &yes,
            &no
        )
        .is_err());
    }

    #[test]
    fn splits_are_exact_for_every_amount() {
        let shares: Vec<(String, u32)> =
            vec![("c".into(), 3334), ("a".into(), 3333), ("b".into(), 3333)];
        for amount in [
            0,
            1,
            2,
            9_999,
            10_001,
            1_000_000_007,
            -7,
            i64::MAX,
            i64::MIN + 1,
        ] {
            let parts = split(amount, &shares);
            assert_eq!(
                parts.iter().map(|p| *p as i128).sum::<i128>(),
                amount as i128,
                "{amount}"
            );
        }
        // The remainder goes to the first share, and only it.
        assert_eq!(split(10, &shares), vec![4, 3, 3]);
        assert_eq!(
            split(100, &[("x".into(), 6000), ("y".into(), 4000)]),
            vec![60, 40]
        );
    }

    #[test]
    fn the_most_specific_allocation_applies() {
        let mk = |kind, id: &str| Allocation {
            kind,
            id: id.into(),
            shares: vec![("x".into(), 10_000)],
        };
        let all = vec![
            mk(SourceKind::Team, "t"),
            mk(SourceKind::Project, "p"),
            mk(SourceKind::Key, "k"),
        ];
        assert_eq!(
            applicable(&all, "k", "p", "t").unwrap().kind,
            SourceKind::Key
        );
        assert_eq!(
            applicable(&all, "k2", "p", "t").unwrap().kind,
            SourceKind::Project
        );
        assert_eq!(
            applicable(&all, "k2", "", "t").unwrap().kind,
            SourceKind::Team
        );
        assert!(applicable(&all, "k2", "", "").is_none());
    }
}
