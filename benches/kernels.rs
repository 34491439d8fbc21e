//! Decode-step kernels in isolation: what one greedy step of SmolLM2-135M spends in kvbench's own
//! operators, without ONNX Runtime around them.
//!
//! Per step the model runs, for each of its 30 layers, four Q4_1 products of one row (`Q4Linear`:
//! q|k|v 576→960, o 576→576, gate|up 576→3072, down 1536→576) and one attention row over the
//! cache (`attend`, 9 query heads on 3 kv heads of 64), then the Q8_0 head (`Q8Linear`,
//! 576→49,152). Random weights and activations of those shapes; each figure is the fastest of
//! `KVBENCH_ROUNDS` (default 15) timed steps after one warm-up (the least disturbed by other work on
//! a shared machine), on rayon pools of 1 and 2 threads.
//!
//! The weight products also run on weights small enough to stay in cache, over as many
//! multiply-adds: the difference between the two rows is what streaming the weights from memory
//! costs. Attention reads a cache per layer (30 of them, streamed like the weights), once in f32
//! (the `full` method) and once in f16 (`fp16`, read as stored). Results and what they led to:
//! docs/PERF.md.
//!
//! `cargo bench --bench kernels`

use std::time::Instant;

use half::f16;
use kvbench::kv::Heads;
use kvbench::kv::attention::{KvView, Queries, attend_observed, attend_observed_half};
use kvbench::model::head::{Q8Matrix, q8_matmul};
use kvbench::model::qlinear::q4_matmul;

const LAYERS: usize = 30;
const HIDDEN: usize = 576;
const FFN: usize = 1536;
const VOCAB: usize = 49_152;
const SHAPE: Heads = Heads { heads: 9, kv_heads: 3, head_dim: 64 };

/// A deterministic stream of pseudo-random values.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32s(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale).collect()
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 56) as u8).collect()
    }
}

/// One Q4_1 matrix of `n` rows of `k`.
struct Q4 {
    k: usize,
    codes: Vec<u8>,
    d: Vec<f16>,
    m: Vec<f16>,
    out: Vec<f32>,
}

impl Q4 {
    fn new(noise: &mut Noise, n: usize, k: usize) -> Self {
        let blocks = n * k / 32;
        Self {
            k,
            codes: noise.bytes(n * k / 2),
            d: halves(noise.f32s(blocks, 0.02)),
            m: halves(noise.f32s(blocks, 0.1)),
            out: vec![0.0; n],
        }
    }
    fn run(&mut self, x: &[f32]) {
        q4_matmul(&x[..self.k], self.k, &self.codes, &self.d, &self.m, &mut self.out);
    }
}

fn halves(v: Vec<f32>) -> Vec<f16> {
    v.into_iter().map(f16::from_f32).collect()
}

fn best_ms(rounds: usize, mut step: impl FnMut()) -> f64 {
    step();
    let times: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            step();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.into_iter().fold(f64::INFINITY, f64::min)
}

