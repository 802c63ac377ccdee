//! A training step on the GPU: the generic Llama forward and backward on the CUDA backend, then the
//! global gradient norm and AdamW over fp32 master weights, which also refreshes the bf16 copy the
//! forward reads. Parameters, gradients and both moments are one allocation each.

use super::fsdp::{shard_model, FsdpWeights};
use super::state::{HostState, ModelAndGrads, TrainState};
use crate::dist::group::Group;
use crate::dist::nccl::DeviceComm;
use crate::model::grad_sink::{buckets, GradsReady};
use crate::model::{Batch, GradSink, HeadGrads, Heads, Llama};
use crate::ops::cuda::adamw::{
    adamw_step, grad_norm, grad_norm_finish, grad_norm_partial, norm_scratch, upload_no_decay,
    AdamWStep,
};
use crate::ops::cuda::backend::Cuda;
use crate::ops::Backend;
use anyhow::{Context, Result};
use cudarc::driver::CudaSlice;
use std::rc::Rc;

/// Gradient norms kept on the device between reads: a loop that logs less often than this reads
/// them early (one host sync per NORM_HISTORY steps).
const NORM_HISTORY: usize = 1024;

pub struct GpuTrainer {
    pub model: Llama<Cuda>,
    master: CudaSlice<f32>,
    grads: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    norm: CudaSlice<f32>,
    /// The ranges weight decay skips (the norm gains), uploaded once.
    no_decay: Option<CudaSlice<u64>>,
    norm_partial: CudaSlice<f64>,
    /// The norms of the steps not yet read, [NORM_HISTORY], the first `pending_norms` set.
    norm_history: CudaSlice<f32>,
    pending_norms: usize,
    /// Norms read early because the history filled up.
    read_norms: Vec<f32>,
    pub t: u64,
    pub max_grad_norm: f32,
    pub weight_decay: f32,
    /// Gradients summed over the ranks by buckets of at least this many values (DDP's
    /// `bucket_cap_mb`); 0: a bucket per layer.
    pub bucket_values: usize,
    /// The ranks' gradient sum, in a data-parallel run (none for one process).
    reducer: Option<GradReducer>,
    /// Under `--shard optimizer`: this rank and the world; `master`, `m` and `v` then hold only
    /// this rank's slice of the layout ([`shard_range`]).
    shard: Option<(usize, usize)>,
    /// Under `--shard full`: the gathers and reduce-scatters the model runs through; `master`,
    /// `m`, `v`, `grads` and the model's bf16 `params` then hold this rank's shard
    /// (src/train/fsdp.rs).
    fsdp: Option<Rc<FsdpWeights>>,
}

/// Rank `rank`'s slice of `n` values split over `size` ranks: contiguous, sizes differing by at
/// most one.
pub fn shard_range(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    rank * n / size..(rank + 1) * n / size
}

/// Values a sharded state's gather moves through the device at a time (64 MiB of f32).
const GATHER_CHUNK: usize = 1 << 24;

/// DDP's default bucket: 25 MiB of fp32 gradients.
pub const DEFAULT_BUCKET_VALUES: usize = 25 << 20 >> 2;

/// The data-parallel gradient sum: the ranks' communicator, the buckets (src/model/grad_sink.rs,
/// in the order a backward finishes them), and how many of this step's are queued.
struct GradReducer {
    comm: DeviceComm,
    buckets: Vec<std::ops::Range<usize>>,
    queued: usize,
}

impl GradsReady<Cuda> for GradReducer {
    /// Queues every bucket the backward has finished, on the communication stream; the compute
    /// stream runs on into the layers below.
    fn ready(&mut self, grads: &mut CudaSlice<f32>, final_from: usize) -> Result<()> {
        while let Some(r) = self.buckets.get(self.queued) {
            if r.start < final_from {
                break;
            }
            self.comm.all_reduce_sum_part(grads, r.clone())?;
            self.queued += 1;
        }
        Ok(())
    }
}

impl GradReducer {
    /// Queues the buckets not yet queued (all of them on a rank that ran no micro-batch), then
    /// makes the compute stream wait for the sum: every rank queues the same buckets in the
    /// same order.
    fn finish(&mut self, grads: &mut CudaSlice<f32>) -> Result<()> {
        self.ready(grads, 0)?;
        self.queued = 0;
        self.comm.join_compute()
    }
}

