//! The one table of methods: every name the command line, the trial matrix, the help text, the
//! unknown-name message and the kind-based invariant tests know comes from [`REGISTRY`]. A method
//! added here is parsed, listed, benchmarked and held to every invariant of its [`Kind`].

use std::sync::Arc;

use super::llama_cache::{BlockType, LlamaCache};
use super::{
    Budget, adakv, chunkkv, compose, criticalkv, duoattention, expected_attention, flexgen, fp8, fp16, full, h2o,
    infllm, keydiff, kivi, knorm, lingua, pyramidkv, quest,
};
use super::{snapkv, streamingllm, think, tova, turboquant};
use crate::kv::fp8::Format;
use crate::kv::oneshot::OneShot;
use crate::kv::{Granularity, Method};

/// What a method does to the cache, which decides the invariants it is tested by
/// (`kv/methods/invariants.rs`, `tests/probes.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The uncompressed cache every other is measured against.
    Reference,
    /// Keeps every token, in fewer bits.
    Quantizer,
    /// Keeps a token budget and evicts to hold it through decode.
    Evicting,
    /// Selects the budget's tokens once, when prefill ends; decode tokens are appended.
    OneShot,
    /// Holds every token and reads a budget of them per step.
    Retrieval,
    /// Keeps every token; prunes key channels once after prefill.
    KeyChannels,
    /// Drops prompt tokens before prefill.
    PromptCompression,
    /// An evicting or one-shot method whose kept rows a quantizer stores (`snapkv-4x+q4_0-rot`,
    /// [`compose`]).
    Composition,
}

/// How a method is made from its name.
#[derive(Clone, Copy)]
pub enum Make {
    /// A name without a budget (`kivi-2bit`).
    Fixed(fn() -> Arc<dyn Method>),
    /// A family that takes a budget suffix (`h2o-4x`, `h2o-512tok`).
    Budgeted(fn(Budget) -> Arc<dyn Method>),
}

/// One entry of the registry.
#[derive(Clone, Copy)]
pub struct MethodSpec {
    /// The name of a fixed method, or the family of a budgeted one.
    pub name: &'static str,
    /// What it does to the cache.
    pub kind: Kind,
    /// In the trial matrix (false for variants, each outside it to measure one choice of a
    /// family; `kvbench replay` runs them).
    pub matrix: bool,
    /// Its constructor.
    pub make: Make,
}

impl MethodSpec {
    const fn fixed(name: &'static str, kind: Kind, make: fn() -> Arc<dyn Method>) -> Self {
        Self { name, kind, matrix: true, make: Make::Fixed(make) }
    }

    const fn budgeted(name: &'static str, kind: Kind, make: fn(Budget) -> Arc<dyn Method>) -> Self {
        Self { name, kind, matrix: true, make: Make::Budgeted(make) }
    }

    const fn variant(self) -> Self {
        Self { matrix: false, ..self }
    }

    /// Whether it takes a budget suffix.
    pub fn budgeted_family(&self) -> bool {
        matches!(self.make, Make::Budgeted(_))
    }
}

