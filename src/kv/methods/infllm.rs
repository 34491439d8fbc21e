//! `infllm-Nx`: sinks, a local window, and retrieved blocks of the distant past.
//!
//! Paper: Xiao et al., "InfLLM: Training-Free Long-Context Extrapolation for LLMs with an
//! Efficient Context Memory", NeurIPS 2024 (arXiv 2402.04617). Reference implementation:
//! thunlp/InfLLM (`inf_llm/attention/context_manager.py`). Settings, as the reference study ran
//! it (Yuan et al. 2024, longctx_bench): of the budget (prompt tokens / ratio), **sinks 2.1%,
//! local window 65.5%, retrieved blocks 32.4%**; **blocks of 128 tokens with 4 representative
//! tokens** each. Tokens that leave the local window are grouped into blocks in position order;
//! a block's representatives are the 4 tokens that had received the most attention while they
//! were attended (InfLLM's representative score); for each chunk of queries (each decode step,
//! each prefill chunk) the blocks whose representative keys have the largest dot product with the
//! queries are read, up to the retrieved share. When the retrieved share is under one block
//! (small budgets), one block of that many tokens is used instead. Acts from the first prefill
//! chunk (InfLLM is a chunked-prefill method); each chunk also attends to itself causally.
//! Tokens past the window that do not yet fill a block stay in the local window until they do,
//! so a step reads up to `block − 1` tokens more than the budget (as InfLLM, which offloads whole
//! blocks); the bytes read are reported as read.
//!
//! Positions: every token is read at its own position (the cache is post-RoPE), and blocks are
//! ranked per kv head. The reference gives every memory token (sinks, retrieved blocks) one
//! distance, `n_local`, and ranks blocks once per layer; see docs/METHODS.md, "Positions".
//! `infllm-ref-Nx` ([`Ranking::Reference`]) ranks blocks as the reference does — position-free,
//! the representatives' keys un-rotated against the queries rotated to the window's length less
//! one, summed over every head, one choice per layer — and still attends at original positions; it is
//! not in the trial matrix, it is there to measure what the ranking changes (`kvbench fidelity`,
//! `kvbench compare`).
//!
//! Nothing is freed: bytes held are the full fp16 cache, the attention scores kept for choosing
//! representatives and the representatives' indices; what InfLLM saves is bytes **read** per step.

use serde_json::json;

use super::Budget;
use crate::kv::attention::{Heads, Queries};
use crate::kv::evict::top_with_protected;
use crate::kv::rope;
use crate::kv::tokens::TokenRows;
use crate::kv::{LayerStore, Method, Phase, StoreContext, StoreFactory};

/// Shares of the budget: sinks, local window, retrieved blocks.
pub const SHARES: (f64, f64, f64) = (0.021, 0.655, 0.324);
/// Tokens per block.
pub const BLOCK: usize = 128;
/// Representative tokens per block.
pub const REPRESENTATIVES: usize = 4;

/// InfLLM.
#[derive(Debug, Clone, Copy)]
pub struct InfLlm {
    /// Token budget.
    pub budget: Budget,
    /// How blocks are ranked.
    pub ranking: Ranking,
}

/// How blocks are ranked for retrieval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranking {
    /// Per kv head, by the product of the chunk's queries with the representatives' keys, both at
    /// their own positions: the logits the model's attention would give them (`infllm-Nx`).
    OwnPositions,
    /// As thunlp/InfLLM ranks: representatives' keys un-rotated (position 0) against the queries
    /// rotated to the window's length less one (its `n_local − 1`), summed over every head; one
    /// choice for the layer (`infllm-ref-Nx`). The representatives are still chosen per kv head
    /// from the attention its query heads gave (the reference chooses them per query head).
    Reference,
}

/// How a budget splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Leading tokens always read.
    pub sinks: usize,
    /// Recent tokens always read (before the current chunk).
    pub window: usize,
    /// Blocks read per step.
    pub blocks: usize,
    /// Tokens per block.
    pub block: usize,
}

