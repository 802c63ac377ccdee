//! The CUDA engine as a `Backend` (src/ops/backend.rs): activations in bf16, accumulators,
//! statistics and gradients in f32, parameters as one flat bf16 buffer in the model's layout.
//! The model code in src/model/llama.rs runs on it unchanged.

use super::{
    attention, copy_rows, decode_attention, dpo_loss, embedding, logprob, matmul, pool, ppo_loss,
    residual, reward_loss, rmsnorm, rope, sample, scalar_head, swiglu, CudaEngine,
};
use crate::loss::{DpoConfig, KlPenalty, PolicyLossConfig, ValueLossConfig};
use crate::ops::cpu::ppo_loss::{PolicyLossStats, ValueLossStats};
use crate::ops::cpu::rope::rope_inv_freq;
use crate::ops::cpu::{AttentionShape, DecodeShape, RopeSpec, SamplingParams};
use crate::ops::{Backend, Batch};
use anyhow::Result;
use cudarc::driver::CudaSlice;
use half::bf16;
use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;

/// Scratch the ops need beside their outputs, kept between calls and grown only when a larger
/// batch arrives, so a steady training loop allocates nothing.
#[derive(Default)]
struct Scratch {
    partial: Option<CudaSlice<f32>>,
    /// The embedding backward's chunk sums, grown to the largest batch seen.
    embedding_partial: Option<CudaSlice<f32>>,
    rowdot: Option<CudaSlice<f32>>,
    logprob: Option<logprob::LogprobScratch>,
    decode_partial: Option<CudaSlice<f32>>,
    /// Decode partials outgrown: CUDA graphs captured before the growth still write them, so they
    /// live as long as the engine.
    outgrown: Vec<CudaSlice<f32>>,
    /// Sampling's uniforms in, ids and log-probs out, grown to the largest batch seen.
    sample_io: Option<(CudaSlice<f32>, CudaSlice<u32>, CudaSlice<f32>)>,
}

/// One CUDA engine (context, stream, module, cuBLASLt) and what its models share: scratch,
/// recycled buffers and inputs. `share` gives another handle on the same engine, so the models of
/// a PPO run (policy, value, reference, reward) run on one stream and reuse one set of buffers.
pub struct Cuda {
    pub eng: Rc<CudaEngine>,
    gemm: Rc<matmul::Gemm>,
    scratch: Rc<RefCell<Scratch>>,
    pool: Rc<RefCell<pool::Pool>>,
    /// Inputs handed back, by token count.
    spare_inputs: Rc<RefCell<Vec<CudaInputs>>>,
}

/// What the kernels read of a batch.
pub struct CudaInputs {
    ids_host: Vec<u32>,
    /// Positions grouped by token, for the embedding backward.
    groups: embedding::TokenGroups,
    ids: CudaSlice<u32>,
    targets: CudaSlice<u32>,
    mask: CudaSlice<u8>,
    positions: CudaSlice<u32>,
    inv_freq: CudaSlice<f32>,
    inv_freq_host: Vec<f32>,
}

impl Cuda {
    pub fn new() -> Result<Self> {
        let eng = CudaEngine::new()?;
        let gemm = matmul::Gemm::new(&eng)?;
        Ok(Cuda {
            eng: Rc::new(eng),
            gemm: Rc::new(gemm),
            scratch: Default::default(),
            pool: Default::default(),
            spare_inputs: Default::default(),
        })
    }

    /// Another handle on this engine, for another model: same stream, scratch and buffers.
    pub fn share(&self) -> Cuda {
        Cuda {
            eng: self.eng.clone(),
            gemm: self.gemm.clone(),
            scratch: self.scratch.clone(),
            pool: self.pool.clone(),
            spare_inputs: self.spare_inputs.clone(),
        }
    }

    /// Bytes of device buffers held for reuse (not in use).
    pub fn idle_bytes(&self) -> usize {
        self.pool.borrow().idle_bytes
    }