impl GpuTrainer {
    pub fn new(cpu: &Llama) -> Result<Self> {
        Self::on(Cuda::new()?, cpu)
    }

    /// The trainer of `cpu`'s weights on `backend` (which other models may share).
    pub fn on(backend: Cuda, cpu: &Llama) -> Result<Self> {
        Self::sharded(backend, cpu, None)
    }

    /// [`GpuTrainer::on`], keeping with `shard = Some((rank, size))` only this rank's slice of the
    /// fp32 master weights and AdamW moments (`--shard optimizer`, ZeRO-1): each step updates
    /// that slice and the ranks exchange their bf16 weights.
    pub fn sharded(backend: Cuda, cpu: &Llama, shard: Option<(usize, usize)>) -> Result<Self> {
        let model = cpu.upload(backend)?;
        let n = cpu.layout.len;
        let own = match shard {
            Some((rank, size)) => shard_range(n, rank, size),
            None => 0..n,
        };
        // The ranges weight decay skips, as offsets into this rank's slice.
        let no_decay: Vec<_> = cpu
            .layout
            .no_decay_ranges()
            .into_iter()
            .map(|r| r.start.max(own.start)..r.end.min(own.end))
            .filter(|r| r.start < r.end)
            .map(|r| r.start - own.start..r.end - own.start)
            .collect();
        let master = &cpu.params[own];
        let mut t = Self::with_state(model, master, n, &no_decay)?;
        t.shard = shard;
        Ok(t)
    }

    /// A trainer of `model` whose optimiser keeps `master` (fp32; zero moments beside it) and a
    /// gradient buffer of `grads` values, weight decay skipping `no_decay` (offsets into
    /// `master`); unsharded until the caller says otherwise.
    fn with_state(
        model: Llama<Cuda>,
        master: &[f32],
        grads: usize,
        no_decay: &[std::ops::Range<usize>],
    ) -> Result<Self> {
        let eng = &model.backend.eng;
        Ok(GpuTrainer {
            master: eng.upload(master)?,
            grads: eng.zeros(grads)?,
            m: eng.zeros(master.len())?,
            v: eng.zeros(master.len())?,
            norm: eng.zeros(1)?,
            no_decay: upload_no_decay(eng, no_decay)?,
            norm_partial: norm_scratch(eng)?,
            norm_history: eng.zeros(NORM_HISTORY)?,
            pending_norms: 0,
            read_norms: Vec::new(),
            t: 0,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            bucket_values: DEFAULT_BUCKET_VALUES,
            reducer: None,
            shard: None,
            fsdp: None,
            model,
        })
    }

    /// The trainer of `cpu`'s weights under `--shard full` (FSDP, ZeRO-3) over `group`'s ranks:
    /// this rank keeps its shard of the bf16 weights, masters, moments and gradients, and the
    /// model gathers each unit's weights as it runs (src/train/fsdp.rs). Every rank calls it
    /// together: it joins the ranks' communicator.
    pub fn fully_sharded(backend: Cuda, cpu: &Llama, group: &Group) -> Result<Self> {
        let (model, fsdp, shard) = shard_model(cpu, backend, group)?;
        let no_decay = fsdp.layout.no_decay(&cpu.layout);
        let mut t = Self::with_state(model, &shard, fsdp.layout.len, &no_decay)?;
        t.fsdp = Some(fsdp);
        Ok(t)
    }

    /// The slice of the layout this rank's optimiser updates.
    fn own(&self) -> std::ops::Range<usize> {
        match self.shard {
            Some((rank, size)) => shard_range(self.grads.len(), rank, size),
            None => 0..self.grads.len(),
        }
    }

    /// One optimiser step on `batch` with the next-token cross-entropy, mean over the positions
    /// that have a next token: upstream gradient −1/count on each.
    pub fn lm_step(&mut self, batch: &Batch, dlogp: &CudaSlice<f32>, lr: f32) -> Result<()> {
        let fwd = self.model.forward_heads(batch, Heads::LOGP)?;
        self.zero_grads()?;
        let heads = HeadGrads {
            logp: Some(dlogp),
            ..Default::default()
        };
        self.model.backward(&fwd, &heads, &mut self.grads)?;
        fwd.recycle(&self.model.backend);
        self.apply(lr, self.max_grad_norm)
    }