impl Plan {
    /// The split of `budget` tokens.
    pub fn new(budget: usize) -> Self {
        let b = budget as f64;
        let sinks = ((b * SHARES.0).round() as usize).max(1);
        let retrieved = (b * SHARES.2).floor() as usize;
        let blocks = (retrieved / BLOCK).max(1);
        let block = (retrieved / blocks).clamp(REPRESENTATIVES, BLOCK);
        let window = budget.saturating_sub(sinks + blocks * block);
        Self { sinks, window, blocks, block }
    }
}

impl Method for InfLlm {
    fn name(&self) -> String {
        match self.ranking {
            Ranking::OwnPositions => format!("infllm-{}", self.budget.suffix()),
            Ranking::Reference => format!("infllm-ref-{}", self.budget.suffix()),
        }
    }

    fn settings(&self) -> serde_json::Value {
        let mut settings = json!({ "budget": self.budget.settings(), "sink_share": SHARES.0, "window_share": SHARES.1,
                "retrieved_share": SHARES.2, "block": BLOCK, "representatives": REPRESENTATIVES,
                "applies_to_prefill": true });
        if self.ranking == Ranking::Reference {
            settings["ranking"] = json!("reference");
        }
        settings
    }

    fn description(&self) -> String {
        let ranking = match self.ranking {
            Ranking::Reference => {
                "blocks ranked position-free, summed over heads, one choice per layer (thunlp/InfLLM)"
            }
            Ranking::OwnPositions => "blocks ranked per kv head by their keys at their own positions",
        };
        format!("sinks, a recent window and retrieved blocks of {BLOCK} tokens by their representative keys; {ranking}")
    }

    fn nominal_ratio(&self) -> Option<f64> {
        self.budget.nominal()
    }

    fn phase(&self) -> Phase<'_> {
        Phase::DuringPrefill(self)
    }
}

impl StoreFactory for InfLlm {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        let plan = Plan::new(self.budget.tokens(ctx.compressed_tokens));
        Box::new(InfLlmStore {
            rows: TokenRows::new(ctx.shape),
            mass: vec![Vec::new(); ctx.shape.kv_heads],
            reps: vec![Vec::new(); ctx.shape.kv_heads],
            unrotated: vec![Vec::new(); ctx.shape.kv_heads],
            ranking: self.ranking,
            rope_base: ctx.rope_base,
            rope_style: ctx.rope_style,
            plan,
            read: 0,
            last_read: Vec::new(),
        })
    }
}

/// Every token in fp16, the attention each received, and each complete block's representatives.
#[derive(Debug, Clone)]
pub struct InfLlmStore {
    rows: TokenRows,
    mass: Vec<Vec<f32>>,
    reps: Vec<Vec<u32>>,
    /// [`Ranking::Reference`]: per kv head, each block's representative keys un-rotated and
    /// summed (`head_dim` values a block).
    unrotated: Vec<Vec<f32>>,
    ranking: Ranking,
    rope_base: f32,
    rope_style: rope::Style,
    plan: Plan,
    read: usize,
    /// Rows the last attention read, per head (for measurement, not part of the cache).
    last_read: Vec<Vec<usize>>,
}

