//! `--shard full` (FSDP, ZeRO-3) on the GPU: every rank keeps a shard of the bf16 weights, the
//! fp32 masters, the AdamW moments and the gradients, and gathers each unit's weights (the
//! outer unit, then decoder layer by layer: src/model/param_units.rs) just before the forward
//! or backward uses them.
//!
//! - **The shard.** Unit u's values (its gathered order) are cut into `size` pieces of
//!   ⌈len/size⌉, the last padded with zeros (FSDP1's flat-parameter padding), so every rank's
//!   piece is the same length and a gather is one `ncclAllGather`. A rank's shard is its piece of
//!   each unit, unit after unit. Padding stays zero: its gradient is zero, so AdamW never moves it.
//! - **Gathers overlap compute.** A unit's gather is queued on the communication stream after
//!   the compute stream's work so far; the forward gathers the next layer while this one
//!   computes (the backward, the layer below). The compute stream waits for a unit's gather by an
//!   event just before its first kernel reads it; the gathered buffer goes back to the pool after.
//! - **Gradients leave as the backward leaves a unit.** The unit's whole gradient (a pooled
//!   buffer) is reduce-scattered into a piece-sized scratch while the backward runs on into the
//!   unit below, and added to the rank's gradient shard (`accumulate_f32`) when the next unit's
//!   scatter is queued (or the backward ends), so micro-batches accumulate as without sharding.
//!   Each gather and scatter has its own event: the compute stream waits for the one it needs.
//! - **Every rank runs the same passes.** A gather is a collective, so a rank with fewer
//!   micro-batches or evaluation chunks runs a pass over a one-token batch instead
//!   ([`crate::train::state::TrainState::idle_pass`]), as FSDP users pad their last batch.

use crate::dist::group::Group;
use crate::dist::nccl::DeviceComm;
use crate::model::param_units::{GatheredWeights, ParamUnits};
use crate::model::{Llama, ParamLayout};
use crate::ops::cuda::accumulate::accumulate_f32;
use crate::ops::cuda::backend::Cuda;
use crate::ops::Backend;
use anyhow::Result;
use cudarc::driver::{CudaEvent, CudaSlice};
use half::bf16;
use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;

/// Where this rank's shard of every unit sits.
#[derive(Clone, Debug)]
pub struct ShardLayout {
    pub units: ParamUnits,
    pub rank: usize,
    pub size: usize,
    /// Each unit's piece: ⌈len/size⌉ values.
    piece: Vec<usize>,
    /// Where each unit's piece starts in the shard.
    offset: Vec<usize>,
    /// The shard's values.
    pub len: usize,
}

impl ShardLayout {
    pub fn new(units: ParamUnits, rank: usize, size: usize) -> Self {
        let piece: Vec<usize> = (0..units.count())
            .map(|u| units.len(u).div_ceil(size))
            .collect();
        let offset: Vec<usize> = piece
            .iter()
            .scan(0, |at, &p| {
                let here = *at;
                *at += p;
                Some(here)
            })
            .collect();
        let len = piece.iter().sum();
        ShardLayout {
            units,
            rank,
            size,
            piece,
            offset,
            len,
        }
    }

    /// Unit `u`'s piece in the shard.
    pub fn piece_range(&self, u: usize) -> Range<usize> {
        self.offset[u]..self.offset[u] + self.piece[u]
    }

    /// Unit `u`'s gathered buffer: every rank's piece, padding included.
    pub fn gathered_len(&self, u: usize) -> usize {
        self.piece[u] * self.size
    }

    /// For rank `rank`'s shard: (shard offset, layout range) runs, every layout value a rank
    /// holds once; padding is in no run.
    fn runs(&self, rank: usize) -> Vec<(usize, Range<usize>)> {
        let mut out = Vec::new();
        for u in 0..self.units.count() {
            let mine = rank * self.piece[u]..(rank + 1) * self.piece[u];
            let mut unit_at = 0; // where each layout range starts in the unit's order
            for r in &self.units.ranges[u] {
                let (lo, hi) = (mine.start.max(unit_at), mine.end.min(unit_at + r.len()));
                if lo < hi {
                    let shard_at = self.offset[u] + lo - mine.start;
                    out.push((shard_at, r.start + lo - unit_at..r.start + hi - unit_at));
                }
                unit_at += r.len();
            }
        }
        out
    }

