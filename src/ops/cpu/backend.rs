//! The CPU oracle as a `Backend` (src/ops/backend.rs): f32 everywhere, each op the plain loop of
//! its file beside this one. The oracle's backward functions add into their gradient outputs, so
//! this backend zeroes first where the trait says "written".

use super::ppo_loss::{ensure_fused_policy_loss, PolicyLossStats, ValueLossStats};
use super::{self as cpu, AttentionShape, DecodeShape, RopeSpec, RopeTables, SamplingParams};
use crate::loss::{DpoConfig, KlPenalty, PolicyLossConfig, ValueLossConfig};
use crate::ops::memory_budget::{ensure_fits_host, human_bytes};
use crate::ops::{Backend, Batch};
use anyhow::Result;
use std::ops::Range;

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
        ensure_fits_host(
            &format!("a host buffer of {n} f32 values"),
            bytes,
            "lower the batch, the sequence lengths, --max-new-tokens or --kv-memory",
        )?;
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|e| {
        anyhow::anyhow!(
            "allocating {n} f32 values ({}) on the host failed: {e}",
            human_bytes(n as u128 * 4)
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
    fn inputs(&self, rope: &RopeSpec, batch: &Batch, targets: &[u32]) -> Result<CpuInputs> {
        Ok(CpuInputs {
            ids: batch.ids.clone(),
            targets: targets.to_vec(),
            mask: batch.mask.clone(),
            rope: RopeTables::new(rope, &batch.positions),
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
        cpu::logprob::logprob_forward(logp, entropy, lse, h, &p[w.clone()], &inp.targets, d, scale);
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
        cpu::logprob::logprob_backward(
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
        kl: Option<(&Vec<f32>, KlPenalty)>,
        cfg: &PolicyLossConfig,
        grad_scale: f32,
    ) -> Result<PolicyLossStats> {
        ensure_fused_policy_loss(cfg)?;
        let mask: Vec<bool> = weights.iter().map(|&w| w > 0.0).collect();
        Ok(cpu::ppo_loss::ppo_policy_loss(
            grad,
            logp,
            old_logp,
            advantages,
            &mask,
            kl.map(|(r, p)| (r.as_slice(), p)),
            1,
            logp.len(),
            cfg,
            grad_scale,
        ))
    }
    fn ppo_value_loss(
        &self,
        grad: &mut Vec<f32>,
        values: &Vec<f32>,
        old_values: &Vec<f32>,
        returns: &Vec<f32>,
        weights: &Vec<f32>,
        cfg: &ValueLossConfig,
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
            cfg,
            grad_scale,
        ))
    }
    fn dpo_loss(
        &self,
        dlogp: &mut Vec<f32>,
        rows: &mut Vec<f32>,
        logp: &Vec<f32>,
        weights: &Vec<f32>,
        reference: Option<&Vec<f32>>,
        pairs: usize,
        t: usize,
        cfg: &DpoConfig,
        grad_scale: f32,
    ) -> Result<()> {
        let mask: Vec<bool> = weights.iter().map(|&w| w > 0.0).collect();
        let reference = reference.map(|r| r.as_slice());
        let out = cpu::dpo_loss::dpo_loss(dlogp, logp, &mask, reference, pairs, t, cfg, grad_scale);
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