impl InfLlmStore {
    /// Per kv head, the rows the chunk's `t` queries read.
    fn select(&mut self, q: &[f32], q_stride: usize, t: usize) -> Vec<Vec<usize>> {
        let Heads { heads, kv_heads, head_dim: d } = self.rows.shape;
        let Plan { sinks, window, blocks, block } = self.plan;
        let group = heads / kv_heads;
        let n = self.rows.heads[0].len();
        let chunk = n - t;
        // Before the chunk: the sinks, the complete blocks of the middle, and the local window,
        // which reaches back to the first token not yet in a complete block (so it holds between
        // `window` and `window + block − 1` tokens, as InfLLM's offloading in whole blocks does).
        let window_start = chunk.saturating_sub(window).max(sinks).min(chunk);
        let complete = window_start.saturating_sub(sinks) / block;
        let local_start = (sinks + complete * block).min(window_start);
        for g in 0..kv_heads {
            // representatives of blocks completed since the last step
            while self.reps[g].len() / REPRESENTATIVES < complete {
                let b = self.reps[g].len() / REPRESENTATIVES;
                let start = sinks + b * block;
                let keep = top_with_protected(&self.mass[g][start..start + block], REPRESENTATIVES, |_| false);
                let chosen: Vec<usize> = (0..block).filter(|&i| keep[i]).map(|i| start + i).collect();
                if self.ranking == Ranking::Reference {
                    let head = &self.rows.heads[g];
                    let mut sum = vec![0.0f32; d];
                    for &i in &chosen {
                        let mut k = head.key(i);
                        rope::apply_style(&mut k, d, -i64::from(head.positions()[i]), self.rope_base, self.rope_style);
                        sum.iter_mut().zip(&k).for_each(|(s, x)| *s += x);
                    }
                    self.unrotated[g].extend(sum);
                }
                self.reps[g].extend(chosen.iter().map(|&i| i as u32));
            }
        }
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        // per kv head, each complete block's score
        let scores: Vec<Vec<f32>> = match self.ranking {
            Ranking::OwnPositions => (0..kv_heads)
                .map(|g| {
                    let head = &self.rows.heads[g];
                    let mut qsum = vec![0.0f32; d];
                    for j in 0..t {
                        for h in g * group..(g + 1) * group {
                            qsum.iter_mut().zip(&q[j * q_stride + h * d..][..d]).for_each(|(s, x)| *s += x);
                        }
                    }
                    self.reps[g]
                        .chunks_exact(REPRESENTATIVES)
                        .map(|r| r.iter().map(|&i| dot(&head.key(i as usize), &qsum)).sum())
                        .collect()
                })
                .collect(),
            Ranking::Reference => {
                // every memory token at one distance from each query: R(window − 1 − p) q (the
                // reference rotates queries to angle index n_local − 1 against un-rotated keys)
                let positions = self.rows.heads[0].positions();
                let mut qsum = vec![vec![0.0f32; d]; kv_heads];
                for j in 0..t {
                    let mut row = q[j * q_stride..][..heads * d].to_vec();
                    rope::apply_style(
                        &mut row,
                        d,
                        window as i64 - 1 - i64::from(positions[chunk + j]),
                        self.rope_base,
                        self.rope_style,
                    );
                    for (h, x) in row.chunks_exact(d).enumerate() {
                        qsum[h / group].iter_mut().zip(x).for_each(|(s, x)| *s += x);
                    }
                }
                let layer: Vec<f32> = (0..complete)
                    .map(|b| (0..kv_heads).map(|g| dot(&self.unrotated[g][b * d..][..d], &qsum[g])).sum())
                    .collect();
                vec![layer; kv_heads]
            }
        };
        scores
            .iter()
            .map(|scores| {
                let chosen = top_with_protected(scores, blocks, |_| false);
                let mut rows: Vec<usize> = (0..sinks.min(local_start)).collect();
                for (b, _) in chosen.iter().enumerate().filter(|(_, c)| **c) {
                    rows.extend(sinks + b * block..sinks + (b + 1) * block);
                }
                rows.extend(local_start..n);
                rows
            })
            .collect()
    }
}

