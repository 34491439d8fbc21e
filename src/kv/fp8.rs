//! The two 8-bit floating-point formats of FP8 KV caches (OCP FP8, as `torch.float8_e4m3fn` and
//! `torch.float8_e5m2`): encoding with round-to-nearest-even and saturation, and decoding.
//!
//! - **E4M3FN**: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, `S.1111.111` is
//!   NaN, so the largest finite value is 448; subnormals `m/8 · 2⁻⁶`.
//! - **E5M2**: 1 sign, 5 exponent (bias 15), 2 mantissa bits, IEEE-like (infinities and NaNs at
//!   exponent 31); largest finite 57,344; subnormals `m/4 · 2⁻¹⁴`.
//!
//! [`Format::encode`] saturates to the largest finite value, as vLLM's `scaled_fp8_conversion`
//! clamps before converting (a cache never stores an infinity). Codes are held byte for byte to
//! torch's conversions by `tests/data/fp8_reference.json` (`cargo xtask fp8-reference`).

/// vLLM's `K_SCALE_CONSTANT`: the first pass's largest key maps to this.
pub const K_RANGE: f32 = 200.0;
/// vLLM's `V_SCALE_CONSTANT`: the first pass's largest value maps to this.
pub const V_RANGE: f32 = 100.0;

/// `max|x| / range`, or 1 for an all-zero tensor (which any scale stores exactly).
pub fn scale_of(x: &[f32], range: f32) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax > 0.0 && amax.is_finite() { amax / range } else { 1.0 }
}

/// An FP8 format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 4 exponent bits, 3 mantissa bits, no infinities (`float8_e4m3fn`).
    E4M3,
    /// 5 exponent bits, 2 mantissa bits (`float8_e5m2`).
    E5M2,
}

impl Format {
    /// (exponent bits, mantissa bits, bias).
    const fn layout(self) -> (u32, u32, i32) {
        match self {
            Self::E4M3 => (4, 3, 7),
            Self::E5M2 => (5, 2, 15),
        }
    }

    /// The largest finite value.
    pub const fn max(self) -> f32 {
        match self {
            Self::E4M3 => 448.0,
            Self::E5M2 => 57344.0,
        }
    }

    /// The lower-case name (`e4m3`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::E4M3 => "e4m3",
            Self::E5M2 => "e5m2",
        }
    }

    /// The code of `x`, rounded to nearest even and clamped to ±[`Self::max`] (NaN stays NaN).
    pub fn encode(self, x: f32) -> u8 {
        let (e_bits, m_bits, bias) = self.layout();
        let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
        if x.is_nan() {
            return sign | ((1u8 << (e_bits + m_bits)) - 1);
        }
        let a = x.abs().min(self.max());
        // the spacing of representable values around `a`: subnormal below 2^(1 − bias)
        let min_normal_exp = 1 - bias;
        let exp = if a == 0.0 { min_normal_exp } else { (a.log2().floor() as i32).max(min_normal_exp) };
        let mut exp = exp;
        // log2 may be off by one at powers of two: fix it exactly
        while exp > min_normal_exp && a < (exp as f32).exp2() {
            exp -= 1;
        }
        while a >= ((exp + 1) as f32).exp2() {
            exp += 1;
        }
        let step = ((exp - m_bits as i32) as f32).exp2();
        // exact: `a / step` is a scaled f32 (a power of two), rounded half to even
        let units = (a / step).round_ties_even() as u32;
        let (biased, mantissa) = if units < (1 << m_bits) {
            (0u32, units) // subnormal (exp is the minimum)
        } else if units == (2 << m_bits) {
            ((exp + bias + 1) as u32, 0) // rounded up to the next binade
        } else {
            ((exp + bias) as u32, units - (1 << m_bits))
        };
        let code = ((biased << m_bits) | mantissa) as u8;
        // the clamp keeps `a` at the largest finite value, whose code this is
        sign | code
    }

    /// The value of `code`.
    pub fn decode(self, code: u8) -> f32 {
        let (e_bits, m_bits, bias) = self.layout();
        let sign = if code & 0x80 != 0 { -1.0f32 } else { 1.0 };
        let biased = ((code >> m_bits) & ((1 << e_bits) - 1)) as i32;
        let mantissa = (code & ((1 << m_bits) - 1)) as f32;
        let top = (1 << e_bits) - 1;
        match self {
            Self::E4M3 if biased == top && mantissa as u32 == 7 => return f32::NAN,
            Self::E5M2 if biased == top => return if mantissa == 0.0 { sign * f32::INFINITY } else { f32::NAN },
            _ => {}
        }
        let scale = (1u32 << m_bits) as f32;
        if biased == 0 {
            sign * mantissa / scale * ((1 - bias) as f32).exp2()
        } else {
            sign * (1.0 + mantissa / scale) * ((biased - bias) as f32).exp2()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finite_code_round_trips_and_the_ends_are_right() {
        for format in [Format::E4M3, Format::E5M2] {
            for code in 0..=255u8 {
                let x = format.decode(code);
                if x.is_finite() {
                    let back = format.encode(x);
                    // +0 and −0 are distinct codes of equal value
                    assert!(back == code || x == 0.0, "{format:?} code {code:#04x} = {x} encodes to {back:#04x}");
                }
            }
            assert_eq!(format.decode(format.encode(1e9)), format.max());
            assert_eq!(format.decode(format.encode(-1e9)), -format.max());
        }
        assert_eq!(Format::E4M3.decode(0x01), 2f32.powi(-9));
        assert_eq!(Format::E5M2.decode(0x01), 2f32.powi(-16));
        // halfway between 1.0 and 1.125 (E4M3) rounds to the even mantissa, 1.0
        assert_eq!(Format::E4M3.decode(Format::E4M3.encode(1.0625)), 1.0);
        assert_eq!(Format::E4M3.decode(Format::E4M3.encode(1.1875)), 1.25);
    }

    #[derive(serde::Deserialize)]
    struct Reference {
        inputs: Vec<f32>,
        codes: Vec<u8>,
    }

    #[test]
    fn codes_are_torchs_byte_for_byte() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fp8_reference.json");
        let file: std::collections::HashMap<String, serde_json::Value> =
            serde_json::from_slice(&std::fs::read(path).expect("run `cargo xtask fp8-reference`")).unwrap();
        for format in [Format::E4M3, Format::E5M2] {
            let r: Reference = serde_json::from_value(file[format.name()].clone()).unwrap();
            assert!(r.inputs.len() > 2000 && r.inputs.len() == r.codes.len());
            for (x, want) in r.inputs.iter().zip(&r.codes) {
                assert_eq!(format.encode(*x), *want, "{format:?}: {x:e}");
            }
        }
    }
}
