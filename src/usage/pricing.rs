//! Exact pricing: prices are parsed from their decimal text into integer nano-USD per million
//! tokens and a request's cost is integer arithmetic with one final rounding (half up) — never
//! binary floating point on money.

use super::Usage;

/// Nano-USD per one million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub input: i128,
    pub cached_input: i128,
    pub output: i128,
}

/// Parses a non-negative decimal USD amount ("0.15", "2.5", "3") into nano-USD, exactly.
pub fn parse_usd(text: &str) -> Result<i128, String> {
    let t = text.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (!frac.is_empty() && !digits(frac)) {
        return Err(format!("`{text}` is not a non-negative decimal amount"));
    }
    if frac.len() > 9 {
        return Err(format!(
            "`{text}` has more than 9 decimals (nano-USD precision)"
        ));
    }
    let int: i128 = int.parse().map_err(|_| format!("`{text}` is too large"))?;
    let frac_nano: i128 = format!("{frac:0<9}").parse().unwrap_or(0);
    int.checked_mul(1_000_000_000)
        .and_then(|v| v.checked_add(frac_nano))
        .filter(|v| *v < 1_000_000_000_000_000_000)
        .ok_or_else(|| format!("`{text}` is too large"))
}

impl Price {
    /// Cost of `u` in nano-USD: cached prompt tokens at the cached price, the rest of the prompt
    /// at the input price, completion at the output price.
    pub fn cost_nanousd(&self, u: &Usage) -> i64 {
        let cached = u.cached_tokens.min(u.prompt_tokens) as i128;
        let uncached = u.prompt_tokens as i128 - cached;
        let numer = uncached * self.input
            + cached * self.cached_input
            + u.completion_tokens as i128 * self.output;
        let cost = (numer + 500_000) / 1_000_000;
        i64::try_from(cost).unwrap_or(i64::MAX)
    }

    /// What caching saved on `u`: its cost with every prompt token at the uncached price,
    /// minus its cost (each rounded as a bill is, so the two figures add up).
    pub fn cache_savings_nanousd(&self, u: &Usage) -> i64 {
        let uncached = Usage {
            cached_tokens: 0,
            ..*u
        };
        self.cost_nanousd(&uncached) - self.cost_nanousd(u)
    }
}

/// Nano-USD as a decimal USD string, for display.
pub fn format_usd(nano: i64) -> String {
    let sign = if nano < 0 { "-" } else { "" };
    let n = nano.unsigned_abs();
    format!("{sign}{}.{:09}", n / 1_000_000_000, n % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        assert_eq!(parse_usd("0.15"), Ok(150_000_000));
        assert_eq!(parse_usd("2.5"), Ok(2_500_000_000));
        assert_eq!(parse_usd("3"), Ok(3_000_000_000));
        assert_eq!(parse_usd("0.000000001"), Ok(1));
        assert!(parse_usd("0.0000000001").is_err());
        assert!(parse_usd("-1").is_err());
        assert!(parse_usd("1e3").is_err());
        assert!(parse_usd("").is_err());
    }

    #[test]
    fn costs_without_floats() {
        // gpt-4o-mini list prices: 0.15 in, 0.075 cached in, 0.60 out per 1M tokens.
        let p = Price {
            input: parse_usd("0.15").unwrap(),
            cached_input: parse_usd("0.075").unwrap(),
            output: parse_usd("0.60").unwrap(),
        };
        let u = Usage {
            prompt_tokens: 1_000,
            cached_tokens: 400,
            completion_tokens: 250,
        };
        // 600*0.15 + 400*0.075 + 250*0.60 = 90 + 30 + 150 = 270 USD per 1M → 0.00027 USD
        assert_eq!(p.cost_nanousd(&u), 270_000);
        assert_eq!(format_usd(p.cost_nanousd(&u)), "0.000270000");
        // One token at 0.15 USD / 1M tokens is 150 nano-USD.
        let one = Usage {
            prompt_tokens: 1,
            ..Default::default()
        };
        assert_eq!(p.cost_nanousd(&one), 150);
        // Rounding happens once, half up: 0.0000025 USD / 1M = 0.0025 nano-USD per token.
        let tiny = Price {
            input: parse_usd("0.0000025").unwrap(),
            ..Default::default()
        };
        assert_eq!(
            tiny.cost_nanousd(&Usage {
                prompt_tokens: 199,
                ..Default::default()
            }),
            0
        );
        assert_eq!(
            tiny.cost_nanousd(&Usage {
                prompt_tokens: 200,
                ..Default::default()
            }),
            1
        );
        assert_eq!(format_usd(-5), "-0.000000005");
    }
}