/// Every method kvbench knows, in the order the matrix and the help list them.
pub const REGISTRY: &[MethodSpec] = &[
    MethodSpec::fixed("full", Kind::Reference, || Arc::new(full::Full)),
    MethodSpec::fixed("fp16", Kind::Quantizer, || Arc::new(fp16::Fp16)),
    MethodSpec::fixed("q8_0", Kind::Quantizer, || Arc::new(LlamaCache { ty: BlockType::Q8_0, rotate: false })),
    MethodSpec::fixed("q8_0-rot", Kind::Quantizer, || Arc::new(LlamaCache { ty: BlockType::Q8_0, rotate: true })),
    MethodSpec::fixed("q4_0", Kind::Quantizer, || Arc::new(LlamaCache { ty: BlockType::Q4_0, rotate: false })),
    MethodSpec::fixed("q4_0-rot", Kind::Quantizer, || Arc::new(LlamaCache { ty: BlockType::Q4_0, rotate: true })),
    MethodSpec::fixed("q4_1", Kind::Quantizer, || Arc::new(LlamaCache { ty: BlockType::Q4_1, rotate: false })),
    MethodSpec::fixed("q4_1-rot", Kind::Quantizer, || Arc::new(LlamaCache { ty: BlockType::Q4_1, rotate: true })),
    MethodSpec::fixed("q5_0", Kind::Quantizer, || Arc::new(LlamaCache { ty: BlockType::Q5_0, rotate: false })),
    MethodSpec::fixed("q5_0-rot", Kind::Quantizer, || Arc::new(LlamaCache { ty: BlockType::Q5_0, rotate: true })),
    MethodSpec::fixed("q5_1", Kind::Quantizer, || Arc::new(LlamaCache { ty: BlockType::Q5_1, rotate: false })),
    MethodSpec::fixed("q5_1-rot", Kind::Quantizer, || Arc::new(LlamaCache { ty: BlockType::Q5_1, rotate: true })),
    MethodSpec::fixed("iq4_nl", Kind::Quantizer, || Arc::new(LlamaCache { ty: BlockType::Iq4Nl, rotate: false })),
    MethodSpec::fixed("iq4_nl-rot", Kind::Quantizer, || Arc::new(LlamaCache { ty: BlockType::Iq4Nl, rotate: true })),
    MethodSpec::fixed("fp8-e4m3", Kind::Quantizer, || Arc::new(fp8::Fp8Cache { format: Format::E4M3 })),
    MethodSpec::fixed("fp8-e5m2", Kind::Quantizer, || Arc::new(fp8::Fp8Cache { format: Format::E5M2 })),
    MethodSpec::fixed("turboquant-4bit", Kind::Quantizer, || {
        Arc::new(turboquant::TurboQuantCache { bits: 4, qjl: false })
    }),
    MethodSpec::fixed("turboquant-3bit", Kind::Quantizer, || {
        Arc::new(turboquant::TurboQuantCache { bits: 3, qjl: false })
    }),
    MethodSpec::fixed("turboquant-4bit-qjl", Kind::Quantizer, || {
        Arc::new(turboquant::TurboQuantCache { bits: 4, qjl: true })
    }),
    MethodSpec::fixed("flexgen-4bit", Kind::Quantizer, || Arc::new(flexgen::FlexGen)),
    MethodSpec::fixed("kivi-2bit", Kind::Quantizer, || Arc::new(kivi::Kivi { bits: 2 })),
    MethodSpec::fixed("kivi-4bit", Kind::Quantizer, || Arc::new(kivi::Kivi { bits: 4 })),
    MethodSpec::budgeted("streamingllm", Kind::Evicting, |budget| Arc::new(streamingllm::StreamingLlm { budget })),
    MethodSpec::budgeted("h2o", Kind::Evicting, |budget| Arc::new(h2o::H2o { budget })),
    MethodSpec::budgeted("snapkv", Kind::OneShot, |budget| {
        Arc::new(OneShot { budget, selector: snapkv::SnapKv { pooling: snapkv::Pooling::Reference } })
    }),
    MethodSpec::budgeted("pyramidkv", Kind::OneShot, |budget| {
        Arc::new(OneShot { budget, selector: pyramidkv::PyramidKv })
    }),
    MethodSpec::budgeted("tova", Kind::Evicting, |budget| Arc::new(tova::Tova { budget, pooled: false })),
    MethodSpec::budgeted("adakv", Kind::OneShot, |budget| Arc::new(OneShot { budget, selector: adakv::AdaKv })),
    MethodSpec::budgeted("chunkkv", Kind::OneShot, |budget| Arc::new(OneShot { budget, selector: chunkkv::ChunkKv })),
    MethodSpec::budgeted("expected-attention", Kind::OneShot, |budget| {
        Arc::new(OneShot { budget, selector: expected_attention::ExpectedAttention })
    }),
    MethodSpec::budgeted("knorm", Kind::OneShot, |budget| Arc::new(OneShot { budget, selector: knorm::Knorm })),
    MethodSpec::budgeted("keydiff", Kind::OneShot, |budget| Arc::new(OneShot { budget, selector: keydiff::KeyDiff })),
    MethodSpec::budgeted("criticalkv", Kind::OneShot, |budget| {
        Arc::new(OneShot { budget, selector: criticalkv::CriticalKv })
    }),
    MethodSpec::budgeted("duoattention", Kind::OneShot, |budget| {
        Arc::new(OneShot { budget, selector: duoattention::DuoAttention })
    }),
    MethodSpec::budgeted("think", Kind::KeyChannels, |budget| Arc::new(think::Think { budget })),
    MethodSpec::budgeted("infllm", Kind::Retrieval, |budget| {
        Arc::new(infllm::InfLlm { budget, ranking: infllm::Ranking::OwnPositions })
    }),
    MethodSpec::budgeted("quest", Kind::Retrieval, |budget| Arc::new(quest::Quest { budget })),
    MethodSpec::budgeted("lingua", Kind::PromptCompression, |budget| {
        Arc::new(lingua::Lingua { budget, granularity: Granularity::Token })
    }),
    MethodSpec::budgeted("infllm-ref", Kind::Retrieval, |budget| {
        Arc::new(infllm::InfLlm { budget, ranking: infllm::Ranking::Reference })
    })
    .variant(),
    MethodSpec::budgeted("lingua-word", Kind::PromptCompression, |budget| {
        Arc::new(lingua::Lingua { budget, granularity: Granularity::Word })
    })
    .variant(),
    MethodSpec::budgeted("snapkv-wide", Kind::OneShot, |budget| {
        Arc::new(OneShot { budget, selector: snapkv::SnapKv { pooling: snapkv::Pooling::Wide } })
    })
    .variant(),
    MethodSpec::budgeted("tova-pooled", Kind::Evicting, |budget| Arc::new(tova::Tova { budget, pooled: true }))
        .variant(),
];

