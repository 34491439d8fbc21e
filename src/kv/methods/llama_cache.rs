//! `q8_0`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, `iq4_nl` and each with `-rot`: llama.cpp's block cache types
//! (`-ctk T -ctv T`), without and with the Hadamard rotation llama.cpp applies to quantized
//! caches.
//!
//! Reference: ggml's blocks (ggml-common.h) and reference quantizers (ggml-quants.c,
//! `quantize_row_<type>_ref`), per token and kv head, blocks of 32 channels:
//! - `q8_0`: f16 scale `d = amax / 127`, 32 signed bytes `round(x / d)`; 34 bytes = 8.5 bits.
//! - `q4_0`: the value of largest magnitude maps to −8, `d = max / −8`, codes
//!   `min(15, trunc(x / d + 8.5))`; 18 bytes = 4.5 bits.
//! - `q4_1`: f16 `d = (max − min) / 15` and f16 `min`, codes `trunc((x − min) / d + 0.5)`; 20
//!   bytes = 5 bits.
//! - `q5_0`: as `q4_0` at 5 bits (`d = max / −16`, codes `min(31, trunc(x / d + 16.5))`), the
//!   fifth bits in a 32-bit word; 22 bytes = 5.5 bits.
//! - `q5_1`: as `q4_1` at 5 bits (31 levels); 24 bytes = 6 bits.
//!
//! - `iq4_nl`: 4-bit indices into ggml's non-linear table `kvalues_iq4nl` (16 levels from −127 to
//!   113, denser near zero), `d = max / −127` then refit by least squares weighted by `x²`; 18
//!   bytes = 4.5 bits. The cache writes with `quantize_row_iq4_nl_ref`, which skips the scale
//!   search that ggml runs when it quantizes model weights.
//!
//! The codes are ggml's byte for byte (`src/kv/quant.rs`, held to gguf-py's quantizers). The
//! nominal ratio is 16 / bits against fp16. Every key and value is quantized as it is written,
//! prefill included, and attention reads the dequantized cache, as llama.cpp does (the chunk
//! being prefilled included: llama.cpp writes a chunk's keys to the cache before attending).
//!
//! Rotation (`-rot`): llama.cpp's KV cache enables an attention rotation when the cache type is
//! quantized: q and k are multiplied by a normalized Hadamard matrix before k is stored, v is
//! rotated before it is stored and the attention output is rotated back. Here the transform is
//! the Walsh–Hadamard of each head ([`crate::kv::hadamard`]); it costs no bytes.

use serde_json::json;

use crate::kv::rowcode::RowCode;
use crate::kv::rowquant::{RowCodec, RowQuantStore};
use crate::kv::{LayerStore, Method, Phase, StoreContext, StoreFactory};

/// One of llama.cpp's block types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockType {
    /// `q8_0`.
    Q8_0,
    /// `q4_0`.
    Q4_0,
    /// `q4_1`.
    Q4_1,
    /// `q5_0`.
    Q5_0,
    /// `q5_1`.
    Q5_1,
    /// `iq4_nl`.
    Iq4Nl,
}

impl BlockType {
    fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Iq4Nl => "iq4_nl",
        }
    }

    fn codec(self) -> RowCodec {
        match self {
            Self::Q8_0 => RowCodec::Q8_0,
            Self::Q4_0 => RowCodec::Q4_0,
            Self::Q4_1 => RowCodec::Q4_1,
            Self::Q5_0 => RowCodec::Q5_0,
            Self::Q5_1 => RowCodec::Q5_1,
            Self::Iq4Nl => RowCodec::Iq4Nl,
        }
    }

    /// Bits per value, the block's scale (and minimum) included.
    fn bits(self) -> f64 {
        match self {
            Self::Q8_0 => 8.5,
            Self::Q4_0 | Self::Iq4Nl => 4.5,
            Self::Q4_1 => 5.0,
            Self::Q5_0 => 5.5,
            Self::Q5_1 => 6.0,
        }
    }

    fn scale_rule(self) -> &'static str {
        match self {
            Self::Q8_0 => "amax/127",
            Self::Q4_0 => "max/-8",
            Self::Q4_1 => "(max-min)/15",
            Self::Q5_0 => "max/-16",
            Self::Q5_1 => "(max-min)/31",
            Self::Iq4Nl => "least-squares",
        }
    }

    /// Whether the block stores a minimum (asymmetric codes).
    fn has_min(self) -> bool {
        matches!(self, Self::Q4_1 | Self::Q5_1)
    }

    fn code_bits(self) -> u32 {
        match self {
            Self::Q8_0 => 8,
            Self::Q4_0 | Self::Q4_1 | Self::Iq4Nl => 4,
            Self::Q5_0 | Self::Q5_1 => 5,
        }
    }
}