    /// The global norm, then AdamW with the clip folded in; all on the device, no host round trip.
    /// The norm joins the history that `take_grad_norms` reads.
    fn apply(&mut self, lr: f32, max_norm: f32) -> Result<()> {
        if self.pending_norms == NORM_HISTORY {
            let early = self.read_history()?;
            self.read_norms.extend(early);
        }
        let eng = &self.model.backend.eng;
        match &self.fsdp {
            // Each rank holds a shard of the gradients: the squares' partial sums are summed
            // over the ranks before the root.
            Some(f) => {
                grad_norm_partial(eng, &mut self.norm_partial, &self.grads)?;
                f.comm.borrow_mut().all_reduce_sum(&mut self.norm_partial)?;
                grad_norm_finish(eng, &mut self.norm, &self.norm_partial)?;
            }
            None => grad_norm(eng, &mut self.norm, &mut self.norm_partial, &self.grads)?,
        }
        let k = self.pending_norms;
        eng.stream
            .memcpy_dtod(&self.norm, &mut self.norm_history.slice_mut(k..k + 1))
            .map_err(|e| anyhow::anyhow!("keeping the gradient norm: {e:?}"))?;
        self.pending_norms += 1;
        self.model.backend.retire();
        self.t += 1;
        let h = AdamWStep {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: self.weight_decay,
            t: self.t,
            max_norm,
        };
        let own = self.own();
        let (master, params) = (&mut self.master, &mut self.model.params);
        adamw_step(
            eng,
            master,
            &mut params.slice_mut(own.clone()),
            &self.grads.slice(own),
            &mut self.m,
            &mut self.v,
            &self.norm,
            self.no_decay.as_ref(),
            h,
        )?;
        // Sharded: every rank updated its slice of the bf16 weights; each sends it to the others
        // (an all-gather of unequal slices, in place), and the next forward waits for all.
        if let Some((_, size)) = self.shard {
            let n = self.grads.len();
            let reducer = self
                .reducer
                .as_mut()
                .context("a sharded optimiser step before the ranks' gradient sum")?;
            for root in 0..size {
                let part = shard_range(n, root, size);
                reducer
                    .comm
                    .broadcast_part(&mut self.model.params, part, root)?;
            }
            reducer.comm.join_compute()?;
        }
        Ok(())
    }

    /// Every rank's slices of the master weights and AdamW moments, whole, on the host of rank 0
    /// (and of every rank with `to_all`).
    fn gather_sharded(&mut self, group: &Group, to_all: bool) -> Result<Option<HostState>> {
        let want = to_all || group.is_root();
        let params = self.gather_buffer(group, 0, want)?;
        let m = self.gather_buffer(group, 1, want)?;
        let v = self.gather_buffer(group, 2, want)?;
        Ok(want.then_some(HostState {
            params,
            m,
            v,
            t: self.t,
        }))
    }

    /// The whole of one sharded buffer (0: the master weights, 1: m, 2: v), on this host when
    /// `want` (else empty): assembled chunk by chunk in a scratch of [`GATHER_CHUNK`] values, each
    /// rank broadcasting its part of the chunk, so a gather costs 64 MiB of device memory, not a
    /// whole buffer. Every rank calls it together.
    fn gather_buffer(&mut self, group: &Group, which: usize, want: bool) -> Result<Vec<f32>> {
        self.join(group)?;
        let (n, size, own) = (self.grads.len(), group.size(), self.own());
        let eng = &self.model.backend.eng;
        let comm = &mut self.reducer.as_mut().expect("joined above").comm;
        let mine = [&self.master, &self.m, &self.v][which];
        let mut scratch = eng.zeros::<f32>(GATHER_CHUNK.min(n))?;
        let mut host = Vec::with_capacity(if want { n } else { 0 });
        let err = |e| anyhow::anyhow!("gathering the sharded optimiser state: {e:?}");
        for at in (0..n).step_by(GATHER_CHUNK) {
            let end = (at + GATHER_CHUNK).min(n);
            let (lo, hi) = (own.start.max(at), own.end.min(end));
            if lo < hi {
                let src = mine.slice(lo - own.start..hi - own.start);
                let mut dst = scratch.slice_mut(lo - at..hi - at);
                eng.stream.memcpy_dtod(&src, &mut dst).map_err(err)?;
            }
            for root in 0..size {
                let r = shard_range(n, root, size);
                let (lo, hi) = (r.start.max(at), r.end.min(end));
                if lo < hi {
                    comm.broadcast_part(&mut scratch, lo - at..hi - at, root)?;
                }
            }
            comm.join_compute()?;
            if want {
                let part = eng
                    .stream
                    .clone_dtoh(&scratch.slice(0..end - at))
                    .map_err(err)?;
                host.extend(part);
            }
        }
        Ok(host)
    }

