//! The GPU memory of a training step, planned from (config, batch, sequence) before anything is
//! allocated: what `prefer bench train` prints, and `--plan-only` prints without a GPU.
//!
//! Each line counts the buffers src/model/llama.rs asks the backend for (bf16 activations, f32
//! statistics and gradients) and the CUDA engine's own workspaces, at their peak: the forward's
//! saved tensors are all alive when the backward starts, and the backward's scratch is shared by
//! all layers. A test on the software GPU holds this plan to the bytes a step really allocates.

use crate::model::param_units::{ParamUnits, OUTER};
use crate::model::{LlamaConfig, ParamLayout};
use crate::ops::cuda::logprob::VOCAB_CHUNK;
use crate::train::fsdp::ShardLayout;

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes per category, and the total.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryPlan {
    pub lines: Vec<(&'static str, u64)>,
    pub total: u64,
}

impl MemoryPlan {
    /// A training step of `batch` × `seq` tokens on one model with AdamW; with `recompute`, only
    /// the layer inputs are kept through the forward.
    pub fn training(cfg: &LlamaConfig, batch: usize, seq: usize, recompute: bool) -> MemoryPlan {
        let params = ParamLayout::new(cfg).len as u64;
        let n = (batch * seq) as u64;
        let (d, f) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
        let (qd, kvd) = (cfg.q_dim() as u64, cfg.kv_dim() as u64);
        let (layers, heads) = (cfg.num_hidden_layers as u64, cfg.num_attention_heads as u64);
        let (bf16, f32) = (2u64, 4u64);

        // One layer's saved tensors (LayerCache): xn1, q, k, v, att, x_mid, xn2, gate, up, act in
        // bf16; rstd1, lse, rstd2 in f32.
        let layer_cache =
            bf16 * n * (d + qd + 2 * kvd + qd + d + d + 3 * f) + f32 * (2 * n + n * heads);
        let layer_input = bf16 * n * d;
        let kept_layers = layers * layer_input + if recompute { 0 } else { layers * layer_cache };
        // After the layers: x_last and h_f (bf16), rstd_f, log-probs, entropies, lse (f32), and
        // the batch's ids, targets, positions, mask and token groups (tokens, starts, first
        // chunks, positions, chunk bounds).
        let heads_and_inputs = bf16 * 2 * n * d + f32 * 4 * n + 4 * (7 * n + 2 * (n / 32 + 1)) + n;
        // The backward's scratch, shared by the layers: dh, dx, dxn (f32); dx_act, dact, dgate,
        // dup, datt, dq, dk, dv (bf16); under recompute also one rebuilt layer, its projection
        // and its output.
        let backward = f32 * 3 * n * d
            + bf16 * n * (d + 3 * f + 2 * qd + 2 * kvd)
            + if recompute {
                layer_cache + 2 * layer_input
            } else {
                0
            };
        // The fused log-prob's vocabulary chunk (f32 logits and bf16 gradients), attention's
        // row dots, the norm weights' column sums (rows, then chunk sums), the embedding
        // backward's chunk sums, cuBLASLt's workspace.
        let column_sums = f32 * d * (n + n.div_ceil(n.div_ceil(128).max(32)));
        let workspace = n * VOCAB_CHUNK as u64 * (f32 + bf16)
            + f32 * n * heads
            + column_sums
            + f32 * (n / 32 + 1) * d
            + (32 << 20);

        let lines = vec![
            ("weights (bf16)", bf16 * params),
            ("master weights (f32)", f32 * params),
            ("AdamW moments (2 x f32)", 2 * f32 * params),
            ("gradients (f32)", f32 * params),
            (
                "activations kept for the backward",
                kept_layers + heads_and_inputs,
            ),
            ("backward scratch", backward),
            ("workspace", workspace),
        ];
        let total = lines.iter().map(|(_, b)| b).sum();
        MemoryPlan { lines, total }
    }

    /// The plan of one rank of `ranks` under `--shard optimizer`: its slice of the fp32 master
    /// weights and AdamW moments (the slices differ by at most one parameter).
    pub fn optimizer_sharded(mut self, ranks: usize) -> MemoryPlan {
        for line in &mut self.lines {
            if line.0.starts_with("master weights") || line.0.starts_with("AdamW moments") {
                line.1 = line.1.div_ceil(ranks.max(1) as u64);
            }
        }
        self.total = self.lines.iter().map(|(_, b)| b).sum();
        self
    }

    /// The plan of one rank of `ranks` under `--shard full` (FSDP): its shard of the bf16
    /// weights, masters, moments and gradients (each unit padded to equal pieces), and what the
    /// gathers hold at their peak, in the backward: the outer unit (embedding, final norm,
    /// heads) with its f32 gradient, a layer being differentiated and the next one gathering
    /// (bf16), the layer's f32 gradient and the one above's still being reduce-scattered, and
    /// the scatter's piece.
    pub fn fully_sharded(mut self, cfg: &LlamaConfig, ranks: usize) -> MemoryPlan {
        // The shard and the gathered buffers are src/train/fsdp.rs's own (padded pieces).
        let lay = shard_layout(cfg, ranks);
        let shard = lay.len as u64;
        let units = lay.units.count();
        let outer = lay.gathered_len(OUTER) as u64;
        let layer = (1..units).map(|u| lay.gathered_len(u)).max().unwrap_or(0) as u64;
        let ranks = lay.size as u64;
        let (bf16, f32) = (2u64, 4u64);
        for line in &mut self.lines {
            line.1 = match line.0 {
                "weights (bf16)" => bf16 * shard,
                "master weights (f32)" | "gradients (f32)" => f32 * shard,
                "AdamW moments (2 x f32)" => 2 * f32 * shard,
                _ => line.1,
            };
        }
        self.lines.insert(
            4,
            (
                "gathered units and their gradients",
                bf16 * (outer + 2 * layer)
                    + f32 * (outer + 2 * layer)
                    + f32 * (outer.max(layer) / ranks),
            ),
        );
        self.total = self.lines.iter().map(|(_, b)| b).sum();
        self
    }

    /// A PPO iteration: the policy and (for PPO) the value model trained, the reference and the
    /// reward model frozen in bf16, all on one engine, so the biggest phase sets the activations:
    /// a training micro-batch of `micro` sequences of `seq` tokens (policy or value; the scoring
    /// passes are forward-only and smaller), or the rollouts' KV cache of `kv_tokens` tokens.
    pub fn ppo(
        policy: &LlamaConfig,
        value: Option<&LlamaConfig>,
        reward: Option<&LlamaConfig>,
        micro: usize,
        seq: usize,
        kv_tokens: usize,
        recompute: bool,
        optimizer_shards: usize,
    ) -> MemoryPlan {
        let params = |c: &LlamaConfig| ParamLayout::new(c).len as u64;
        // bf16 weights and f32 gradients whole; f32 masters and moments split under
        // --shard optimizer.
        let state = |c: &LlamaConfig| {
            6 * params(c) + (12 * params(c)).div_ceil(optimizer_shards.max(1) as u64)
        };
        let step = |c: &LlamaConfig| {
            let plan = MemoryPlan::training(c, micro, seq, recompute);
            plan.lines[4..].iter().map(|(_, b)| b).sum::<u64>()
        };
        let kv = 2 * 2 * (kv_tokens * policy.kv_dim() * policy.num_hidden_layers) as u64;
        let lines = vec![
            ("policy (bf16 + f32 master, grads, AdamW)", state(policy)),
            ("value model (the same)", value.map_or(0, state)),
            ("reference (bf16)", 2 * params(policy)),
            ("reward model (bf16)", reward.map_or(0, |c| 2 * params(c))),
            (
                "activations: largest micro-batch",
                step(policy).max(value.map_or(0, step)),
            ),
            ("rollouts' KV cache", kv),
        ];
        let total = lines[..4].iter().map(|(_, b)| b).sum::<u64>() + lines[4].1.max(lines[5].1);
        MemoryPlan { lines, total }
    }

    /// One rank's plan of a PPO iteration over `ranks` ranks under `shard`: [`MemoryPlan::ppo`]
    /// or [`MemoryPlan::ppo_fully_sharded`].
    #[allow(clippy::too_many_arguments)]
    pub fn ppo_under(
        shard: crate::train::run_args::Shard,
        ranks: usize,
        policy: &LlamaConfig,
        value: Option<&LlamaConfig>,
        reward: Option<&LlamaConfig>,
        micro: usize,
        seq: usize,
        kv_tokens: usize,
        recompute: bool,
    ) -> MemoryPlan {
        use crate::train::run_args::Shard;
        match (shard, ranks) {
            (Shard::Full, 2..) => MemoryPlan::ppo_fully_sharded(
                policy, value, reward, micro, seq, kv_tokens, recompute, ranks,
            ),
            (Shard::Optimizer, _) => MemoryPlan::ppo(
                policy, value, reward, micro, seq, kv_tokens, recompute, ranks,
            ),
            _ => MemoryPlan::ppo(policy, value, reward, micro, seq, kv_tokens, recompute, 1),
        }
    }

    /// A PPO iteration's plan for one rank of `ranks` under `--shard full`: every model's shard
    /// (the trained ones at 18 bytes a parameter, the frozen ones at 2), then the largest of three
    /// phases that take turns with the same recycled buffers: training (a micro-batch of `micro` ×
    /// `seq` tokens with the units it gathers), scoring (a frozen model's forward, counted with
    /// a backward's buffers too) and the rollouts (the policy's whole generation copy and the KV
    /// cache of `kv_tokens` tokens: the hybrid engine).
    #[allow(clippy::too_many_arguments)]
    pub fn ppo_fully_sharded(
        policy: &LlamaConfig,
        value: Option<&LlamaConfig>,
        reward: Option<&LlamaConfig>,
        micro: usize,
        seq: usize,
        kv_tokens: usize,
        recompute: bool,
        ranks: usize,
    ) -> MemoryPlan {
        let shard = |c: &LlamaConfig| shard_layout(c, ranks).len as u64;
        // A step's activations, scratch and workspace, with what its gathers hold.
        let phase = |c: &LlamaConfig| {
            let plan = MemoryPlan::training(c, micro, seq, recompute).fully_sharded(c, ranks);
            plan.lines[4..].iter().map(|(_, b)| b).sum::<u64>()
        };
        let whole = |c: &LlamaConfig| ParamLayout::new(c).len as u64;
        let kv = 2 * 2 * (kv_tokens * policy.kv_dim() * policy.num_hidden_layers) as u64;
        let lines = vec![
            (
                "policy shard (bf16 + f32 master, grads, AdamW)",
                18 * shard(policy),
            ),
            (
                "value model shard (the same)",
                value.map_or(0, |c| 18 * shard(c)),
            ),
            ("reference shard (bf16)", 2 * shard(policy)),
            (
                "reward model shard (bf16)",
                reward.map_or(0, |c| 2 * shard(c)),
            ),
            (
                "training: a micro-batch and its gathered units",
                phase(policy).max(value.map_or(0, phase)),
            ),
            ("scoring: a frozen model's forward", reward.map_or(0, phase)),
            (
                "rollouts: the policy's whole copy and KV cache",
                2 * whole(policy) + kv,
            ),
        ];
        let total = lines[..4].iter().map(|(_, b)| b).sum::<u64>()
            + lines[4].1.max(lines[5].1).max(lines[6].1);
        MemoryPlan { lines, total }
    }

    /// The plan as a table, one line per category and a `total` line, in GiB (MiB for a plan
    /// under 1 GiB). (A PPO plan's total counts the larger of its activations and KV cache: they
    /// take turns with the same recycled buffers.)
    pub fn render(&self, title: &str) -> String {
        let (unit, scale) = match self.total as f64 >= GIB {
            true => ("GiB", GIB),
            false => ("MiB", (1u64 << 20) as f64),
        };
        let mut s = format!("memory plan: {title}\n");
        for (name, bytes) in self.lines.iter().chain([&("total", self.total)]) {
            s += &format!("  {name:<48} {:>8.2} {unit}\n", *bytes as f64 / scale);
        }
        s
    }

    pub fn total_gib(&self) -> f64 {
        self.total as f64 / GIB
    }
}

/// Where one rank's shard of `cfg`'s weights sits under `--shard full` over `ranks` ranks (every
/// rank's is the same length).
fn shard_layout(cfg: &LlamaConfig, ranks: usize) -> ShardLayout {
    ShardLayout::new(ParamUnits::new(&ParamLayout::new(cfg)), 0, ranks.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_1b_at_8x1024_fits_t1s_30_gib_with_recompute() {
        let cfg = LlamaConfig::preset("llama-1b").unwrap();
        let full = MemoryPlan::training(&cfg, 8, 1024, false);
        let recompute = MemoryPlan::training(&cfg, 8, 1024, true);
        assert!(
            recompute.total_gib() <= 30.0,
            "{}",
            recompute.render("recompute")
        );
        assert!(
            full.total_gib() > recompute.total_gib() + 5.0,
            "{}",
            full.render("full")
        );
        // The state is 18 bytes a parameter.
        let params = ParamLayout::new(&cfg).len as u64;
        let state: u64 = full.lines[..4].iter().map(|(_, b)| b).sum();
        assert_eq!(state, 18 * params);
        // Over 8 ranks with --shard optimizer: 6 bytes a parameter whole, 12 split.
        let sharded = full.clone().optimizer_sharded(8);
        let state: u64 = sharded.lines[..4].iter().map(|(_, b)| b).sum();
        assert!(state.abs_diff(6 * params + 12 * params / 8) <= 8, "{state}");
        assert_eq!(full.total - sharded.total, 18 * params - state);
    }

    /// Issue 21's anchor: Tulu 2 13B on 8 ranks under --shard full, 1 × 2048 with --recompute,
    /// fits 40 GiB a rank; the state is 18/8 bytes a parameter (and the units' padding).
    #[test]
    fn llama_2_13b_fully_sharded_over_8_ranks_fits_40_gib() {
        let cfg = LlamaConfig::preset("llama-2-13b").unwrap();
        let whole = MemoryPlan::training(&cfg, 1, 2048, true);
        let full = whole.clone().fully_sharded(&cfg, 8);
        assert!(full.total_gib() <= 40.0, "{}", full.render("13B"));
        assert!(full.render("13B").contains("\n  total "));
        let params = ParamLayout::new(&cfg).len as u64;
        let state: u64 = full.lines[..4].iter().map(|(_, b)| b).sum();
        let units = 1 + cfg.num_hidden_layers as u64;
        assert!(
            state >= 18 * params / 8 && state <= 18 * (params / 8 + units),
            "{state}"
        );
        // One rank of one keeps everything, plus what the gathers hold.
        let one = whole.clone().fully_sharded(&cfg, 1);
        let kept: u64 = one.lines[..4].iter().map(|(_, b)| b).sum();
        assert_eq!(kept, 18 * params);
    }

    /// Issue 21's PPO anchor: a 13B policy, value, reference and reward model fully sharded over
    /// 16 ranks fits 70 GiB a rank, with 64 rollouts of 128 + 256 tokens (4 a rank) in
    /// micro-batches of 8.
    #[test]
    fn ppo_with_four_13b_models_fully_sharded_over_16_ranks_fits_70_gib() {
        let policy = LlamaConfig::preset("llama-2-13b").unwrap();
        let mut critic = policy.clone();
        critic.scalar_head = true;
        let plan = MemoryPlan::ppo_fully_sharded(
            &policy,
            Some(&critic),
            Some(&critic),
            8,
            384,
            64 * 384 / 16,
            true,
            16,
        );
        assert!(
            plan.total_gib() <= 70.0,
            "{}",
            plan.render("ppo 13B x4 / 16")
        );
        // The rollouts' phase holds the whole policy in bf16: 24.2 GiB of it.
        let params = ParamLayout::new(&policy).len as u64;
        assert!(plan.lines[6].1 >= 2 * params);
    }

    #[test]
    fn t6s_ppo_iteration_plan() {
        // DESIGN.md's T6: four llama-1b models, 64 prompts x (128 + 256), minibatches of 16.
        let cfg = LlamaConfig::preset("llama-1b").unwrap();
        let plan = |recompute| {
            MemoryPlan::ppo(
                &cfg,
                Some(&cfg),
                Some(&cfg),
                16,
                384,
                64 * 400,
                recompute,
                1,
            )
        };
        let (full, rc) = (plan(false), plan(true));
        // Two trained models at 18 bytes a parameter dominate: 41.5 GiB before activations.
        let params = ParamLayout::new(&cfg).len as u64;
        assert_eq!(full.lines[0].1 + full.lines[1].1, 36 * params);
        assert!(
            rc.total < full.total,
            "{}\n{}",
            full.render("full"),
            rc.render("recompute")
        );
        assert!(
            full.total_gib() < 62.6,
            "PyTorch's loop takes 62.6 GiB: {}",
            full.render("T6")
        );
    }
}
