//! The op set the Llama forward and backward are written over (DESIGN.md, principle 1). Its two
//! implementations: src/ops/cpu/backend.rs (the f32 oracle) and src/ops/cuda/backend.rs.
//!
//! Two kinds of buffer keep the precision plan visible in the model code:
//! - `Act`: activations, and gradients that only feed matmuls (bf16 on CUDA, f32 on the CPU);
//! - `Acc`: f32 on both: statistics (rstd, lse), head outputs, the residual stream's gradient,
//!   gradients that several matmuls add into, and the parameter gradients.
//!
//! Parameters are one flat buffer (`Params`) and parameter gradients one flat `Acc`; ops take a
//! tensor's `Range` in the layout. Ops that write a gradient say whether they overwrite it or
//! add to it (`+=`); the CPU oracle's functions always add, so the CPU backend zeroes first where
//! the contract says "written".

use super::batch::Batch;
use super::cpu::ppo_loss::{PolicyLossStats, ValueLossStats};
use super::cpu::{AttentionShape, DecodeShape, RopeSpec, SamplingParams};
use crate::loss::{DpoConfig, KlPenalty, PolicyLossConfig, ValueLossConfig};
use anyhow::Result;
use std::ops::Range;

pub trait Backend {
    type Act;
    type Acc;
    type Params;
    /// A batch's token ids, next-token targets, key mask and rotary positions, where ops read them.
    type Inputs;
    /// u32 indices where ops read them: block tables, context lengths, row maps.
    type Index;
    /// Recorded work that can be replayed (a CUDA graph); `()` where there are none.
    type Graph;

    /// An activation buffer, its contents undefined: every op writes the whole of its output.
    fn act(&self, n: usize) -> Result<Self::Act>;
    /// A zeroed accumulator.
    fn acc(&self, n: usize) -> Result<Self::Acc>;
    /// As `recycle_act`, for `index` buffers.
    fn recycle_index(&self, _x: Self::Index) {}
    /// Hands a buffer back for a later `act` of the same length, so a steady loop allocates
    /// nothing after its first step. Dropping it instead is always correct, only slower.
    fn recycle_act(&self, _x: Self::Act) {}
    /// As `recycle_act`, for `acc` and `to_device`.
    fn recycle_acc(&self, _x: Self::Acc) {}
    /// As `recycle_act`, for `inputs` of the same token count.
    fn recycle_inputs(&self, _x: Self::Inputs) {}
    /// Frees the buffers held for reuse: between phases that use different shapes (PPO's rollouts
    /// and its training), so the phases take turns with the memory instead of adding up.
    fn release_idle(&self) {}
    /// A step is over (an optimiser step, a prefill): buffers of lengths the last few steps did
    /// not use go back, so a run whose shapes change keeps only its recent shapes' buffers.
    fn retire(&self) {}
    fn zero(&self, x: &mut Self::Acc) -> Result<()>;
    /// An accumulator's values on the host (head outputs for the losses, which run there).
    fn to_host(&self, x: &Self::Acc) -> Result<Vec<f32>>;
    /// Host values as an accumulator (the losses' gradients on their way back).
    fn to_device(&self, x: &[f32]) -> Result<Self::Acc>;
    /// The batch's inputs, with `targets` [B·T] (the ids the log-probs are read at) and the rotary
    /// frequencies of `rope`.
    fn inputs(&self, rope: &RopeSpec, batch: &Batch, targets: &[u32]) -> Result<Self::Inputs>;
    fn index(&self, host: &[u32]) -> Result<Self::Index>;
    /// Overwrites an index buffer of the same length in place (a graph's inputs stay put).
    fn write_index(&self, dst: &mut Self::Index, host: &[u32]) -> Result<()>;
    /// Overwrites the ids, positions and mask of inputs made for a batch of the same shape, in
    /// place, for forward-only use (what the embedding backward reads is not updated).
    fn write_inputs(&self, inp: &mut Self::Inputs, batch: &Batch) -> Result<()>;
    /// Starts recording instead of running (CUDA stream capture); false, and nothing recorded,
    /// where the backend has no graphs.
    fn begin_capture(&self) -> Result<bool>;
    fn end_capture(&self) -> Result<Self::Graph>;
    fn replay(&self, graph: &Self::Graph) -> Result<()>;