    /// Under `--shard full`: the whole of one sharded buffer (0: the master weights, 1: m, 2: v)
    /// on this host when `want` (else empty), gathered in chunks of [`GATHER_CHUNK`] values of
    /// every rank's shard and put back in their places. Every rank calls it together.
    fn gather_fsdp(&self, which: usize, want: bool) -> Result<Vec<f32>> {
        let f = self.fsdp.as_ref().expect("under --shard full");
        let (lay, eng) = (&f.layout, &self.model.backend.eng);
        let mine = [&self.master, &self.m, &self.v][which];
        let chunk = GATHER_CHUNK.min(lay.len).max(1);
        let mut scratch = eng.zeros::<f32>(chunk * lay.size)?;
        // Each chunk goes straight to its places: the host holds the whole buffer and one chunk.
        let mut whole = vec![0.0f32; if want { self.model.layout.len } else { 0 }];
        let err = |e| anyhow::anyhow!("gathering the fully sharded state: {e:?}");
        for at in (0..lay.len).step_by(chunk) {
            let n = chunk.min(lay.len - at);
            let mut comm = f.comm.borrow_mut();
            comm.all_gather_part(mine, at..at + n, &mut scratch)?;
            comm.join_compute()?;
            if want {
                let part = eng
                    .stream
                    .clone_dtoh(&scratch.slice(0..n * lay.size))
                    .map_err(err)?;
                for r in 0..lay.size {
                    lay.place_part(r, at, &part[r * n..(r + 1) * n], &mut whole);
                }
            }
        }
        Ok(whole)
    }

    /// Joins the ranks' communicator, once: at the first step's gradient sum, which every rank
    /// reaches (before its last micro-batch, or at the sum itself when it ran none).
    fn join(&mut self, group: &Group) -> Result<()> {
        if self.reducer.is_none() {
            self.reducer = Some(GradReducer {
                comm: DeviceComm::new(group, &self.model.backend.eng)?,
                buckets: buckets(&self.model.layout, self.bucket_values),
                queued: 0,
            });
        }
        Ok(())
    }

    /// The pending norms, oldest first, and an empty history.
    fn read_history(&mut self) -> Result<Vec<f32>> {
        let n = self.pending_norms;
        self.pending_norms = 0;
        if n == 0 {
            return Ok(Vec::new());
        }
        let all = self.model.backend.eng.download(&self.norm_history)?;
        Ok(all[..n].to_vec())
    }

    /// The upstream log-prob gradient of the mean next-token cross-entropy of `batch`.
    pub fn lm_loss_grad(&self, batch: &Batch) -> Result<CudaSlice<f32>> {
        let valid = batch.next_token_mask();
        let count = valid.iter().filter(|&&v| v).count().max(1) as f32;
        let g: Vec<f32> = valid
            .iter()
            .map(|&v| if v { -1.0 / count } else { 0.0 })
            .collect();
        self.model.backend.eng.upload(&g)
    }
}