/// The compositions in the trial matrix ([`compose`]; any evicting or one-shot method composes
/// with a row quantizer on the command line): pairs chosen so that the report's equal-bytes
/// frontier sets fewer tokens in more bits against more tokens in fewer, near 4× and 7× of fp16.
pub const COMPOSITIONS: &[&str] =
    &["snapkv-2x+q4_0-rot", "snapkv-4x+q8_0", "streamingllm-2x+q4_0", "adakv-2x+fp8-e4m3", "snapkv-2x+turboquant-4bit"];

/// The registry entry of `name` and its budget, if it has one.
pub fn lookup(name: &str) -> Option<(&'static MethodSpec, Option<Budget>)> {
    if let Some(spec) = REGISTRY.iter().find(|s| !s.budgeted_family() && s.name == name) {
        return Some((spec, None));
    }
    let (family, suffix) = name.rsplit_once('-')?;
    let spec = REGISTRY.iter().find(|s| s.budgeted_family() && s.name == family)?;
    Some((spec, Some(Budget::parse(suffix)?)))
}

/// Resolve a method by its command-line name (a composition is `EVICTOR+QUANTIZER`).
pub fn by_name(name: &str) -> Result<Arc<dyn Method>, UnknownMethod> {
    if let Some((evictor, quantizer)) = name.split_once('+') {
        let missing = |why: &str| UnknownMethod::Composition { name: name.to_string(), why: why.to_string() };
        if evictor.is_empty() || quantizer.is_empty() {
            return Err(missing("EVICTOR+QUANTIZER needs a method on each side of `+` (e.g. snapkv-4x+q4_0-rot)"));
        }
        let kind = |n: &str| lookup(n).map(|(spec, _)| spec.kind);
        let part = |n: &str| Ok::<_, UnknownMethod>((one(n)?, kind(n).expect("a resolved name has a kind")));
        let ((e, ek), (q, qk)) = (part(evictor)?, part(quantizer)?);
        let composed = compose::Composed::new(e, ek, q, qk)
            .map_err(|why| UnknownMethod::Composition { name: name.to_string(), why })?;
        return Ok(Arc::new(composed));
    }
    one(name)
}