fn main() {
    let rounds = kvbench::assets::settings::rounds(15).unwrap_or_else(|e| panic!("{e}"));
    let mut noise = Noise(0x6b76_6265_6e63_6821);
    let x = noise.f32s(FFN, 2.0);
    let mut layers: Vec<[Q4; 4]> = (0..LAYERS)
        .map(|_| {
            [
                Q4::new(&mut noise, HIDDEN + 2 * 192, HIDDEN),
                Q4::new(&mut noise, HIDDEN, HIDDEN),
                Q4::new(&mut noise, 2 * FFN, HIDDEN),
                Q4::new(&mut noise, HIDDEN, FFN),
            ]
        })
        .collect();
    let head_codes: Vec<i8> = noise.bytes(VOCAB * HIDDEN).into_iter().map(|b| b as i8).collect();
    let head_scales = noise.f32s(VOCAB * HIDDEN / 32, 0.01);
    let mut logits = vec![0.0f32; VOCAB];
    let d = SHAPE.head_dim;
    let q = noise.f32s(SHAPE.heads * d, 2.0);
    let mut attn_out = vec![0.0f32; SHAPE.heads * d];

    println!("| kernel, per decode step | 1 thread (ms) | 2 threads (ms) |");
    println!("|---|---:|---:|");
    let row = |label: &str, ms: [f64; 2]| println!("| {label} | {:.2} | {:.2} |", ms[0], ms[1]);
    let pools = [1, 2].map(|t| rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("rayon pool"));

    let q4 = pools.each_ref().map(|p| {
        p.install(|| {
            best_ms(rounds, || {
                for layer in layers.iter_mut() {
                    layer.iter_mut().for_each(|w| w.run(&x));
                }
            })
        })
    });
    row("Q4Linear ×120 (30 layers × 4 products, 106 M weights)", q4);
    let mut gate_up = Q4::new(&mut noise, 2 * FFN, HIDDEN);
    let q4_cached = pools.each_ref().map(|p| p.install(|| best_ms(rounds, || (0..60).for_each(|_| gate_up.run(&x)))));
    row("… the same work in cache (one gate+up product ×60)", q4_cached);

    let head = pools.each_ref().map(|p| {
        p.install(|| {
            best_ms(rounds, || q8_matmul(&x[..HIDDEN], HIDDEN, Q8Matrix::q8_0(&head_codes, &head_scales), &mut logits))
        })
    });
    row("Q8Linear head (28 M weights)", head);
    let rows = 2048;
    let (codes, scales) = (&head_codes[..rows * HIDDEN], &head_scales[..rows * HIDDEN / 32]);
    let head_cached = pools.each_ref().map(|p| {
        p.install(|| {
            best_ms(rounds, || {
                (0..VOCAB / rows)
                    .for_each(|_| q8_matmul(&x[..HIDDEN], HIDDEN, Q8Matrix::q8_0(codes, scales), &mut logits[..rows]))
            })
        })
    });
    row("… the same work in cache (2,048 head rows ×24)", head_cached);
    let rows32 = noise.f32s(32 * HIDDEN, 2.0);
    let mut logits32 = vec![0.0f32; 32 * VOCAB];
    let head32 = pools.each_ref().map(|p| {
        p.install(|| {
            best_ms(rounds, || q8_matmul(&rows32, HIDDEN, Q8Matrix::q8_0(&head_codes, &head_scales), &mut logits32))
        })
    });
    row("Q8Linear head over 32 rows (teacher forcing; not a decode step)", head32);
    let rows512 = noise.f32s(512 * HIDDEN, 2.0);
    let mut logits512 = vec![0.0f32; 512 * VOCAB];
    let head512 = pools.each_ref().map(|p| {
        p.install(|| {
            best_ms(rounds.min(5), || {
                q8_matmul(&rows512, HIDDEN, Q8Matrix::q8_0(&head_codes, &head_scales), &mut logits512)
            })
        })
    });
    row("Q8Linear head over 512 rows (a prompt chunk LLMLingua scores; not a decode step)", head512);

    for n in [1024usize, 4096] {
        // one cache per layer, as in a decode step: 30 layers stream from memory, f32 (the `full`
        // method) and f16 (`fp16`, llama.cpp's default cache type) holding the same values
        let layers: Vec<Vec<(Vec<f32>, Vec<f32>)>> = (0..LAYERS)
            .map(|_| (0..SHAPE.kv_heads).map(|_| (noise.f32s(n * d, 2.0), noise.f32s(n * d, 2.0))).collect())
            .collect();
        let halved: Vec<Vec<(Vec<f16>, Vec<f16>)>> = layers
            .iter()
            .map(|heads| heads.iter().map(|(k, v)| (halves(k.clone()), halves(v.clone()))).collect())
            .collect();
        let mut mass = vec![vec![0.0f32; n]; SHAPE.kv_heads];
        let ms = pools.each_ref().map(|p| {
            p.install(|| {
                best_ms(rounds, || {
                    for heads in &layers {
                        let views: Vec<KvView<'_>> = heads.iter().map(|(k, v)| KvView { keys: k, values: v }).collect();
                        attend_observed(SHAPE, Queries::new(&q, q.len(), 1), &views, &mut attn_out, Some(&mut mass));
                    }
                })
            })
        });
        row(&format!("attention ×30 layers over {n} tokens, f32 cache (with mass)"), ms);
        let ms = pools.each_ref().map(|p| {
            p.install(|| {
                best_ms(rounds, || {
                    for heads in &halved {
                        let views: Vec<KvView<'_, f16>> =
                            heads.iter().map(|(k, v)| KvView { keys: k, values: v }).collect();
                        assert!(attend_observed_half(SHAPE, Queries::new(&q, q.len(), 1), &views, &mut attn_out, None));
                    }
                })
            })
        });
        row(&format!("attention ×30 layers over {n} tokens, f16 cache"), ms);
    }
}
