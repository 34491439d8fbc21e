//! One file per KV-cache method. Each module doc names the paper, the reference implementation
//! and every setting with its default and source.
//!
//! Names, as used on the command line and in trial names:
//! - no budget: `full`, `fp16`, `q8_0`, `q4_0`, `q4_0-rot`, `flexgen-4bit`, `kivi-2bit`, `kivi-4bit`;
//! - with a budget, as a ratio of the compressed tokens (`-2x`, `-4x`, `-6x`, `-8x`, any number)
//!   or in tokens (`-512tok`): `streamingllm`, `h2o`, `snapkv`, `pyramidkv`, `tova`, `knorm`,
//!   `infllm`, `quest`, `lingua` — e.g. `h2o-4x`, `snapkv-1024tok`;
//! - variants outside the trial matrix, each for measuring one choice (`kvbench replay` runs
//!   them over a tier's traces): `infllm-ref` (InfLLM ranking blocks as its reference code does;
//!   see [`infllm::Ranking`]), `lingua-word` (prompt compression keeping whole words, as
//!   LLMLingua-2; see [`lingua`]) and `snapkv-wide` (SnapKV pooling over 15 tokens instead of 7;
//!   see [`snapkv`]).

pub mod flexgen;
pub mod fp16;
pub mod full;
pub mod h2o;
pub mod infllm;
pub mod kivi;
pub mod knorm;
pub mod lingua;
pub mod pyramidkv;
pub mod q4_0;
pub mod q8_0;
pub mod quest;
pub mod snapkv;
pub mod streamingllm;
pub mod tova;

#[cfg(test)]
mod invariants;

pub use full::Full;

use std::sync::Arc;

use super::{Granularity, Method};

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

    fn parse(s: &str) -> Option<Self> {
        if let Some(r) = s.strip_suffix('x') {
            let r: f64 = r.parse().ok()?;
            return (r.is_finite() && r >= 1.0).then_some(Self::Ratio(r));
        }
        let n: usize = s.strip_suffix("tok")?.parse().ok()?;
        (n > 0).then_some(Self::Tokens(n))
    }
}

/// Methods without a budget.
pub const FIXED: &[&str] = &["full", "fp16", "q8_0", "q4_0", "q4_0-rot", "flexgen-4bit", "kivi-2bit", "kivi-4bit"];

/// Method families that take a budget suffix.
pub const BUDGETED: &[&str] =
    &["streamingllm", "h2o", "snapkv", "pyramidkv", "tova", "knorm", "infllm", "quest", "lingua"];

/// Budgeted variants outside the trial matrix, each measuring one choice of a family above.
pub const VARIANTS: &[&str] = &["infllm-ref", "lingua-word", "snapkv-wide"];

/// Resolve a method by its command-line name.
pub fn by_name(name: &str) -> Result<Arc<dyn Method>, UnknownMethod> {
    let fixed: Option<Arc<dyn Method>> = match name {
        "full" => Some(Arc::new(Full)),
        "fp16" => Some(Arc::new(fp16::Fp16)),
        "q8_0" => Some(Arc::new(q8_0::Q8_0)),
        "q4_0" => Some(Arc::new(q4_0::Q4_0 { rotate: false })),
        "q4_0-rot" => Some(Arc::new(q4_0::Q4_0 { rotate: true })),
        "flexgen-4bit" => Some(Arc::new(flexgen::FlexGen)),
        "kivi-2bit" => Some(Arc::new(kivi::Kivi { bits: 2 })),
        "kivi-4bit" => Some(Arc::new(kivi::Kivi { bits: 4 })),
        _ => None,
    };
    if let Some(m) = fixed {
        return Ok(m);
    }
    let unknown = || UnknownMethod { name: name.to_string() };
    let (family, budget) = name.rsplit_once('-').ok_or_else(unknown)?;
    let budget = Budget::parse(budget).ok_or_else(unknown)?;
    Ok(match family {
        "streamingllm" => Arc::new(streamingllm::StreamingLlm { budget }),
        "h2o" => Arc::new(h2o::H2o { budget }),
        "snapkv" => Arc::new(snapkv::SnapKv { budget, pooling: snapkv::Pooling::Reference }),
        "snapkv-wide" => Arc::new(snapkv::SnapKv { budget, pooling: snapkv::Pooling::Wide }),
        "pyramidkv" => Arc::new(pyramidkv::PyramidKv { budget }),
        "tova" => Arc::new(tova::Tova { budget }),
        "knorm" => Arc::new(knorm::Knorm { budget }),
        "infllm" => Arc::new(infllm::InfLlm { budget, ranking: infllm::Ranking::OwnPositions }),
        "infllm-ref" => Arc::new(infllm::InfLlm { budget, ranking: infllm::Ranking::Reference }),
        "quest" => Arc::new(quest::Quest { budget }),
        "lingua" => Arc::new(lingua::Lingua { budget, granularity: Granularity::Token }),
        "lingua-word" => Arc::new(lingua::Lingua { budget, granularity: Granularity::Word }),
        _ => return Err(unknown()),
    })
}

/// Every method at the given ratios: the fixed ones, then each budgeted family at each ratio.
pub fn all_at(ratios: &[u32]) -> Vec<String> {
    let mut names: Vec<String> = FIXED.iter().map(|s| s.to_string()).collect();
    for family in BUDGETED {
        names.extend(ratios.iter().map(|r| format!("{family}-{r}x")));
    }
    names
}

/// A method name that is not known.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown method {name:?}; known methods: {fixed}, and {budgeted} with a budget suffix such as -4x or -512tok \
     (also {variants}, outside the trial matrix)",
    fixed = FIXED.join(", "), budgeted = BUDGETED.join(", "), variants = VARIANTS.join(", ")
)]
pub struct UnknownMethod {
    name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        let variants = VARIANTS.iter().map(|v| format!("{v}-4x"));
        for name in all_at(&[2, 4, 6, 8]).into_iter().chain(["h2o-512tok".into(), "snapkv-1.5x".into()]).chain(variants)
        {
            assert_eq!(by_name(&name).unwrap().name(), name);
        }
        for bad in ["h2o", "h2o-0x", "h2o-0.5x", "h2o-x", "kivi-3bit", "snapkv-4", "nope-4x", "q8_0-2x"] {
            assert!(by_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn budgets() {
        assert_eq!(Budget::Ratio(4.0).tokens(1000), 250);
        assert_eq!(Budget::Ratio(8.0).tokens(3), 1);
        assert_eq!(Budget::Tokens(512).tokens(10), 512);
    }
}