    /// This rank's shard of a whole layout-ordered buffer (zeros where it pads).
    pub fn shard_of<T: Copy + Default>(&self, whole: &[T]) -> Vec<T> {
        let mut shard = vec![T::default(); self.len];
        for (at, r) in self.runs(self.rank) {
            shard[at..at + r.len()].copy_from_slice(&whole[r]);
        }
        shard
    }

    /// Rank `rank`'s shard put back in its places of a whole layout-ordered buffer.
    pub fn place(&self, rank: usize, shard: &[f32], whole: &mut [f32]) {
        self.place_part(rank, 0, shard, whole);
    }

    /// `values`, rank `rank`'s shard from offset `from` on, put back in their places of a whole
    /// layout-ordered buffer: a gather's chunk goes straight where it belongs.
    pub fn place_part(&self, rank: usize, from: usize, values: &[f32], whole: &mut [f32]) {
        let to = from + values.len();
        for (at, r) in self.runs(rank) {
            let (lo, hi) = (at.max(from), (at + r.len()).min(to));
            if lo < hi {
                let dst = r.start + lo - at..r.start + hi - at;
                whole[dst].copy_from_slice(&values[lo - from..hi - from]);
            }
        }
    }

    /// `layout`'s no-decay ranges as they fall in this rank's shard, sorted and merged.
    pub fn no_decay(&self, layout: &ParamLayout) -> Vec<Range<usize>> {
        let skip = layout.no_decay_ranges();
        let mut out: Vec<Range<usize>> = Vec::new();
        for (at, r) in self.runs(self.rank) {
            for s in &skip {
                let (lo, hi) = (s.start.max(r.start), s.end.min(r.end));
                if lo < hi {
                    let piece = at + lo - r.start..at + hi - r.start;
                    match out.last_mut() {
                        Some(last) if last.end == piece.start => last.end = piece.end,
                        _ => out.push(piece),
                    }
                }
            }
        }
        out.sort_by_key(|r| r.start);
        out
    }
}

/// The GPU side of `--shard full`: gathers, the prefetch, and the gradients' reduce-scatter,
/// over the ranks' communicator. The model holds it as its `sharded` weights; the trainer holds
/// the same one for the optimiser's collectives.
pub struct FsdpWeights {
    pub layout: ShardLayout,
    backend: Cuda,
    pub comm: RefCell<DeviceComm>,
    /// A gather queued ahead of its use: the unit, its buffer, and the event after it.
    pending: RefCell<Option<(usize, CudaSlice<bf16>, CudaEvent)>>,
    /// A reduce-scatter in flight while the backward runs on: the unit, its gradient buffer
    /// (the scatter's input), and the event after it. Its piece is added to the shard before the
    /// next one is queued, and at the backward's end.
    reducing: RefCell<Option<(usize, CudaSlice<f32>, CudaEvent)>>,
    /// The reduce-scatter's piece, before it is added to the gradient shard.
    scratch: RefCell<Option<CudaSlice<f32>>>,
    /// Fault injection for the test that the stream check sees a dropped wait (software GPU
    /// only): the compute stream does not wait for a prefetched gather.
    skip_wait: bool,
}

impl FsdpWeights {
    pub fn new(layout: ShardLayout, backend: Cuda, comm: DeviceComm) -> Rc<FsdpWeights> {
        let skip_wait = crate::emu::is_active()
            && std::env::var_os("PREFER_EMU_FAULT_FSDP_SKIP_WAIT").is_some_and(|v| v == "1");
        Rc::new(FsdpWeights {
            layout,
            backend,
            comm: RefCell::new(comm),
            pending: RefCell::new(None),
            reducing: RefCell::new(None),
            scratch: RefCell::new(None),
            skip_wait,
        })
    }

    /// Queues unit `u`'s gather into a pooled buffer, after the compute stream's work so far:
    /// the buffer and the event after the gather.
    fn issue(&self, own: &CudaSlice<bf16>, u: usize) -> Result<(CudaSlice<bf16>, CudaEvent)> {
        let mut buf = self.backend.act(self.layout.gathered_len(u))?;
        let mut comm = self.comm.borrow_mut();
        comm.all_gather_part(own, self.layout.piece_range(u), &mut buf)?;
        Ok((buf, comm.comm_event()?))
    }