/// Resolve one registered name.
fn one(name: &str) -> Result<Arc<dyn Method>, UnknownMethod> {
    match lookup(name) {
        Some((MethodSpec { make: Make::Fixed(make), .. }, None)) => Ok(make()),
        Some((MethodSpec { make: Make::Budgeted(make), .. }, Some(budget))) => Ok(make(budget)),
        _ => Err(UnknownMethod::Name { name: name.to_string() }),
    }
}

/// The kind of the method called `name`.
pub fn kind_of(name: &str) -> Option<Kind> {
    if name.contains('+') {
        return by_name(name).ok().map(|_| Kind::Composition);
    }
    lookup(name).map(|(spec, _)| spec.kind)
}

/// The trial matrix's methods at the given ratios: the fixed ones, then each budgeted family at
/// each ratio, in registry order, then the [`COMPOSITIONS`].
pub fn all_at(ratios: &[u32]) -> Vec<String> {
    let matrix = || REGISTRY.iter().filter(|s| s.matrix);
    let fixed = matrix().filter(|s| !s.budgeted_family()).map(|s| s.name.to_string());
    let budgeted =
        matrix().filter(|s| s.budgeted_family()).flat_map(|s| ratios.iter().map(|r| format!("{}-{r}x", s.name)));
    fixed.chain(budgeted).chain(COMPOSITIONS.iter().map(|c| c.to_string())).collect()
}

/// Every budgeted family, the variants included, of `kind`.
pub fn families_of(kind: Kind) -> Vec<&'static str> {
    REGISTRY.iter().filter(|s| s.kind == kind && s.budgeted_family()).map(|s| s.name).collect()
}

/// Every fixed method of `kind`.
pub fn fixed_of(kind: Kind) -> Vec<&'static str> {
    REGISTRY.iter().filter(|s| s.kind == kind && !s.budgeted_family()).map(|s| s.name).collect()
}

fn names(fixed: bool, matrix: bool) -> String {
    let names: Vec<&str> =
        REGISTRY.iter().filter(|s| s.budgeted_family() != fixed && s.matrix == matrix).map(|s| s.name).collect();
    names.join(", ")
}

/// `--method`'s help: every name, from the registry.
pub fn help() -> String {
    format!(
        "KV-cache method: {}; or {} with a budget suffix (`-4x`: a quarter of the prompt; `-512tok`: 512 tokens), \
         e.g. `snapkv-4x`; or EVICTOR+QUANTIZER, an evicting or one-shot method whose kept rows a row quantizer \
         stores, e.g. `snapkv-4x+q4_0-rot`; variants outside the trial matrix: {}",
        names(true, true),
        names(false, true),
        names(false, false)
    )
}

