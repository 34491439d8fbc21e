//! Token budgets: how much of the compressed tokens a budgeted method keeps (`-4x`, `-512tok`).

/// A token budget: a ratio of the tokens a method compresses, or an absolute count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Keep `compressed / ratio` tokens.
    Ratio(f64),
    /// Keep this many tokens.
    Tokens(usize),
}

impl Budget {
    /// Tokens kept when `compressed` tokens are compressed (at least 1).
    pub fn tokens(self, compressed: usize) -> usize {
        match self {
            Self::Ratio(r) => ((compressed as f64 / r).round() as usize).max(1),
            Self::Tokens(n) => n.max(1),
        }
    }

    /// Name suffix: `4x`, `1.5x`, `512tok`.
    pub fn suffix(self) -> String {
        match self {
            Self::Ratio(r) => format!("{r}x"),
            Self::Tokens(n) => format!("{n}tok"),
        }
    }

    /// The nominal ratio, for ratio budgets.
    pub fn nominal(self) -> Option<f64> {
        match self {
            Self::Ratio(r) => Some(r),
            Self::Tokens(_) => None,
        }
    }

    /// For result files.
    pub fn settings(self) -> serde_json::Value {
        match self {
            Self::Ratio(r) => serde_json::json!({ "ratio": r }),
            Self::Tokens(n) => serde_json::json!({ "tokens": n }),
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        // Rust's number parsers take a sign: `h2o-+4x` is not a name
        if !s.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        if let Some(r) = s.strip_suffix('x') {
            let r: f64 = r.parse().ok()?;
            return (r.is_finite() && r >= 1.0).then_some(Self::Ratio(r));
        }
        let n: usize = s.strip_suffix("tok")?.parse().ok()?;
        (n > 0).then_some(Self::Tokens(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets() {
        assert_eq!(Budget::Ratio(4.0).tokens(1000), 250);
        assert_eq!(Budget::Ratio(8.0).tokens(3), 1);
        assert_eq!(Budget::Tokens(512).tokens(10), 512);
    }
}