    /// The reduce-scatter in flight, if any, finished: the compute stream waits for it, adds its
    /// piece to `shard`, and the unit's gradient buffer goes back to the pool.
    fn finish_reduce(&self, shard: &mut CudaSlice<f32>) -> Result<()> {
        let Some((unit, grads, done)) = self.reducing.borrow_mut().take() else {
            return Ok(());
        };
        self.comm.borrow_mut().compute_waits(&done)?;
        let piece = self.layout.piece_range(unit);
        let scratch = self.scratch.borrow();
        let s = scratch.as_ref().expect("made by the reduce");
        accumulate_f32(
            &self.backend.eng,
            &mut shard.slice_mut(piece.clone()),
            &s.slice(0..piece.len()),
        )?;
        self.backend.recycle_acc(grads);
        Ok(())
    }
}

impl FsdpWeights {
    /// Every unit gathered into one buffer of the whole model's bf16 weights, in the layout's
    /// order: PPO's generation copy (veRL's hybrid engine), made once an iteration and freed
    /// before training. Every rank calls it together.
    pub fn gather_whole(&self, own: &CudaSlice<bf16>) -> Result<CudaSlice<bf16>> {
        let units = &self.layout.units;
        let total: usize = (0..units.count()).map(|u| units.len(u)).sum();
        let eng = &self.backend.eng;
        let mut whole = eng.zeros::<bf16>(total)?;
        // A gather left queued by a pass that stopped part-way goes back first.
        if let Some((_, stale, _)) = self.pending.borrow_mut().take() {
            self.backend.recycle_act(stale);
        }
        let err = |e| anyhow::anyhow!("copying a gathered unit into the generation copy: {e:?}");
        for u in 0..units.count() {
            let (buf, gathered) = self.issue(own, u)?;
            self.comm.borrow_mut().compute_waits(&gathered)?;
            let mut at = 0;
            for r in &units.ranges[u] {
                eng.stream
                    .memcpy_dtod(
                        &buf.slice(at..at + r.len()),
                        &mut whole.slice_mut(r.clone()),
                    )
                    .map_err(err)?;
                at += r.len();
            }
            self.backend.recycle_act(buf);
        }
        Ok(whole)
    }
}

/// `cpu`'s model sharded over `group`'s ranks: the model (this rank's bf16 shard as its
/// `params`, gathering through the returned [`FsdpWeights`]) and this rank's f32 shard of the
/// weights. Every rank calls it together (it joins a communicator of its own).
pub fn shard_model(
    cpu: &Llama,
    backend: Cuda,
    group: &Group,
) -> Result<(Llama<Cuda>, Rc<FsdpWeights>, Vec<f32>)> {
    let comm = DeviceComm::new(group, &backend.eng)?;
    let layout = ShardLayout::new(ParamUnits::new(&cpu.layout), group.rank(), group.size());
    let shard = layout.shard_of(&cpu.params);
    let fsdp = FsdpWeights::new(layout, backend.share(), comm);
    let model = Llama {
        cfg: cpu.cfg.clone(),
        layout: cpu.layout.clone(),
        params: backend.upload_params(&shard)?,
        backend,
        recompute: cpu.recompute,
        sharded: Some(Box::new(SharedFsdp(fsdp.clone()))),
    };
    Ok((model, fsdp, shard))
}

/// A frozen model (PPO's reference or reward model) sharded over `group`'s ranks as `--shard
/// full` shards a trained one: each rank keeps its shard of the bf16 weights, and every forward
/// gathers unit by unit.
pub fn shard_frozen(cpu: &Llama, backend: Cuda, group: &Group) -> Result<Llama<Cuda>> {
    Ok(shard_model(cpu, backend, group)?.0)
}

/// The model's handle on the shared [`FsdpWeights`].
pub struct SharedFsdp(pub Rc<FsdpWeights>);

impl GatheredWeights<Cuda> for SharedFsdp {
    fn units(&self) -> &ParamUnits {
        &self.0.layout.units
    }

    fn padded_len(&self, unit: usize) -> usize {
        self.0.layout.gathered_len(unit)
    }

    fn gather(
        &self,
        own: &CudaSlice<bf16>,
        unit: usize,
        next: Option<usize>,
    ) -> Result<CudaSlice<bf16>> {
        let f = &self.0;
        let queued = f.pending.borrow_mut().take();
        let (buf, gathered, prefetched) = match queued {
            Some((u, buf, gathered)) if u == unit => (buf, gathered, true),
            // A pass that stopped part-way (an error) left another unit queued.
            Some((_, stale, _)) => {
                f.backend.recycle_act(stale);
                let (buf, gathered) = f.issue(own, unit)?;
                (buf, gathered, false)
            }
            None => {
                let (buf, gathered) = f.issue(own, unit)?;
                (buf, gathered, false)
            }
        };
        // The compute stream waits for this unit's gather alone (not for a reduce-scatter queued
        // after it), and only then is the next one queued, so that it overlaps this unit's
        // compute.
        if !(prefetched && f.skip_wait) {
            f.comm.borrow_mut().compute_waits(&gathered)?;
        }
        if let Some(next) = next {
            let (nb, ne) = f.issue(own, next)?;
            *f.pending.borrow_mut() = Some((next, nb, ne));
        }
        Ok(buf)
    }