/// docs/METHODS.md's table of every method, generated from the registry (`cargo xtask
/// methods-table` writes it between the file's markers; a test holds the file to it): name, kind,
/// when it acts, its description, its nominal ratio against fp16. A family is shown at `-4x`.
pub fn markdown_table() -> String {
    let mut s = String::from("| name | kind | acts | what it does | nominal ratio vs fp16 |\n|---|---|---|---|---:|\n");
    for spec in REGISTRY {
        let (shown, method) = match spec.make {
            Make::Fixed(make) => (format!("`{}`", spec.name), make()),
            Make::Budgeted(make) => (format!("`{}-Nx`", spec.name), make(Budget::Ratio(4.0))),
        };
        let kind = serde_json::to_value(spec.kind).expect("a kind serializes");
        let acts = serde_json::to_value(method.acts()).expect("a phase serializes");
        let ratio = match (spec.make, method.nominal_ratio()) {
            (Make::Budgeted(_), _) if spec.kind == Kind::KeyChannels => "2N/(N+1)".to_string(),
            (Make::Budgeted(_), _) => "N".to_string(),
            (_, Some(r)) => format!("{}", (r * 100.0).round() / 100.0),
            (_, None) => "—".to_string(),
        };
        let variant = if spec.matrix { "" } else { " (a variant, outside the trial matrix)" };
        s.push_str(&format!(
            "| {shown} | {} | {} | {}{variant} | {ratio} |\n",
            kind.as_str().unwrap_or_default(),
            acts.as_str().unwrap_or_default(),
            method.description().replace('|', "\\|"),
        ));
    }
    for name in COMPOSITIONS {
        let method = by_name(name).expect("the matrix's compositions compose");
        let acts = serde_json::to_value(method.acts()).expect("a phase serializes");
        let ratio = method.nominal_ratio().map_or("—".to_string(), |r| format!("{}", (r * 100.0).round() / 100.0));
        s.push_str(&format!(
            "| `{name}` | composition | {} | {} | {ratio} |\n",
            acts.as_str().unwrap_or_default(),
            method.description().replace('|', "\\|"),
        ));
    }
    s
}

/// A method name that is not known, or a composition that does not compose.
#[derive(Debug, thiserror::Error)]
pub enum UnknownMethod {
    /// No such name.
    #[error(
        "unknown method {name:?}; known methods: {fixed}, and {budgeted} with a budget suffix such as -4x or -512tok \
         (also {variants}, outside the trial matrix), and EVICTOR+QUANTIZER compositions such as snapkv-4x+q4_0-rot",
        fixed = names(true, true), budgeted = names(false, true), variants = names(false, false)
    )]
    Name {
        /// The name asked for.
        name: String,
    },
    /// Both parts are known and do not compose.
    #[error("{name:?} does not compose: {why}")]
    Composition {
        /// The name asked for.
        name: String,
        /// Why.
        why: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docs_table_is_the_registrys() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METHODS.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let (begin, end) = ("<!-- methods-table:begin -->\n", "<!-- methods-table:end -->");
        let start = doc.find(begin).expect("docs/METHODS.md has the table's begin marker") + begin.len();
        let stop = doc[start..].find(end).expect("and its end marker") + start;
        assert!(
            doc[start..stop] == markdown_table(),
            "docs/METHODS.md's table is stale: run `cargo xtask methods-table`"
        );
    }

    #[test]
    fn every_name_round_trips_and_names_are_unique() {
        let variants = REGISTRY.iter().filter(|s| !s.matrix).map(|s| format!("{}-4x", s.name));
        for name in all_at(&[2, 4, 6, 8]).into_iter().chain(["h2o-512tok".into(), "snapkv-1.5x".into()]).chain(variants)
        {
            assert_eq!(by_name(&name).unwrap().name(), name);
        }
        for bad in ["h2o", "h2o-0x", "h2o-0.5x", "h2o-x", "kivi-3bit", "snapkv-4", "nope-4x", "q8_0-2x", "full-2x"] {
            assert!(by_name(bad).is_err(), "{bad}");
        }
        let mut seen = std::collections::HashSet::new();
        assert!(REGISTRY.iter().all(|s| seen.insert(s.name)), "a name registered twice");
    }

    #[test]
    fn kinds_agree_with_when_methods_act() {
        use crate::kv::Acts;
        for name in all_at(&[4]) {
            let method = by_name(&name).unwrap();
            let kind = kind_of(&name).unwrap();
            assert_eq!(kind == Kind::PromptCompression, method.acts() == Acts::BeforePrefill, "{name}");
        }
    }

    #[test]
    fn the_help_and_the_error_name_every_method() {
        let (help, error) = (help(), by_name("nope").err().unwrap().to_string());
        for spec in REGISTRY {
            assert!(help.contains(spec.name) && error.contains(spec.name), "{}", spec.name);
        }
    }
}
