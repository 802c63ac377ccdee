//! The op set the Llama forward and backward are written over (DESIGN.md, principle 1), and its
//! CPU implementation. The CUDA implementation is src/ops/cuda/backend.rs.
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
use super::config::LlamaConfig;
use crate::loss::{DpoConfig, SeqReduction};
use crate::ops::cpu::ppo_loss::{PolicyLossParams, PolicyLossStats, ValueLossStats};
use crate::ops::cpu::{self, AttentionShape, DecodeShape, RopeTables, SamplingParams};
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
    fn inputs(&self, cfg: &LlamaConfig, batch: &Batch, targets: &[u32]) -> Result<Self::Inputs>;
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
    /// grad_scale · ∂(mean pair loss)/∂logp; `weights` [2P·T] are the response-token weights of the
    /// sequence reduction (1, or 1/n for a mean); `reference` the frozen model's sequence
    /// log-probs [2P]. Per-pair results go to rows [P, 5] (`DpoPairs::from_rows`), where they
    /// stay until a training loop logs.
    #[allow(clippy::too_many_arguments)]
    fn dpo_loss(
        &self,
        dlogp: &mut Self::Acc,
        rows: &mut Self::Acc,
        logp: &Self::Acc,
        weights: &Self::Acc,
        reduction: SeqReduction,
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

    /// grad[N] (written) = the scaled gradient of PPO's clipped policy loss at `logp` (+ GRPO's
    /// β·k3 term against `ref_logp` when `p.kl_coef > 0`); `weights` are the token-mean weights
    /// (1/count at completion tokens, 0 elsewhere). Returns the loss and metrics.
    #[allow(clippy::too_many_arguments)]
    fn ppo_policy_loss(
        &self,
        grad: &mut Self::Acc,
        logp: &Self::Acc,
        old_logp: &Self::Acc,
        advantages: &Self::Acc,
        weights: &Self::Acc,
        ref_logp: Option<&Self::Acc>,
        p: PolicyLossParams,
    ) -> Result<PolicyLossStats>;
    /// grad[N] (written) = the scaled gradient of the clipped value loss at `values`.
    #[allow(clippy::too_many_arguments)]
    fn ppo_value_loss(
        &self,
        grad: &mut Self::Acc,
        values: &Self::Acc,
        old_values: &Self::Acc,
        returns: &Self::Acc,
        weights: &Self::Acc,
        clip: Option<f32>,
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

/// The CPU oracle as a backend: f32 everywhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// What the CPU ops read of a batch.
pub struct CpuInputs {
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    pub mask: Vec<bool>,
    pub rope: RopeTables,
}

/// `n` zeros on the host, or an error naming the size: `vec![0.0; n]` aborts the process when
/// the allocator refuses, and sizes here come from input (prompt lengths, batch, the cache).
/// A large buffer is also checked against the host's available memory first: the allocator may
/// promise more than there is, and touching it would bring the OOM killer instead of an error.
fn host_zeros(n: usize) -> Result<Vec<f32>> {
    let bytes = n as u128 * 4;
    if bytes >= 256 << 20 {
        crate::model::memory_budget::ensure_fits_host(
            &format!("a host buffer of {n} f32 values"),
            bytes,
            "lower the batch, the sequence lengths, --max-new-tokens or --kv-memory",
        )?;
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|e| {
        anyhow::anyhow!(
            "allocating {n} f32 values ({}) on the host failed: {e}",
            crate::model::memory_budget::human_bytes(n as u128 * 4)
        )
    })?;
    v.resize(n, 0.0);
    Ok(v)
}

impl Backend for Cpu {
    type Act = Vec<f32>;
    type Acc = Vec<f32>;
    type Params = Vec<f32>;
    type Inputs = CpuInputs;
    type Index = Vec<u32>;
    type Graph = ();

    fn act(&self, n: usize) -> Result<Vec<f32>> {
        host_zeros(n)
    }
    fn acc(&self, n: usize) -> Result<Vec<f32>> {
        host_zeros(n)
    }
    fn zero(&self, x: &mut Vec<f32>) -> Result<()> {
        x.fill(0.0);
        Ok(())
    }
    fn to_host(&self, x: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(x.clone())
    }
    fn to_device(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(x.to_vec())
    }
    fn inputs(&self, cfg: &LlamaConfig, batch: &Batch, targets: &[u32]) -> Result<CpuInputs> {
        Ok(CpuInputs {
            ids: batch.ids.clone(),
            targets: targets.to_vec(),
            mask: batch.mask.clone(),
            rope: RopeTables::new(cfg, &batch.positions),
        })
    }
    fn index(&self, host: &[u32]) -> Result<Vec<u32>> {
        Ok(host.to_vec())
    }
    fn write_index(&self, dst: &mut Vec<u32>, host: &[u32]) -> Result<()> {
        dst.copy_from_slice(host);
        Ok(())
    }
    fn write_inputs(&self, inp: &mut CpuInputs, batch: &Batch) -> Result<()> {
        inp.ids.copy_from_slice(&batch.ids);
        inp.mask.copy_from_slice(&batch.mask);
        inp.rope.set_positions(&batch.positions);
        Ok(())
    }
    fn begin_capture(&self) -> Result<bool> {
        Ok(false)
    }
    fn end_capture(&self) -> Result<()> {
        anyhow::bail!("the CPU backend records no graphs")
    }
    fn replay(&self, _: &()) -> Result<()> {
        anyhow::bail!("the CPU backend records no graphs")
    }
    fn embedding_forward(
        &self,
        out: &mut Vec<f32>,
        inp: &CpuInputs,
        p: &Vec<f32>,
        table: &Range<usize>,
        d: usize,
    ) -> Result<()> {
        cpu::embedding_forward(out, &inp.ids, &p[table.clone()], d);
        Ok(())
    }
    fn embedding_backward(
        &self,
        grads: &mut Vec<f32>,
        table: &Range<usize>,
        dout: &Vec<f32>,
        inp: &CpuInputs,
        d: usize,
    ) -> Result<()> {
        cpu::embedding_backward(&mut grads[table.clone()], dout, &inp.ids, d);
        Ok(())
    }
    fn rmsnorm_forward(
        &self,
        out: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        x: &Vec<f32>,
        p: &Vec<f32>,
        w: &Range<usize>,
        eps: f32,
    ) -> Result<()> {
        cpu::rmsnorm_forward(out, rstd, x, &p[w.clone()], eps);
        Ok(())
    }
    fn rmsnorm_backward(
        &self,
        dx: &mut Vec<f32>,
        grads: &mut Vec<f32>,
        w: &Range<usize>,
        dout: &Vec<f32>,
        x: &Vec<f32>,
        p: &Vec<f32>,
        rstd: &Vec<f32>,
    ) -> Result<()> {
        cpu::rmsnorm_backward(dx, &mut grads[w.clone()], dout, x, &p[w.clone()], rstd);
        Ok(())
    }
    fn matmul_forward(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        p: &Vec<f32>,
        w: &Range<usize>,
        n: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        cpu::matmul_forward(out, x, &p[w.clone()], n, i, o);
        Ok(())
    }
    fn matmul_backward(
        &self,
        dx: &mut Vec<f32>,
        grads: &mut Vec<f32>,
        dout: &Vec<f32>,
        x: &Vec<f32>,
        p: &Vec<f32>,
        w: &Range<usize>,
        n: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        dx.fill(0.0);
        self.matmul_backward_add(dx, grads, dout, x, p, w, n, i, o)
    }
    fn matmul_backward_add(
        &self,
        dx: &mut Vec<f32>,
        grads: &mut Vec<f32>,
        dout: &Vec<f32>,
        x: &Vec<f32>,
        p: &Vec<f32>,
        w: &Range<usize>,
        n: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        cpu::matmul_backward(
            Some(dx),
            &mut grads[w.clone()],
            dout,
            x,
            &p[w.clone()],
            n,
            i,
            o,
        );
        Ok(())
    }
    fn rope_forward(&self, x: &mut Vec<f32>, inp: &CpuInputs, heads: usize) -> Result<()> {
        cpu::rope_forward(x, &inp.rope, heads);
        Ok(())
    }
    fn rope_backward(&self, dx: &mut Vec<f32>, inp: &CpuInputs, heads: usize) -> Result<()> {
        cpu::rope_backward(dx, &inp.rope, heads);
        Ok(())
    }
    fn attention_forward(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        inp: &CpuInputs,
        s: AttentionShape,
    ) -> Result<()> {
        cpu::attention_forward(out, lse, q, k, v, &inp.mask, s);
        Ok(())
    }
    fn attention_backward(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        dout: &Vec<f32>,
        [q, k, v, out]: [&Vec<f32>; 4],
        lse: &Vec<f32>,
        inp: &CpuInputs,
        s: AttentionShape,
    ) -> Result<()> {
        dq.fill(0.0);
        dk.fill(0.0);
        dv.fill(0.0);
        cpu::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, &inp.mask, s);
        Ok(())
    }
    fn residual_forward(&self, out: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>) -> Result<()> {
        cpu::residual_forward(out, a, b);
        Ok(())
    }
    fn swiglu_forward(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>) -> Result<()> {
        cpu::swiglu_forward(out, gate, up);
        Ok(())
    }
    fn swiglu_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
    ) -> Result<()> {
        dgate.fill(0.0);
        dup.fill(0.0);
        cpu::swiglu_backward(dgate, dup, dout, gate, up);
        Ok(())
    }
    fn logprob_forward(
        &self,
        logp: &mut Vec<f32>,
        entropy: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        h: &Vec<f32>,
        p: &Vec<f32>,
        w: &Range<usize>,
        inp: &CpuInputs,
        d: usize,
        scale: f32,
    ) -> Result<()> {
        cpu::logprob::logprob_forward_scaled(
            logp,
            entropy,
            lse,
            h,
            &p[w.clone()],
            &inp.targets,
            d,
            scale,
        );
        Ok(())
    }
    fn logprob_backward(
        &self,
        dh: &mut Vec<f32>,
        grads: &mut Vec<f32>,
        w: &Range<usize>,
        dlogp: &Vec<f32>,
        dentropy: Option<&Vec<f32>>,
        h: &Vec<f32>,
        p: &Vec<f32>,
        inp: &CpuInputs,
        [lse, entropy]: [&Vec<f32>; 2],
        d: usize,
        scale: f32,
    ) -> Result<()> {
        let dent = dentropy.map(|v| v.as_slice());
        cpu::logprob::logprob_backward_scaled(
            dh,
            &mut grads[w.clone()],
            dlogp,
            dent,
            h,
            &p[w.clone()],
            &inp.targets,
            lse,
            entropy,
            d,
            scale,
        );
        Ok(())
    }
    fn scalar_head_forward(
        &self,
        value: &mut Vec<f32>,
        h: &Vec<f32>,
        p: &Vec<f32>,
        w: &Range<usize>,
    ) -> Result<()> {
        cpu::scalar_head_forward(value, h, &p[w.clone()]);
        Ok(())
    }
    fn scalar_head_backward(
        &self,
        dh: &mut Vec<f32>,
        grads: &mut Vec<f32>,
        w: &Range<usize>,
        dvalue: &Vec<f32>,
        h: &Vec<f32>,
        p: &Vec<f32>,
    ) -> Result<()> {
        cpu::scalar_head_backward(dh, &mut grads[w.clone()], dvalue, h, &p[w.clone()]);
        Ok(())
    }
    fn cast_to_act(&self, out: &mut Vec<f32>, x: &Vec<f32>) -> Result<()> {
        out.copy_from_slice(x);
        Ok(())
    }
    fn copy_rows(
        &self,
        dst: &mut Vec<f32>,
        src: &Vec<f32>,
        pairs: &Vec<u32>,
        m: usize,
        width: usize,
    ) -> Result<()> {
        cpu::copy_rows(dst, src, &pairs[..2 * m], width);
        Ok(())
    }
    fn decode_attention(
        &self,
        out: &mut Vec<f32>,
        q: &Vec<f32>,
        k_cache: &Vec<f32>,
        v_cache: &Vec<f32>,
        block_table: &Vec<u32>,
        context_lens: &Vec<u32>,
        s: DecodeShape,
    ) -> Result<()> {
        cpu::decode_attention(out, q, k_cache, v_cache, block_table, context_lens, s);
        Ok(())
    }
    fn lm_logits(
        &self,
        logits: &mut Vec<f32>,
        h: &Vec<f32>,
        p: &Vec<f32>,
        w: &Range<usize>,
        n: usize,
        d: usize,
        v: usize,
    ) -> Result<()> {
        cpu::matmul_forward(&mut logits[..n * v], &h[..n * d], &p[w.clone()], n, d, v);
        Ok(())
    }
    fn sample(
        &self,
        logits: &Vec<f32>,
        uniforms: &[f32],
        v: usize,
        p: SamplingParams,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let n = uniforms.len();
        let (mut ids, mut logprobs) = (vec![0; n], vec![0.0; n]);
        cpu::sample(&mut ids, &mut logprobs, &logits[..n * v], uniforms, p);
        Ok((ids, logprobs))
    }
    fn ppo_policy_loss(
        &self,
        grad: &mut Vec<f32>,
        logp: &Vec<f32>,
        old_logp: &Vec<f32>,
        advantages: &Vec<f32>,
        weights: &Vec<f32>,
        ref_logp: Option<&Vec<f32>>,
        p: PolicyLossParams,
    ) -> Result<PolicyLossStats> {
        let mask: Vec<bool> = weights.iter().map(|&w| w > 0.0).collect();
        Ok(cpu::ppo_loss::ppo_policy_loss(
            grad,
            logp,
            old_logp,
            advantages,
            &mask,
            ref_logp.map(|r| r.as_slice()),
            1,
            logp.len(),
            p,
        ))
    }
    fn ppo_value_loss(
        &self,
        grad: &mut Vec<f32>,
        values: &Vec<f32>,
        old_values: &Vec<f32>,
        returns: &Vec<f32>,
        weights: &Vec<f32>,
        clip: Option<f32>,
        grad_scale: f32,
    ) -> Result<ValueLossStats> {
        let mask: Vec<bool> = weights.iter().map(|&w| w > 0.0).collect();
        Ok(cpu::ppo_loss::ppo_value_loss(
            grad,
            values,
            old_values,
            returns,
            &mask,
            1,
            values.len(),
            clip,
            grad_scale,
        ))
    }
    fn dpo_loss(
        &self,
        dlogp: &mut Vec<f32>,
        rows: &mut Vec<f32>,
        logp: &Vec<f32>,
        weights: &Vec<f32>,
        reduction: SeqReduction,
        reference: Option<&Vec<f32>>,
        pairs: usize,
        t: usize,
        cfg: &DpoConfig,
        grad_scale: f32,
    ) -> Result<()> {
        let mask: Vec<bool> = weights.iter().map(|&w| w > 0.0).collect();
        let reference = reference.map(|r| r.as_slice());
        let out = cpu::dpo_loss::dpo_loss(
            dlogp, logp, &mask, reduction, reference, pairs, t, cfg, grad_scale,
        );
        anyhow::ensure!(
            rows.len() == 5 * pairs,
            "dpo_loss: {} values for {pairs} pairs' rows",
            rows.len()
        );
        out.write_rows(rows);
        Ok(())
    }
    fn bradley_terry_loss(
        &self,
        dvalue: &mut Vec<f32>,
        rows: &mut Vec<f32>,
        value: &Vec<f32>,
        token: &Vec<u32>,
        margin: Option<&Vec<f32>>,
        pairs: usize,
        grad_scale: f32,
    ) -> Result<()> {
        let margin = margin.map(|m| m.as_slice());
        let out =
            cpu::reward_loss::bradley_terry_loss(dvalue, value, token, margin, pairs, grad_scale);
        *rows = cpu::reward_loss::reward_rows(&out, margin);
        Ok(())
    }
}
