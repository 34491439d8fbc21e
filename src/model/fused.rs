//! The arithmetic of the ONNX Runtime nodes that kvbench's decode kernels absorb, replicated bit
//! for bit, so that fusing them changes the graph's cost and not its numbers.
//!
//! ONNX Runtime's CPU kernels are not documented to the bit, so each function here was matched
//! against ONNX Runtime 1.32 (the library kvbench runs) on an AVX2+FMA CPU, and a test runs both
//! side by side in one session (`qlinear`'s tests). On a CPU where ONNX Runtime dispatches other
//! kernels (AVX-512, ARM) the results stay within rounding of the nodes, not equal to them.

/// f32 lanes of an AVX2 register.
const LANES: usize = 8;

/// RMSNorm of one row (length a multiple of 8) as `SimplifiedLayerNormalization` computes it:
/// squares accumulated by fused multiply-adds in eight lanes, the lanes summed as
/// `(l_i + l_{i+4})`, then `(0 + 2, 1 + 3)`, then the two; `inv = 1 / sqrt(Σ / K + ε)`;
/// `y = x · inv · w`, left to right. (Its plain C++ reference loop, a sequential sum and
/// `x / rms · w`, differs from what runs in almost every row.)
pub fn rms_norm(x: &[f32], weight: &[f32], epsilon: f32, out: &mut [f32]) {
    assert!(x.len().is_multiple_of(LANES) && weight.len() == x.len() && out.len() == x.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { rms_norm_fma(x, weight, epsilon, out) };
    }
    rms_norm_generic(x, weight, epsilon, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rms_norm_fma(x: &[f32], weight: &[f32], epsilon: f32, out: &mut [f32]) {
    rms_norm_generic(x, weight, epsilon, out)
}

#[inline(always)]
fn rms_norm_generic(x: &[f32], weight: &[f32], epsilon: f32, out: &mut [f32]) {
    let mut lanes = [0.0f32; LANES];
    for c in x.chunks_exact(LANES) {
        for l in 0..LANES {
            lanes[l] = c[l].mul_add(c[l], lanes[l]);
        }
    }
    let halves: [f32; 4] = std::array::from_fn(|l| lanes[l] + lanes[l + 4]);
    let sum = (halves[0] + halves[2]) + (halves[1] + halves[3]);
    let inv = 1.0 / (sum / x.len() as f32 + epsilon).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inv * w;
    }
}

/// SwiGLU's `silu(g) ⊙ u` as the graph's `Mul(Mul(g, Sigmoid(g)), u)` computes it: ONNX Runtime
/// fuses the first two into `QuickGelu` (`g · σ(g)`), whose σ is MLAS's logistic kernel
/// ([`logistic`]); then one product by `u`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && out.len() == gate.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { swiglu_fma(gate, up, out) };
    }
    swiglu_generic(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn swiglu_fma(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_generic(gate, up, out)
}

#[inline(always)]
fn swiglu_generic(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g * logistic(g) * u;
    }
}

/// σ(x) by MLAS's rational approximation (`logistic.cpp`: Eigen's coefficients, an odd degree-9
/// numerator over an even degree-10 denominator in `x²`, input clamped to ±18) as its AVX2 kernel
/// (`LogisticKernelFma3.S`) evaluates it: fused multiply-adds, and the output clamped below at
/// 0 only (the portable kernel also clamps above at 1; the AVX2 one can return 1 + 1 ulp).
#[inline(always)]
fn logistic(x: f32) -> f32 {
    // the f32 values of MLAS's constants (the same floats as its longer decimal literals)
    const ALPHA: [f32; 5] = [4.37031e-11, 1.156_273_2e-7, 6.085_749e-5, 8.513_771e-3, 2.482_879_5e-1];
    const BETA: [f32; 6] =
        [6.102_473_7e-13, 5.761_021_4e-9, 6.291_068e-6, 1.701_988_2e-3, 1.168_176_5e-1, 9.931_519e-1];
    let v = x.clamp(-18.0, 18.0);
    let v2 = v * v;
    let p = ALPHA[1..].iter().fold(ALPHA[0], |p, &a| p.mul_add(v2, a)) * v;
    let q = BETA[1..].iter().fold(BETA[0], |q, &b| q.mul_add(v2, b));
    (p / q + 0.5).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_close_to_the_exact_sigmoid() {
        for i in -4000..=4000 {
            let x = i as f32 / 100.0;
            let exact = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((logistic(x) as f64 - exact).abs() < 1e-6, "σ({x}) = {} vs {exact}", logistic(x));
        }
    }

    #[test]
    fn rms_norm_normalises() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) * 0.1).collect();
        let mut y = vec![0.0; 64];
        rms_norm(&x, &[2.0; 64], 0.0, &mut y);
        let rms = (y.iter().map(|v| (v * v) as f64).sum::<f64>() / 64.0).sqrt();
        assert!((rms - 2.0).abs() < 1e-6, "{rms}");
    }
}