impl LayerStore for InfLlmStore {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        self.rows.append(keys, values, t);
        self.mass.iter_mut().for_each(|m| m.resize(m.len() + t, 0.0));
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        let select = self.select(q, q_stride, t);
        let mut mass: Vec<Vec<f32>> = select.iter().map(|s| vec![0.0; s.len()]).collect();
        self.rows.attend_selected(Some(&select), Queries::new(q, q_stride, t), out, Some(&mut mass));
        for ((acc, m), s) in self.mass.iter_mut().zip(&mass).zip(&select) {
            s.iter().zip(m).for_each(|(&i, &p)| acc[i] += p);
        }
        let d = self.rows.shape.head_dim;
        // the representatives' keys read for ranking: f16 keys, or one summed f32 key a block
        let reps: usize = match self.ranking {
            Ranking::OwnPositions => self.reps.iter().map(|r| r.len() * d * 2).sum(),
            Ranking::Reference => self.unrotated.iter().map(|u| u.len() * 4).sum(),
        };
        self.read = reps + self.rows.heads.iter().zip(&select).map(|(h, s)| h.row_bytes(s.len())).sum::<usize>();
        self.last_read = select;
    }

    fn bytes(&self) -> usize {
        let side: usize = self.mass.iter().map(|m| m.len() * 4).sum::<usize>()
            + self.reps.iter().map(|r| r.len() * 4).sum::<usize>()
            + self.unrotated.iter().map(|u| u.len() * 4).sum::<usize>();
        self.rows.bytes() + side
    }

    fn bytes_read(&self) -> usize {
        self.read
    }

    fn tokens(&self) -> usize {
        self.rows.tokens()
    }

    fn visible(&self, g: usize) -> Option<Vec<u32>> {
        self.last_read.get(g).map(|rows| rows.iter().map(|&i| self.rows.heads[g].positions()[i]).collect())
    }

    fn clone_box(&self) -> Box<dyn LayerStore> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_follows_the_study_shares() {
        assert_eq!(Plan::new(2000), Plan { sinks: 42, window: 1318, blocks: 5, block: 128 });
        let small = Plan::new(300);
        assert_eq!((small.blocks, small.block), (1, 97));
        assert_eq!(small.sinks + small.window + small.blocks * small.block, 300);
    }

    #[test]
    fn reads_sinks_window_and_the_matching_block_within_budget() {
        let shape = Heads { heads: 1, kv_heads: 1, head_dim: 4 };
        let method = InfLlm { budget: Budget::Tokens(400), ranking: Ranking::OwnPositions };
        let ctx = StoreContext::for_tests(shape, 2000);
        let plan = Plan::new(400);
        let mut store = method.layer_store(&ctx);
        let n = 1500;
        let mut keys = vec![0.0f32; n * 4];
        // a distinctive key deep in the past
        keys[700 * 4..701 * 4].fill(3.0);
        let values = keys.clone();
        let mut out = vec![0.0; 500 * 4];
        for c in 0..3 {
            store.append(&keys[c * 2000..(c + 1) * 2000], &values[c * 2000..(c + 1) * 2000], 500);
            store.attend(&[1.0; 2000], 4, 500, &mut out);
        }
        store.append(&[0.0; 4], &[0.0; 4], 1);
        store.attend(&[1.0; 4], 4, 1, &mut out[..4]);
        assert!(out[0] > 0.5, "token 700's value reached the output: {:?}", &out[..4]);
        // at the decode step the window would start at 1500 − window; the local rows reach back to
        // the end of the last complete block
        let complete = (1500 - plan.window - plan.sinks) / plan.block;
        let local = 1501 - (plan.sinks + complete * plan.block);
        let rows_read = plan.sinks + plan.blocks * plan.block + local;
        // what the store says it read: the sinks, block 5 (token 700's), and the local rows
        let read = store.visible(0).unwrap();
        let block5 = plan.sinks + 5 * plan.block;
        let want: Vec<u32> =
            (0..plan.sinks).chain(block5..block5 + plan.block).chain(1501 - local..1501).map(|i| i as u32).collect();
        assert_eq!(read, want);
        let reps = complete * REPRESENTATIVES * 4 * 2;
        assert_eq!(store.bytes_read(), rows_read * 4 * 2 * 2 + reps);
    }

    #[test]
    fn reference_ranking_finds_a_key_by_its_unrotated_direction_for_every_head() {
        // Post-RoPE keys: zero but token 700's, whose un-rotated key is `dir` (all its energy in
        // the fastest-turning pair, so at its own position it points elsewhere: cos 700 < 0). The
        // decode query, un-rotated and carried to angle `window − 1`, is `dir` too. The reference
        // ranking must find block 5 for both kv heads, although the second head's keys are all
        // zero. A budget of 403 makes the window 267 tokens: cos 266 < 0, so a ranking that
        // left out the window's rotation would rank block 5 last as well.
        let (d, base) = (4, 10_000.0f32);
        let shape = Heads { heads: 2, kv_heads: 2, head_dim: d };
        let method = InfLlm { budget: Budget::Tokens(403), ranking: Ranking::Reference };
        assert_eq!(method.name(), "infllm-ref-403tok");
        let ctx = StoreContext { rope_base: base, ..StoreContext::for_tests(shape, 2000) };
        let plan = Plan::new(403);
        assert_eq!(plan.window, 267);
        let dir = [3.0f32, 0.0, 0.0, 0.0];
        let n = 1500;
        let mut keys = vec![0.0f32; n * 2 * d];
        let mut k700 = dir.to_vec();
        rope::apply(&mut k700, d, 700, base);
        assert!(k700[0] < 0.0, "at its own position the key points away: {k700:?}");
        keys[700 * 2 * d..][..d].copy_from_slice(&k700);
        // prefill queries that attend to token 700, so it becomes one of block 5's representatives
        let prefill_queries = [k700.as_slice(), &[0.0; 4]].concat().repeat(500);
        // prefill in three chunks, then one decode step whose query is `dir` rotated by `angle`
        let run = |method: InfLlm, angle: i64| {
            let mut store = method.layer_store(&ctx);
            let mut out = vec![0.0; 500 * 2 * d];
            for rows in keys.chunks_exact(500 * 2 * d) {
                store.append(rows, rows, 500);
                store.attend(&prefill_queries, 2 * d, 500, &mut out);
            }
            store.append(&[0.0; 8], &[0.0; 8], 1);
            let mut query = [dir, dir].concat();
            rope::apply(&mut query, d, angle, base);
            store.attend(&query, 2 * d, 1, &mut out[..2 * d]);
            store
        };
        let store = run(method, 1500 - (plan.window as i64 - 1));
        let block5 = (plan.sinks + 5 * plan.block) as u32;
        for g in 0..2 {
            let read = store.visible(g).unwrap();
            assert!(read.contains(&block5) && read.contains(&700), "head {g} read block 5: {read:?}");
        }
        // ranked at own positions with the query `dir` at its own position, block 5 scores below
        // the all-zero blocks (cos 800 < 0) and is not read
        let own = run(InfLlm { ranking: Ranking::OwnPositions, ..method }, 1500);
        assert!(!own.visible(0).unwrap().contains(&700));
    }
}

#[cfg(test)]
mod equivalence {
    use super::*;
    use crate::kv::methods::fp16::Fp16;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn a_budget_covering_the_prompt_reads_everything() {
        let shape = Heads { heads: 6, kv_heads: 2, head_dim: 8 };
        let ctx = StoreContext::for_tests(shape, 1000);
        let mut a = InfLlm { budget: Budget::Ratio(1.0), ranking: Ranking::OwnPositions }.layer_store(&ctx);
        let mut b = Fp16.layer_store(&ctx);
        let mut rng = StdRng::seed_from_u64(3);
        for t in [200, 200, 200, 200, 200, 1, 1] {
            let k: Vec<f32> = (0..t * 16).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let q: Vec<f32> = (0..t * 48).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let (mut oa, mut ob) = (vec![0.0; t * 48], vec![0.0; t * 48]);
            a.append(&k, &k, t);
            b.append(&k, &k, t);
            a.attend(&q, 48, t, &mut oa);
            b.attend(&q, 48, t, &mut ob);
            let gap = oa.iter().zip(&ob).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert_eq!(gap, 0.0, "t = {t}");
        }
    }
}