    /// Gives every buffer held for reuse back to the driver.
    pub fn trim(&self) {
        self.pool.borrow_mut().trim();
        self.spare_inputs.borrow_mut().clear();
    }

    /// `make` (an allocation, or something that allocates); when the device is full, the idle
    /// buffers go back to the driver first and `make` is tried once more.
    fn retrying<T>(&self, make: impl Fn() -> Result<T>) -> Result<T> {
        make().or_else(|_| {
            self.trim();
            make()
        })
    }

    /// A fresh zeroed allocation, retried after freeing the idle buffers.
    fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.retrying(|| self.eng.zeros(n))
    }

    /// f32 parameters to the flat bf16 buffer the forward reads.
    pub fn upload_params(&self, params: &[f32]) -> Result<CudaSlice<bf16>> {
        self.eng.upload(
            &params
                .iter()
                .map(|&x| bf16::from_f32(x))
                .collect::<Vec<_>>(),
        )
    }

    pub fn download(&self, x: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.eng.download(x)
    }

    fn with_partial<R>(
        &self,
        n: usize,
        f: impl FnOnce(&mut CudaSlice<f32>) -> Result<R>,
    ) -> Result<R> {
        let mut s = self.scratch.borrow_mut();
        if s.partial.as_ref().is_none_or(|p| p.len() < n) {
            s.partial = Some(self.eng.zeros(n)?);
        }
        f(s.partial.as_mut().expect("set above"))
    }
}

/// The fused log-prob's chunk buffers for `n` tokens, reallocated only when `n` outgrows them.
fn logprob_scratch<'a>(
    s: &'a mut Scratch,
    cuda: &Cuda,
    n: usize,
) -> Result<&'a mut logprob::LogprobScratch> {
    // Grown, never shrunk: models sharing an engine and last, smaller chunks take turns with it.
    if s.logprob.as_mut().is_none_or(|l| !l.fit(n)) {
        s.logprob = None; // the old one goes before the new one is made
        s.logprob = Some(cuda.retrying(|| logprob::LogprobScratch::new(&cuda.eng, n))?);
    }
    Ok(s.logprob.as_mut().expect("set above"))
}

impl Backend for Cuda {
    type Act = CudaSlice<bf16>;
    type Acc = CudaSlice<f32>;
    type Params = CudaSlice<bf16>;
    type Inputs = CudaInputs;
    type Index = CudaSlice<u32>;
    type Graph = cudarc::driver::CudaGraph;

