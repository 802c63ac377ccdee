//! What a trainer updates, on the device it trains on: the model, its gradient buffer, and
//! AdamW's fp32 state. The loop in trainer.rs is written once over `TrainState`; the CPU keeps
//! everything in f32 (the oracle, bitwise reproducible), the GPU keeps bf16 weights for the
//! forward beside fp32 masters (src/train/gpu_step.rs).

use crate::dist::group::Group;
use crate::model::{GradSink, Llama};
use crate::ops::cpu::adamw::{clip_grad_norm, AdamW};
use crate::ops::cpu::Cpu;
use crate::ops::Backend;
use anyhow::Result;

/// The optimiser state as host arrays, for checkpoints.
pub struct HostState {
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub t: u64,
}

/// A trainer's model and its gradient sink, borrowed together.
pub type ModelAndGrads<'a, B> = (&'a Llama<B>, GradSink<'a, B>);

pub trait TrainState {
    type B: Backend;
    fn model(&self) -> &Llama<Self::B>;
    /// The model to run and the gradient buffer to accumulate into, borrowed together.
    fn model_and_grads(&mut self) -> ModelAndGrads<'_, Self::B>;
    /// [`TrainState::model_and_grads`] for the last micro-batch this rank runs before
    /// `all_reduce_grads`: where the device has streams, its backward starts summing the
    /// gradients over `group` bucket by bucket as they become final, overlapping the rest of the
    /// backward (as DDP does); `all_reduce_grads` then sums what is left and waits. Elsewhere
    /// (the CPU, one process) it is `model_and_grads`.
    fn model_and_last_grads(&mut self, group: &Group) -> Result<ModelAndGrads<'_, Self::B>> {
        let _ = group;
        Ok(self.model_and_grads())
    }
    /// Joins what the data-parallel step needs of `group` (on a GPU, the NCCL communicator),
    /// once; every rank calls it at the same point. Nothing for one process or the CPU.
    fn join_group(&mut self, group: &Group) -> Result<()> {
        let _ = group;
        Ok(())
    }
    fn zero_grads(&mut self) -> Result<()>;
    /// Sums the gradient buffer over the ranks of `group` (nothing for one process): each rank
    /// then holds the gradient of the whole global batch and takes the same optimiser step.
    /// Every rank calls it once per step, whether or not it ran a micro-batch.
    fn all_reduce_grads(&mut self, group: &Group) -> Result<()>;
    /// Clips the gradients to `max_norm` (0: no clipping) and takes one AdamW step at `lr`. The
    /// norm before clipping stays where it was computed (on a GPU: the device, so a step never
    /// waits for it) until `take_grad_norms`.
    fn step(&mut self, lr: f32, max_norm: f32) -> Result<()>;
    /// The gradient norms of the steps since the last call, oldest first; on a GPU this is the
    /// host synchronisation a training loop makes only when it logs.
    fn take_grad_norms(&mut self) -> Result<Vec<f32>>;
    /// The fp32 master weights and AdamW moments, on the host. Not for a sharded state: that is
    /// [`TrainState::gather_state`].
    fn host_state(&self) -> Result<HostState>;
    /// The fp32 master weights on every rank (gathered from the ranks' slices under --shard
    /// optimizer); every rank calls it together.
    fn gather_params(&mut self, group: &Group) -> Result<Vec<f32>> {
        let _ = group;
        Ok(self.host_state()?.params)
    }
    /// [`TrainState::host_state`] as every rank calls it together: on rank 0 (and on every rank
    /// with `to_all`), the whole state; `None` elsewhere. A state sharded over the ranks
    /// (`--shard optimizer`) is gathered from their slices.
    fn gather_state(&mut self, group: &Group, to_all: bool) -> Result<Option<HostState>> {
        Ok(if to_all || group.is_root() {
            Some(self.host_state()?)
        } else {
            None
        })
    }
    fn restore(&mut self, s: HostState) -> Result<()>;
    /// The model to generate rollouts from when this one cannot (its weights sharded over the
    /// ranks, `--shard full`): a whole copy gathered from the shards, which the caller drops
    /// before training (veRL's hybrid engine). None: generate from [`TrainState::model`]. Every
    /// rank calls it together.
    fn generation_copy(&mut self) -> Result<Option<Llama<Self::B>>> {
        Ok(None)
    }
}

/// Training on the CPU: f32 weights, gradients and moments.
pub struct CpuState {
    pub model: Llama<Cpu>,
    grads: Vec<f32>,
    adam: AdamW,
    norms: Vec<f32>,
}

impl CpuState {
    /// Weight decay skips the model's norm gains and biases (`ParamLayout::no_decay_ranges`).
    pub fn new(model: Llama<Cpu>, weight_decay: f32) -> Self {
        let n = model.layout.len;
        let no_decay = model.layout.no_decay_ranges();
        CpuState {
            model,
            grads: vec![0.0; n],
            adam: AdamW::new(n, weight_decay, no_decay),
            norms: Vec::new(),
        }
    }
}

impl TrainState for CpuState {
    type B = Cpu;
    fn model(&self) -> &Llama<Cpu> {
        &self.model
    }
    fn model_and_grads(&mut self) -> ModelAndGrads<'_, Cpu> {
        (&self.model, GradSink::plain(&mut self.grads))
    }
    fn zero_grads(&mut self) -> Result<()> {
        self.grads.fill(0.0);
        Ok(())
    }
    fn all_reduce_grads(&mut self, group: &Group) -> Result<()> {
        group.all_reduce_sum_f32("gradients", &mut self.grads)
    }
    fn step(&mut self, lr: f32, max_norm: f32) -> Result<()> {
        let norm = clip_grad_norm(&mut self.grads, max_norm);
        self.adam.step(&mut self.model.params, &self.grads, lr);
        self.norms.push(norm);
        Ok(())
    }
    fn take_grad_norms(&mut self) -> Result<Vec<f32>> {
        Ok(std::mem::take(&mut self.norms))
    }
    fn host_state(&self) -> Result<HostState> {
        Ok(HostState {
            params: self.model.params.clone(),
            m: self.adam.m.clone(),
            v: self.adam.v.clone(),
            t: self.adam.t,
        })
    }
    fn restore(&mut self, s: HostState) -> Result<()> {
        anyhow::ensure!(
            s.params.len() == self.model.params.len(),
            "the checkpoint holds another model's parameters"
        );
        (self.model.params, self.adam.m, self.adam.v, self.adam.t) = (s.params, s.m, s.v, s.t);
        Ok(())
    }
}