/// A llama.cpp block cache type, optionally rotated.
#[derive(Debug, Clone, Copy)]
pub struct LlamaCache {
    /// The block type.
    pub ty: BlockType,
    /// Hadamard-rotate keys, values and queries per head.
    pub rotate: bool,
}

impl Method for LlamaCache {
    fn name(&self) -> String {
        let rot = if self.rotate { "-rot" } else { "" };
        format!("{}{rot}", self.ty.name())
    }

    fn settings(&self) -> serde_json::Value {
        let mut settings = json!({
            "block": 32, "scale": "f16", "scale_rule": self.ty.scale_rule(), "bits_per_value": self.ty.bits(),
            "keys": true, "values": true, "rotation": if self.rotate { "walsh-hadamard-per-head" } else { "none" },
        });
        if self.ty.has_min() {
            settings["min"] = json!("f16");
        }
        settings
    }

    fn description(&self) -> String {
        let (bits, rule) = (self.ty.code_bits(), self.ty.scale_rule());
        let scale = if self.ty == BlockType::Iq4Nl {
            "4-bit indices into a non-linear table of 16 levels and an f16 scale fit by least squares".to_string()
        } else if self.ty.has_min() {
            format!("{bits}-bit codes, an f16 scale of {rule} and an f16 minimum")
        } else {
            format!("{bits}-bit codes and an f16 scale of {rule}")
        };
        let rotation = if self.rotate { ", after a Walsh-Hadamard rotation of each head (64)" } else { "" };
        format!("llama.cpp's {} cache type: blocks of 32 values, {scale}{rotation}", self.ty.name())
    }

    fn nominal_ratio(&self) -> Option<f64> {
        Some(16.0 / self.ty.bits())
    }

    fn phase(&self) -> Phase<'_> {
        Phase::DuringPrefill(self)
    }

    fn row_code(&self) -> Option<RowCode> {
        Some(RowCode::Blocks { codec: self.ty.codec(), rotate: self.rotate })
    }
}

impl StoreFactory for LlamaCache {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        Box::new(RowQuantStore::new(ctx.shape, self.ty.codec(), self.rotate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_older_types_keep_their_names_settings_and_descriptions() {
        // q8_0 and q4_0 had files of their own; their trials' goldens hold these strings
        let q8 = LlamaCache { ty: BlockType::Q8_0, rotate: false };
        assert_eq!(q8.name(), "q8_0");
        assert_eq!(
            q8.description(),
            "llama.cpp's q8_0 cache type: blocks of 32 values, 8-bit codes and an f16 scale of amax/127"
        );
        let q4 = LlamaCache { ty: BlockType::Q4_0, rotate: true };
        assert_eq!(q4.name(), "q4_0-rot");
        assert_eq!(
            q4.description(),
            "llama.cpp's q4_0 cache type: blocks of 32 values, 4-bit codes and an f16 scale of max/-8, \
             after a Walsh-Hadamard rotation of each head (64)"
        );
        assert_eq!(q4.settings()["bits_per_value"], json!(4.5));
        assert!(q4.settings().get("min").is_none());
        let q51 = LlamaCache { ty: BlockType::Q5_1, rotate: false };
        assert_eq!((q51.settings()["min"].clone(), q51.nominal_ratio()), (json!("f16"), Some(16.0 / 6.0)));
    }
}