    fn release(&self, buf: CudaSlice<bf16>) {
        self.0.backend.recycle_act(buf);
    }

    fn reduce(&self, unit: usize, grads: CudaSlice<f32>, shard: &mut CudaSlice<f32>) -> Result<()> {
        let f = &self.0;
        // The one before first: its piece leaves the scratch before this one lands there (the
        // scatter below is queued after the compute stream's add).
        f.finish_reduce(shard)?;
        let piece = f.layout.piece_range(unit);
        let mut scratch = f.scratch.borrow_mut();
        if scratch.as_ref().is_none_or(|s| s.len() < piece.len()) {
            *scratch = Some(f.backend.eng.zeros::<f32>(piece.len().max(1))?);
        }
        let s = scratch.as_mut().expect("made above");
        // `size` pieces, the padding zero (acc buffers come zeroed); the backward runs on into
        // the layer below while it flies.
        let mut comm = f.comm.borrow_mut();
        comm.reduce_scatter_part(&grads, piece.len(), s)?;
        let done = comm.comm_event()?;
        *f.reducing.borrow_mut() = Some((unit, grads, done));
        Ok(())
    }

    fn flush(&self, shard: &mut CudaSlice<f32>) -> Result<()> {
        self.0.finish_reduce(shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;

    /// The ranks' shards put back together are the whole buffer; each shard has every unit's
    /// piece at the same length, zeros where it pads.
    #[test]
    fn shards_of_every_rank_reassemble_the_layout() {
        let cfg = LlamaConfig::preset("tiny").expect("a preset");
        let layout = ParamLayout::new(&cfg);
        let whole: Vec<f32> = (0..layout.len).map(|i| i as f32 + 1.0).collect();
        for size in [1, 2, 3, 4, 7] {
            let mut back = vec![0.0f32; layout.len];
            let mut held = 0;
            for rank in 0..size {
                let s = ShardLayout::new(ParamUnits::new(&layout), rank, size);
                let shard = s.shard_of(&whole);
                assert_eq!(shard.len(), s.len);
                held += shard.iter().filter(|&&x| x != 0.0).count();
                s.place(rank, &shard, &mut back);
            }
            assert_eq!(back, whole, "size {size}");
            assert_eq!(held, layout.len, "every value on one rank, size {size}");
        }
    }

    /// A shard placed chunk by chunk (as a gather's chunks arrive) lands as placed whole.
    #[test]
    fn a_shard_placed_in_chunks_lands_as_placed_whole() {
        let cfg = LlamaConfig::preset("tiny").expect("a preset");
        let layout = ParamLayout::new(&cfg);
        let whole: Vec<f32> = (0..layout.len).map(|i| i as f32 + 1.0).collect();
        let size = 3;
        let mut back = vec![0.0f32; layout.len];
        for rank in 0..size {
            let s = ShardLayout::new(ParamUnits::new(&layout), rank, size);
            let shard = s.shard_of(&whole);
            for from in (0..shard.len()).step_by(1000) {
                let to = (from + 1000).min(shard.len());
                s.place_part(rank, from, &shard[from..to], &mut back);
            }
        }
        assert_eq!(back, whole);
    }

    /// The no-decay ranges in a shard are exactly the norm gains it holds.
    #[test]
    fn no_decay_ranges_follow_the_norm_gains_into_each_shard() {
        let cfg = LlamaConfig::preset("tiny").expect("a preset");
        let layout = ParamLayout::new(&cfg);
        let mark: Vec<f32> = {
            let mut m = vec![0.0f32; layout.len];
            for r in layout.no_decay_ranges() {
                m[r].fill(1.0);
            }
            m
        };
        for size in [2, 3] {
            for rank in 0..size {
                let s = ShardLayout::new(ParamUnits::new(&layout), rank, size);
                let shard = s.shard_of(&mark);
                let mut from_ranges = vec![0.0f32; s.len];
                for r in s.no_decay(&layout) {
                    from_ranges[r].fill(1.0);
                }
                assert_eq!(from_ranges, shard, "rank {rank} of {size}");
            }
        }
    }
}
