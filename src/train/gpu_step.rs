//! A training step on the GPU: the generic Llama forward and backward on the CUDA backend, then the
//! global gradient norm and AdamW over fp32 master weights, which also refreshes the bf16 copy the
//! forward reads. Parameters, gradients and both moments are one allocation each.

use super::state::{HostState, ModelAndGrads, TrainState};
use crate::dist::group::Group;
use crate::dist::nccl::DeviceComm;
use crate::model::grad_sink::{buckets, GradsReady};
use crate::model::{Batch, GradSink, HeadGrads, Heads, Llama};
use crate::ops::cuda::adamw::{adamw_step, grad_norm, norm_scratch, upload_no_decay, AdamWStep};
use crate::ops::cuda::backend::Cuda;
use crate::ops::Backend;
use anyhow::Result;
use cudarc::driver::CudaSlice;

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
}

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
        let model = cpu.upload(backend)?;
        let eng = &model.backend.eng;
        let n = cpu.layout.len;
        Ok(GpuTrainer {
            master: eng.upload(&cpu.params)?,
            grads: eng.zeros(n)?,
            m: eng.zeros(n)?,
            v: eng.zeros(n)?,
            norm: eng.zeros(1)?,
            no_decay: upload_no_decay(eng, &cpu.layout.no_decay_ranges())?,
            norm_partial: norm_scratch(eng)?,
            norm_history: eng.zeros(NORM_HISTORY)?,
            pending_norms: 0,
            read_norms: Vec::new(),
            t: 0,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            bucket_values: DEFAULT_BUCKET_VALUES,
            reducer: None,
            model,
        })
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
        grad_norm(eng, &mut self.norm, &mut self.norm_partial, &self.grads)?;
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
        let (master, params) = (&mut self.master, &mut self.model.params);
        adamw_step(
            eng,
            master,
            params,
            &self.grads,
            &mut self.m,
            &mut self.v,
            &self.norm,
            self.no_decay.as_ref(),
            h,
        )
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
        if group.size() == 1 {
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
        if group.size() == 1 {
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
    fn host_state(&self) -> Result<HostState> {
        let eng = &self.model.backend.eng;
        Ok(HostState {
            params: eng.download(&self.master)?,
            m: eng.download(&self.m)?,
            v: eng.download(&self.v)?,
            t: self.t,
        })
    }
    fn restore(&mut self, s: HostState) -> Result<()> {
        anyhow::ensure!(
            s.params.len() == self.master.len(),
            "the checkpoint holds another model's parameters"
        );
        let b = &self.model.backend;
        self.master = b.eng.upload(&s.params)?;
        self.model.params = b.upload_params(&s.params)?;
        (self.m, self.v, self.t) = (b.eng.upload(&s.m)?, b.eng.upload(&s.v)?, s.t);
        Ok(())
    }
}