    /// out[N,D] = table[ids]
    fn embedding_forward(
        &self,
        out: &mut Self::Act,
        inp: &Self::Inputs,
        p: &Self::Params,
        table: &Range<usize>,
        d: usize,
    ) -> Result<()>;
    /// grads[table] += Σ_n onehot(ids[n]) ⊗ dout[n]
    fn embedding_backward(
        &self,
        grads: &mut Self::Acc,
        table: &Range<usize>,
        dout: &Self::Acc,
        inp: &Self::Inputs,
        d: usize,
    ) -> Result<()>;
    /// out[N,D] = x·rstd·w, rstd[N] kept
    fn rmsnorm_forward(
        &self,
        out: &mut Self::Act,
        rstd: &mut Self::Acc,
        x: &Self::Act,
        p: &Self::Params,
        w: &Range<usize>,
        eps: f32,
    ) -> Result<()>;
    /// dx += …, grads[w] += …
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::Acc,
        grads: &mut Self::Acc,
        w: &Range<usize>,
        dout: &Self::Acc,
        x: &Self::Act,
        p: &Self::Params,
        rstd: &Self::Acc,
    ) -> Result<()>;
    /// out[N,O] = x[N,I]·Wᵀ (written)
    fn matmul_forward(
        &self,
        out: &mut Self::Act,
        x: &Self::Act,
        p: &Self::Params,
        w: &Range<usize>,
        n: usize,
        i: usize,
        o: usize,
    ) -> Result<()>;
    /// dx[N,I] = dout·W (written, `Act`), grads[w] += doutᵀ·x
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward(
        &self,
        dx: &mut Self::Act,
        grads: &mut Self::Acc,
        dout: &Self::Act,
        x: &Self::Act,
        p: &Self::Params,
        w: &Range<usize>,
        n: usize,
        i: usize,
        o: usize,
    ) -> Result<()>;
    /// dx[N,I] += dout·W (`Acc`, for inputs several matmuls read), grads[w] += doutᵀ·x
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward_add(
        &self,
        dx: &mut Self::Acc,
        grads: &mut Self::Acc,
        dout: &Self::Act,
        x: &Self::Act,
        p: &Self::Params,
        w: &Range<usize>,
        n: usize,
        i: usize,
        o: usize,
    ) -> Result<()>;
    /// In place on x[N, heads, hd]; the backward rotates back.
    fn rope_forward(&self, x: &mut Self::Act, inp: &Self::Inputs, heads: usize) -> Result<()>;
    fn rope_backward(&self, dx: &mut Self::Act, inp: &Self::Inputs, heads: usize) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        out: &mut Self::Act,
        lse: &mut Self::Acc,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        inp: &Self::Inputs,
        s: AttentionShape,
    ) -> Result<()>;
    /// dq, dk, dv written.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dq: &mut Self::Act,
        dk: &mut Self::Act,
        dv: &mut Self::Act,
        dout: &Self::Act,
        fwd: [&Self::Act; 4], // q, k, v, out
        lse: &Self::Acc,
        inp: &Self::Inputs,
        s: AttentionShape,
    ) -> Result<()>;
    /// out = a + b
    fn residual_forward(&self, out: &mut Self::Act, a: &Self::Act, b: &Self::Act) -> Result<()>;
    fn swiglu_forward(&self, out: &mut Self::Act, gate: &Self::Act, up: &Self::Act) -> Result<()>;
    /// dgate, dup written.
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Act,
        dup: &mut Self::Act,
        dout: &Self::Act,
        gate: &Self::Act,
        up: &Self::Act,
    ) -> Result<()>;
    /// logp, entropy, lse [N] of the logits z = scale·(h[N,D]·Wᵀ) (scale = 1/temperature).
    #[allow(clippy::too_many_arguments)]
    fn logprob_forward(
        &self,
        logp: &mut Self::Acc,
        entropy: &mut Self::Acc,
        lse: &mut Self::Acc,
        h: &Self::Act,
        p: &Self::Params,
        w: &Range<usize>,
        inp: &Self::Inputs,
        d: usize,
        scale: f32,
    ) -> Result<()>;
    /// dh += …, grads[w] += …
    #[allow(clippy::too_many_arguments)]
    fn logprob_backward(
        &self,
        dh: &mut Self::Acc,
        grads: &mut Self::Acc,
        w: &Range<usize>,
        dlogp: &Self::Acc,
        dentropy: Option<&Self::Acc>,
        h: &Self::Act,
        p: &Self::Params,
        inp: &Self::Inputs,
        stats: [&Self::Acc; 2], // lse, entropy
        d: usize,
        scale: f32,
    ) -> Result<()>;
    fn scalar_head_forward(
        &self,
        value: &mut Self::Acc,
        h: &Self::Act,
        p: &Self::Params,
        w: &Range<usize>,
    ) -> Result<()>;
    /// dh += dvalue ⊗ w, grads[w] += Σ dvalue·h
    #[allow(clippy::too_many_arguments)]
    fn scalar_head_backward(
        &self,
        dh: &mut Self::Acc,
        grads: &mut Self::Acc,
        w: &Range<usize>,
        dvalue: &Self::Acc,
        h: &Self::Act,
        p: &Self::Params,
    ) -> Result<()>;
    /// out = x, in the activation precision (the residual gradient on its way into a matmul).
    fn cast_to_act(&self, out: &mut Self::Act, x: &Self::Acc) -> Result<()>;

    // Generation (src/model/decode.rs).

    /// dst[pairs[m].1] = src[pairs[m].0] for m < `m`, rows of `width`; `pairs` is [M, 2].
    fn copy_rows(
        &self,
        dst: &mut Self::Act,
        src: &Self::Act,
        pairs: &Self::Index,
        m: usize,
        width: usize,
    ) -> Result<()>;
    /// out[B, H·hd] = attention of q[B, H·hd] over each sequence's paged cache.
    #[allow(clippy::too_many_arguments)]
    fn decode_attention(
        &self,
        out: &mut Self::Act,
        q: &Self::Act,
        k_cache: &Self::Act,
        v_cache: &Self::Act,
        block_table: &Self::Index,
        context_lens: &Self::Index,
        s: DecodeShape,
    ) -> Result<()>;
    /// logits[N, V] = h[N, D]·Wᵀ in f32, from the LM head the trainer's log-prob kernels read.
    #[allow(clippy::too_many_arguments)]
    fn lm_logits(
        &self,
        logits: &mut Self::Acc,
        h: &Self::Act,
        p: &Self::Params,
        w: &Range<usize>,
        n: usize,
        d: usize,
        v: usize,
    ) -> Result<()>;
    /// The DPO family on a micro-batch of pairs (src/train/dpo.rs): dlogp[2P·T] (written) =
    /// grad_scale · ∂(mean pair loss)/∂logp; `weights` [2P·T] are the response-token weights of
    /// `cfg.reduction()` (1, or 1/n for a mean); `reference` the frozen model's sequence
    /// log-probs [2P]. Per-pair results go to rows [P, 5] (`DpoPairs::from_rows`), where they
    /// stay until a training loop logs.
    #[allow(clippy::too_many_arguments)]
    fn dpo_loss(
        &self,
        dlogp: &mut Self::Acc,
        rows: &mut Self::Acc,
        logp: &Self::Acc,
        weights: &Self::Acc,
        reference: Option<&Self::Acc>,
        pairs: usize,
        t: usize,
        cfg: &DpoConfig,
        grad_scale: f32,
    ) -> Result<()>;

    /// The Bradley-Terry loss on a micro-batch of pairs (src/train/rm.rs): `dvalue` (zeroed by the
    /// caller) gets grad_scale · ∂(mean loss)/∂value at the reward tokens [2P] (chosen, then
    /// rejected); the mean loss and the rewards come back to the host.
    #[allow(clippy::too_many_arguments)]
    fn bradley_terry_loss(
        &self,
        dvalue: &mut Self::Acc,
        rows: &mut Self::Acc,
        value: &Self::Acc,
        token: &Self::Index,
        margin: Option<&Self::Acc>,
        pairs: usize,
        grad_scale: f32,
    ) -> Result<()>;

    // Online RL's losses (src/rl/trainer.rs), fused on the device.

    /// grad[N] (written) = grad_scale · ∂/∂logp of PPO's clipped policy loss at `logp`, plus
    /// GRPO's KL term β · token mean of k3(π ‖ π_ref) when `kl` brings the reference's log-probs
    /// and β. `weights` are the token-mean weights (1/count at completion tokens, 0 elsewhere):
    /// `cfg` must ask for the token mean and no dual clip. Returns the loss and metrics.
    #[allow(clippy::too_many_arguments)]
    fn ppo_policy_loss(
        &self,
        grad: &mut Self::Acc,
        logp: &Self::Acc,
        old_logp: &Self::Acc,
        advantages: &Self::Acc,
        weights: &Self::Acc,
        kl: Option<(&Self::Acc, KlPenalty)>,
        cfg: &PolicyLossConfig,
        grad_scale: f32,
    ) -> Result<PolicyLossStats>;
    /// grad[N] (written) = grad_scale · ∂/∂values of the clipped value loss at `values`, over
    /// the tokens where `weights` > 0.
    #[allow(clippy::too_many_arguments)]
    fn ppo_value_loss(
        &self,
        grad: &mut Self::Acc,
        values: &Self::Acc,
        old_values: &Self::Acc,
        returns: &Self::Acc,
        weights: &Self::Acc,
        cfg: &ValueLossConfig,
        grad_scale: f32,
    ) -> Result<ValueLossStats>;

    /// One token per row of logits[N, V], row r drawn with uniforms[r]: (ids, log-probs) on the
    /// host, where the scheduler needs them.
    fn sample(
        &self,
        logits: &Self::Acc,
        uniforms: &[f32],
        v: usize,
        p: SamplingParams,
    ) -> Result<(Vec<u32>, Vec<f32>)>;
}