impl TrainState for GpuTrainer {
    type B = Cuda;
    fn model(&self) -> &Llama<Cuda> {
        &self.model
    }
    fn model_and_grads(&mut self) -> ModelAndGrads<'_, Cuda> {
        (&self.model, GradSink::plain(&mut self.grads))
    }
    fn model_and_last_grads(&mut self, group: &Group) -> Result<ModelAndGrads<'_, Cuda>> {
        // Fully sharded, the backward reduce-scatters each unit as it leaves it.
        if group.size() == 1 || self.fsdp.is_some() {
            return Ok(self.model_and_grads());
        }
        self.join(group)?;
        let reducer = self.reducer.as_mut().expect("joined above");
        let sink = GradSink {
            buf: &mut self.grads,
            ready: Some(reducer),
        };
        Ok((&self.model, sink))
    }
    fn zero_grads(&mut self) -> Result<()> {
        self.model.backend.eng.zero(&mut self.grads)
    }
    fn all_reduce_grads(&mut self, group: &Group) -> Result<()> {
        if group.size() == 1 || self.fsdp.is_some() {
            return Ok(());
        }
        self.join(group)?;
        let reducer = self.reducer.as_mut().expect("joined above");
        reducer.finish(&mut self.grads)
    }
    fn step(&mut self, lr: f32, max_norm: f32) -> Result<()> {
        self.apply(lr, max_norm)
    }
    fn take_grad_norms(&mut self) -> Result<Vec<f32>> {
        let mut norms = std::mem::take(&mut self.read_norms);
        norms.extend(self.read_history()?);
        Ok(norms)
    }
    fn join_group(&mut self, group: &Group) -> Result<()> {
        if group.size() > 1 && self.fsdp.is_none() {
            self.join(group)?;
        }
        Ok(())
    }
    fn gather_params(&mut self, group: &Group) -> Result<Vec<f32>> {
        if self.fsdp.is_some() {
            return self.gather_fsdp(0, true);
        }
        if self.shard.is_some() {
            return self.gather_buffer(group, 0, true);
        }
        self.model.backend.eng.download(&self.master)
    }
    fn gather_state(&mut self, group: &Group, to_all: bool) -> Result<Option<HostState>> {
        if self.fsdp.is_some() {
            let want = to_all || group.is_root();
            let params = self.gather_fsdp(0, want)?;
            let m = self.gather_fsdp(1, want)?;
            let v = self.gather_fsdp(2, want)?;
            return Ok(want.then_some(HostState {
                params,
                m,
                v,
                t: self.t,
            }));
        }
        if self.shard.is_some() {
            return self.gather_sharded(group, to_all);
        }
        Ok(if to_all || group.is_root() {
            Some(self.host_state()?)
        } else {
            None
        })
    }
    fn host_state(&self) -> Result<HostState> {
        anyhow::ensure!(
            self.shard.is_none() && self.fsdp.is_none(),
            "the optimiser state is split over the ranks (--shard): gather_state collects it"
        );
        let eng = &self.model.backend.eng;
        Ok(HostState {
            params: eng.download(&self.master)?,
            m: eng.download(&self.m)?,
            v: eng.download(&self.v)?,
            t: self.t,
        })
    }
    fn generation_copy(&mut self) -> Result<Option<Llama<Cuda>>> {
        let Some(f) = &self.fsdp else {
            return Ok(None);
        };
        let params = f.gather_whole(&self.model.params)?;
        Ok(Some(Llama {
            cfg: self.model.cfg.clone(),
            layout: self.model.layout.clone(),
            params,
            backend: self.model.backend.share(),
            recompute: self.model.recompute,
            sharded: None,
        }))
    }
    fn restore(&mut self, s: HostState) -> Result<()> {
        anyhow::ensure!(
            s.params.len() == self.model.layout.len,
            "the checkpoint holds another model's parameters"
        );
        let b = &self.model.backend;
        if let Some(f) = &self.fsdp {
            // Each rank of this world takes its shard of the whole state, whatever the world
            // that saved it.
            let lay = &f.layout;
            let params = lay.shard_of(&s.params);
            self.master = b.eng.upload(&params)?;
            self.model.params = b.upload_params(&params)?;
            self.m = b.eng.upload(&lay.shard_of(&s.m))?;
            self.v = b.eng.upload(&lay.shard_of(&s.v))?;
            self.t = s.t;
            return Ok(());
        }
        let own = self.own();
        self.master = b.eng.upload(&s.params[own.clone()])?;
        self.model.params = b.upload_params(&s.params)?;
        let (m, v) = (&s.m[own.clone()], &s.v[own]);
        (self.m, self.v, self.t) = (b.eng.upload(m)?, b.eng.upload(v)?, s.t);
        Ok(())
    }
}