    // CUDA refuses zero-byte allocations; an absent head gets a one-element placeholder.
    fn act(&self, n: usize) -> Result<CudaSlice<bf16>> {
        let n = n.max(1);
        let kept = self.pool.borrow_mut().take_bf16(n);
        match kept {
            // Not cleared: every op writes the whole of its output (on the software GPU a
            // fresh buffer is NaN, so a read of an unwritten activation shows in every check).
            Some(x) => Ok(x),
            None => {
                // SAFETY: bf16 has no invalid bit patterns; the contents are written before use.
                let fresh = unsafe { self.eng.stream.alloc::<bf16>(n) };
                fresh
                    .or_else(|_| {
                        self.trim();
                        unsafe { self.eng.stream.alloc::<bf16>(n) }
                    })
                    .map_err(|e| anyhow::anyhow!("allocating {} bytes on the GPU: {e:?}", 2 * n))
            }
        }
    }
    fn acc(&self, n: usize) -> Result<CudaSlice<f32>> {
        let n = n.max(1);
        let kept = self.pool.borrow_mut().take_f32(n);
        match kept {
            Some(mut x) => {
                self.eng.zero(&mut x)?;
                Ok(x)
            }
            None => self.alloc(n),
        }
    }
    fn recycle_act(&self, x: CudaSlice<bf16>) {
        self.pool.borrow_mut().give_bf16(x);
    }
    fn recycle_acc(&self, x: CudaSlice<f32>) {
        self.pool.borrow_mut().give_f32(x);
    }
    fn recycle_inputs(&self, x: CudaInputs) {
        let mut spares = self.spare_inputs.borrow_mut();
        // Inputs for a few recent token counts; the oldest go when shapes keep changing.
        if spares.len() >= 8 {
            spares.remove(0);
        }
        spares.push(x);
    }
    fn release_idle(&self) {
        self.trim();
    }
    fn retire(&self) {
        self.pool.borrow_mut().retire();
    }
    fn zero(&self, x: &mut CudaSlice<f32>) -> Result<()> {
        self.eng.zero(x)
    }
    fn to_host(&self, x: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.eng.download(x)
    }
    fn to_device(&self, x: &[f32]) -> Result<CudaSlice<f32>> {
        let kept = self.pool.borrow_mut().take_f32(x.len().max(1));
        match kept {
            Some(mut d) if !x.is_empty() => {
                self.eng
                    .stream
                    .memcpy_htod(x, &mut d)
                    .map_err(|e| anyhow::anyhow!("copying {} values to the GPU: {e:?}", x.len()))?;
                Ok(d)
            }
            Some(d) => Ok(d),
            None => self.retrying(|| self.eng.upload(x)),
        }
    }
    fn inputs(&self, rope: &RopeSpec, batch: &Batch, targets: &[u32]) -> Result<CudaInputs> {
        let spare = {
            let mut spares = self.spare_inputs.borrow_mut();
            let i = spares.iter().position(|x| {
                x.ids_host.len() == batch.ids.len() && x.targets.len() == targets.len()
            });
            i.map(|i| spares.swap_remove(i))
        };
        if let Some(mut inp) = spare {
            // The same token count: everything is rewritten in place.
            self.write_inputs(&mut inp, batch)?;
            let s = &self.eng.stream;
            let err = |e| anyhow::anyhow!("inputs: {e:?}");
            s.memcpy_htod(targets, &mut inp.targets).map_err(err)?;
            // Another model on this engine may have left them: its rotary frequencies differ.
            let inv_freq = rope_inv_freq(rope);
            if inv_freq != inp.inv_freq_host {
                inp.inv_freq = self.retrying(|| self.eng.upload(&inv_freq))?;
                inp.inv_freq_host = inv_freq;
            }
            inp.groups.fill(&self.eng, &batch.ids)?;
            return Ok(inp);
        }
        let mask: Vec<u8> = batch.mask.iter().map(|&m| m as u8).collect();
        let inv_freq = rope_inv_freq(rope);
        self.retrying(|| {
            Ok(CudaInputs {
                ids_host: batch.ids.clone(),
                groups: embedding::TokenGroups::new(&self.eng, &batch.ids)?,
                ids: self.eng.upload(&batch.ids)?,
                targets: self.eng.upload(targets)?,
                mask: self.eng.upload(&mask)?,
                positions: self.eng.upload(&batch.positions)?,
                inv_freq: self.eng.upload(&inv_freq)?,
                inv_freq_host: inv_freq.clone(),
            })
        })
    }
    fn index(&self, host: &[u32]) -> Result<CudaSlice<u32>> {
        let kept = self.pool.borrow_mut().take_u32(host.len().max(1));
        match kept {
            Some(mut d) if !host.is_empty() => {
                self.eng.stream.memcpy_htod(host, &mut d).map_err(|e| {
                    anyhow::anyhow!("copying {} indices to the GPU: {e:?}", host.len())
                })?;
                Ok(d)
            }
            Some(d) => Ok(d),
            None => self.retrying(|| self.eng.upload(host)),
        }
    }
    fn recycle_index(&self, x: CudaSlice<u32>) {
        self.pool.borrow_mut().give_u32(x);
    }
    fn write_index(&self, dst: &mut CudaSlice<u32>, host: &[u32]) -> Result<()> {
        anyhow::ensure!(
            dst.len() == host.len(),
            "write_index: {} values into {}",
            host.len(),
            dst.len()
        );
        self.eng
            .stream
            .memcpy_htod(host, dst)
            .map_err(|e| anyhow::anyhow!("write_index ({} values): {e:?}", host.len()))
    }
    fn write_inputs(&self, inp: &mut CudaInputs, batch: &Batch) -> Result<()> {
        anyhow::ensure!(
            inp.ids_host.len() == batch.ids.len(),
            "write_inputs: a batch of {} tokens into inputs for {}",
            batch.ids.len(),
            inp.ids_host.len()
        );
        let mask: Vec<u8> = batch.mask.iter().map(|&m| m as u8).collect();
        let s = &self.eng.stream;
        let err = |e| anyhow::anyhow!("write_inputs: {e:?}");
        s.memcpy_htod(&batch.ids, &mut inp.ids).map_err(err)?;
        s.memcpy_htod(&batch.positions, &mut inp.positions)
            .map_err(err)?;
        s.memcpy_htod(&mask, &mut inp.mask).map_err(err)?;
        inp.ids_host.copy_from_slice(&batch.ids);
        Ok(())
    }
    fn begin_capture(&self) -> Result<bool> {
        use cudarc::driver::sys::CUstreamCaptureMode;
        self.eng
            .stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| anyhow::anyhow!("beginning a CUDA graph capture: {e:?}"))?;
        Ok(true)
    }
    fn end_capture(&self) -> Result<cudarc::driver::CudaGraph> {
        self.eng
            .stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .map_err(|e| anyhow::anyhow!("ending a CUDA graph capture: {e:?}"))?
            .ok_or_else(|| anyhow::anyhow!("the CUDA graph capture recorded nothing"))
    }
    fn replay(&self, graph: &cudarc::driver::CudaGraph) -> Result<()> {
        graph
            .launch()
            .map_err(|e| anyhow::anyhow!("launching a CUDA graph: {e:?}"))
    }
    fn embedding_forward(
        &self,
        out: &mut Self::Act,
        inp: &CudaInputs,
        p: &Self::Params,
        table: &Range<usize>,
        d: usize,
    ) -> Result<()> {
        embedding::embedding_forward(
            &self.eng,
            out,
            &inp.ids,
            &p.slice(table.clone()),
            inp.ids_host.len(),
            d,
        )
    }
    fn embedding_backward(
        &self,
        grads: &mut Self::Acc,
        table: &Range<usize>,
        dout: &Self::Acc,
        inp: &CudaInputs,
        d: usize,
    ) -> Result<()> {
        let mut s = self.scratch.borrow_mut();
        let need = embedding::partial_len(inp.ids_host.len(), d);
        if s.embedding_partial.as_ref().is_none_or(|p| p.len() < need) {
            s.embedding_partial = Some(self.eng.zeros(need)?);
        }
        embedding::embedding_backward(
            &self.eng,
            &mut grads.slice_mut(table.clone()),
            dout,
            &inp.groups,
            s.embedding_partial.as_mut().expect("set above"),
            d,
        )
    }
    fn rmsnorm_forward(
        &self,
        out: &mut Self::Act,
        rstd: &mut Self::Acc,
        x: &Self::Act,
        p: &Self::Params,
        w: &Range<usize>,
        eps: f32,
    ) -> Result<()> {
        let d = w.len();
        rmsnorm::rmsnorm_forward(
            &self.eng,
            out,
            rstd,
            x,
            &p.slice(w.clone()),
            x.len() / d,
            d,
            eps,
        )
    }
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::Acc,
        grads: &mut Self::Acc,
        w: &Range<usize>,
        dout: &Self::Acc,
        x: &Self::Act,
        p: &Self::Params,
        rstd: &Self::Acc,
    ) -> Result<()> {
        let d = w.len();
        let n = x.len() / d;
        self.with_partial(rmsnorm::column_scratch_len(n, d), |partial| {
            rmsnorm::rmsnorm_backward(
                &self.eng,
                dx,
                &mut grads.slice_mut(w.clone()),
                partial,
                dout,
                x,
                &p.slice(w.clone()),
                rstd,
                n,
                d,
            )
        })
    }
    fn matmul_forward(
        &self,
        out: &mut Self::Act,
        x: &Self::Act,
        p: &Self::Params,
        w: &Range<usize>,
        n: usize,
        i: usize,
        o: usize,
    ) -> Result<()> {
        matmul::matmul_forward(&self.eng, &self.gemm, out, x, &p.slice(w.clone()), n, i, o)
    }
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
    ) -> Result<()> {
        let mut dw = grads.slice_mut(w.clone());
        matmul::matmul_backward(
            &self.eng,
            &self.gemm,
            Some(dx),
            false,
            &mut dw,
            dout,
            x,
            &p.slice(w.clone()),
            n,
            i,
            o,
        )
    }
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
    ) -> Result<()> {
        let mut dw = grads.slice_mut(w.clone());
        matmul::matmul_backward(
            &self.eng,
            &self.gemm,
            Some(dx),
            true,
            &mut dw,
            dout,
            x,
            &p.slice(w.clone()),
            n,
            i,
            o,
        )
    }
    fn rope_forward(&self, x: &mut Self::Act, inp: &CudaInputs, heads: usize) -> Result<()> {
        let hd = 2 * inp.inv_freq.len();
        rope::rope_forward(&self.eng, x, &inp.positions, &inp.inv_freq, heads, hd)
    }
    fn rope_backward(&self, dx: &mut Self::Act, inp: &CudaInputs, heads: usize) -> Result<()> {
        let hd = 2 * inp.inv_freq.len();
        rope::rope_backward(&self.eng, dx, &inp.positions, &inp.inv_freq, heads, hd)
    }
    fn attention_forward(
        &self,
        out: &mut Self::Act,
        lse: &mut Self::Acc,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        inp: &CudaInputs,
        s: AttentionShape,
    ) -> Result<()> {
        attention::attention_forward(&self.eng, out, lse, q, k, v, &inp.mask, s)
    }
    fn attention_backward(
        &self,
        dq: &mut Self::Act,
        dk: &mut Self::Act,
        dv: &mut Self::Act,
        dout: &Self::Act,
        [q, k, v, out]: [&Self::Act; 4],
        lse: &Self::Acc,
        inp: &CudaInputs,
        s: AttentionShape,
    ) -> Result<()> {
        let rows = s.batch * s.seq * s.heads;
        let mut scratch = self.scratch.borrow_mut();
        if scratch.rowdot.as_ref().is_none_or(|r| r.len() != rows) {
            // (exact: the launcher checks its length; a model sharing the engine with another
            // head count reallocates it when they alternate)
            scratch.rowdot = Some(self.eng.zeros(rows)?);
        }
        let rowdot = scratch.rowdot.as_mut().expect("set above");
        attention::attention_backward(
            &self.eng, dq, dk, dv, rowdot, dout, q, k, v, out, lse, &inp.mask, s,
        )
    }
    fn residual_forward(&self, out: &mut Self::Act, a: &Self::Act, b: &Self::Act) -> Result<()> {
        residual::residual_forward(&self.eng, out, a, b)
    }
    fn swiglu_forward(&self, out: &mut Self::Act, gate: &Self::Act, up: &Self::Act) -> Result<()> {
        swiglu::swiglu_forward(&self.eng, out, gate, up)
    }
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Act,
        dup: &mut Self::Act,
        dout: &Self::Act,
        gate: &Self::Act,
        up: &Self::Act,
    ) -> Result<()> {
        swiglu::swiglu_backward(&self.eng, dgate, dup, dout, gate, up)
    }
    fn logprob_forward(
        &self,
        logp: &mut Self::Acc,
        entropy: &mut Self::Acc,
        lse: &mut Self::Acc,
        h: &Self::Act,
        p: &Self::Params,
        w: &Range<usize>,
        inp: &CudaInputs,
        d: usize,
        scale: f32,
    ) -> Result<()> {
        let mut scratch = self.scratch.borrow_mut();
        let s = logprob_scratch(&mut scratch, self, inp.ids_host.len())?;
        logprob::logprob_forward(
            &self.eng,
            &self.gemm,
            s,
            logp,
            entropy,
            lse,
            h,
            &p.slice(w.clone()),
            &inp.targets,
            d,
            scale,
        )
    }
    fn logprob_backward(
        &self,
        dh: &mut Self::Acc,
        grads: &mut Self::Acc,
        w: &Range<usize>,
        dlogp: &Self::Acc,
        dentropy: Option<&Self::Acc>,
        h: &Self::Act,
        p: &Self::Params,
        inp: &CudaInputs,
        [lse, entropy]: [&Self::Acc; 2],
        d: usize,
        scale: f32,
    ) -> Result<()> {
        let mut scratch = self.scratch.borrow_mut();
        let s = logprob_scratch(&mut scratch, self, inp.ids_host.len())?;
        let mut dw = grads.slice_mut(w.clone());
        logprob::logprob_backward(
            &self.eng,
            &self.gemm,
            s,
            dh,
            &mut dw,
            dlogp,
            dentropy,
            h,
            &p.slice(w.clone()),
            &inp.targets,
            lse,
            entropy,
            d,
            scale,
        )
    }
    fn scalar_head_forward(
        &self,
        value: &mut Self::Acc,
        h: &Self::Act,
        p: &Self::Params,
        w: &Range<usize>,
    ) -> Result<()> {
        let d = w.len();
        scalar_head::scalar_head_forward(&self.eng, value, h, &p.slice(w.clone()), h.len() / d, d)
    }
    fn scalar_head_backward(
        &self,
        dh: &mut Self::Acc,
        grads: &mut Self::Acc,
        w: &Range<usize>,
        dvalue: &Self::Acc,
        h: &Self::Act,
        p: &Self::Params,
    ) -> Result<()> {
        let d = w.len();
        let n = h.len() / d;
        self.with_partial(rmsnorm::column_scratch_len(n, d), |partial| {
            scalar_head::scalar_head_backward(
                &self.eng,
                dh,
                &mut grads.slice_mut(w.clone()),
                partial,
                dvalue,
                h,
                &p.slice(w.clone()),
                n,
                d,
            )
        })
    }
    fn cast_to_act(&self, out: &mut Self::Act, x: &Self::Acc) -> Result<()> {
        residual::cast_to_bf16(&self.eng, out, x)
    }
    fn copy_rows(
        &self,
        dst: &mut Self::Act,
        src: &Self::Act,
        pairs: &CudaSlice<u32>,
        m: usize,
        width: usize,
    ) -> Result<()> {
        copy_rows::copy_rows(&self.eng, dst, src, pairs, m, width)
    }
    fn decode_attention(
        &self,
        out: &mut Self::Act,
        q: &Self::Act,
        k_cache: &Self::Act,
        v_cache: &Self::Act,
        block_table: &CudaSlice<u32>,
        context_lens: &CudaSlice<u32>,
        s: DecodeShape,
    ) -> Result<()> {
        let need = decode_attention::partial_len(&s);
        let mut scratch = self.scratch.borrow_mut();
        if scratch
            .decode_partial
            .as_ref()
            .is_none_or(|p| p.len() < need)
        {
            let grown = self.eng.zeros(need)?;
            if let Some(old) = scratch.decode_partial.replace(grown) {
                scratch.outgrown.push(old);
            }
        }
        let partial = scratch.decode_partial.as_mut().expect("set above");
        decode_attention::decode_attention(
            &self.eng,
            out,
            partial,
            q,
            k_cache,
            v_cache,
            block_table,
            context_lens,
            s,
        )
    }
    fn lm_logits(
        &self,
        logits: &mut Self::Acc,
        h: &Self::Act,
        p: &Self::Params,
        w: &Range<usize>,
        n: usize,
        d: usize,
        v: usize,
    ) -> Result<()> {
        matmul::matmul_forward(
            &self.eng,
            &self.gemm,
            logits,
            h,
            &p.slice(w.clone()),
            n,
            d,
            v,
        )
    }
    fn sample(
        &self,
        logits: &Self::Acc,
        uniforms: &[f32],
        v: usize,
        p: SamplingParams,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let n = uniforms.len();
        let mut scratch = self.scratch.borrow_mut();
        if scratch
            .sample_io
            .as_ref()
            .is_none_or(|(u, _, _)| u.len() < n)
        {
            scratch.sample_io = Some((self.eng.zeros(n)?, self.eng.zeros(n)?, self.eng.zeros(n)?));
        }
        let (u, ids, logprobs) = scratch.sample_io.as_mut().expect("set above");
        self.eng
            .stream
            .memcpy_htod(uniforms, &mut u.slice_mut(0..n))
            .map_err(|e| anyhow::anyhow!("sample: uploading {n} uniforms: {e:?}"))?;
        sample::sample_tokens(&self.eng, ids, logprobs, logits, u, n, v, p)?;
        let ids = self.eng.download(ids)?;
        let logprobs = self.eng.download(logprobs)?;
        Ok((ids[..n].to_vec(), logprobs[..n].to_vec()))
    }
    fn ppo_policy_loss(
        &self,
        grad: &mut CudaSlice<f32>,
        logp: &CudaSlice<f32>,
        old_logp: &CudaSlice<f32>,
        advantages: &CudaSlice<f32>,
        weights: &CudaSlice<f32>,
        kl: Option<(&CudaSlice<f32>, KlPenalty)>,
        cfg: &PolicyLossConfig,
        grad_scale: f32,
    ) -> Result<PolicyLossStats> {
        ppo_loss::ppo_policy_loss(
            &self.eng, grad, logp, old_logp, advantages, weights, kl, cfg, grad_scale,
        )
    }
    fn ppo_value_loss(
        &self,
        grad: &mut CudaSlice<f32>,
        values: &CudaSlice<f32>,
        old_values: &CudaSlice<f32>,
        returns: &CudaSlice<f32>,
        weights: &CudaSlice<f32>,
        cfg: &ValueLossConfig,
        grad_scale: f32,
    ) -> Result<ValueLossStats> {
        ppo_loss::ppo_value_loss(
            &self.eng, grad, values, old_values, returns, weights, cfg, grad_scale,
        )
    }
    fn dpo_loss(
        &self,
        dlogp: &mut CudaSlice<f32>,
        rows: &mut CudaSlice<f32>,
        logp: &CudaSlice<f32>,
        weights: &CudaSlice<f32>,
        reference: Option<&CudaSlice<f32>>,
        pairs: usize,
        t: usize,
        cfg: &DpoConfig,
        grad_scale: f32,
    ) -> Result<()> {
        dpo_loss::dpo_loss(
            &self.eng, dlogp, rows, logp, weights, reference, pairs, t, cfg, grad_scale,
        )
    }
    fn bradley_terry_loss(
        &self,
        dvalue: &mut CudaSlice<f32>,
        rows: &mut CudaSlice<f32>,
        value: &CudaSlice<f32>,
        token: &CudaSlice<u32>,
        margin: Option<&CudaSlice<f32>>,
        pairs: usize,
        grad_scale: f32,
    ) -> Result<()> {
        reward_loss::bradley_terry_loss(
            &self.eng, dvalue, rows, value, token, margin, pairs, grad_scale,
        )
    }
}
