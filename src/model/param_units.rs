//! The units a model's weights are sharded and gathered by under `--shard full` (FSDP, ZeRO-3),
//! and where each tensor sits in a unit's gathered buffer.
//!
//! Unit 0, the outer unit, is the embedding with the final norm and the heads (one unit, as FSDP
//! wraps a root module: with tied embeddings the LM head *is* the embedding); unit 1 + l is
//! decoder layer l. Each unit is a few contiguous ranges of the flat layout (src/model/params.rs),
//! and its gathered buffer holds them one after another. The forward and backward read a unit's
//! weights from its buffer at the offsets here, the same ops as over the whole model's buffer.

use super::params::{LayerSlots, ParamLayout};
use crate::ops::Backend;
use anyhow::Result;
use std::ops::Range;

/// The weights outside the decoder layers: embedding, final norm and heads, at offsets into a
/// buffer (the whole model's, or the outer unit's gathered one).
#[derive(Clone, Debug, PartialEq)]
pub struct OuterSlots {
    pub embed: Range<usize>,      // [V, D]
    pub final_norm: Range<usize>, // [D]
    /// The LM head [V, D]; `embed` again for tied embeddings.
    pub lm_head: Option<Range<usize>>,
    pub score: Option<Range<usize>>, // [1, D]
}

impl ParamLayout {
    /// The outer weights at their offsets in the whole model's buffer.
    pub fn outer_slots(&self) -> OuterSlots {
        OuterSlots {
            embed: self.embed.clone(),
            final_norm: self.final_norm.clone(),
            lm_head: self.lm_head.clone(),
            score: self.score.clone(),
        }
    }
}

/// The units of one layout: which layout ranges each holds, and every tensor's offsets inside a
/// unit's gathered buffer.
#[derive(Clone, Debug)]
pub struct ParamUnits {
    /// Unit u's layout ranges, in the order its gathered buffer concatenates them.
    pub ranges: Vec<Vec<Range<usize>>>,
    /// The outer weights' offsets in unit 0's buffer.
    pub outer: OuterSlots,
    /// Layer l's offsets in unit 1 + l's buffer.
    pub layers: Vec<LayerSlots>,
}

/// The unit of the outer weights.
pub const OUTER: usize = 0;

/// The unit of decoder layer `l`.
pub fn layer_unit(l: usize) -> usize {
    1 + l
}

impl ParamUnits {
    pub fn new(layout: &ParamLayout) -> Self {
        let tail = layout.final_norm.start..layout.len;
        let outer_ranges = vec![layout.embed.clone(), tail];
        let at = |r: &Range<usize>| rebase(r, &outer_ranges);
        let outer = OuterSlots {
            embed: at(&layout.embed),
            final_norm: at(&layout.final_norm),
            lm_head: layout.lm_head.as_ref().map(at),
            score: layout.score.as_ref().map(at),
        };
        let mut ranges = vec![outer_ranges.clone()];
        let mut layers = Vec::with_capacity(layout.layers.len());
        for l in &layout.layers {
            let whole: Vec<Range<usize>> =
                std::iter::once(l.input_norm.start..l.down_proj.end).collect();
            let at = |r: &Range<usize>| rebase(r, &whole);
            layers.push(LayerSlots {
                input_norm: at(&l.input_norm),
                q_proj: at(&l.q_proj),
                k_proj: at(&l.k_proj),
                v_proj: at(&l.v_proj),
                o_proj: at(&l.o_proj),
                post_attn_norm: at(&l.post_attn_norm),
                gate_proj: at(&l.gate_proj),
                up_proj: at(&l.up_proj),
                down_proj: at(&l.down_proj),
            });
            ranges.push(whole);
        }
        ParamUnits {
            ranges,
            outer,
            layers,
        }
    }

    pub fn count(&self) -> usize {
        self.ranges.len()
    }

    /// Values in unit `u`'s gathered buffer.
    pub fn len(&self, u: usize) -> usize {
        self.ranges[u].iter().map(|r| r.len()).sum()
    }

    /// The values of `unit` out of a whole layout-ordered buffer, in its gathered order.
    pub fn unit_values<T: Copy>(&self, unit: usize, whole: &[T]) -> Vec<T> {
        self.ranges[unit]
            .iter()
            .flat_map(|r| whole[r.clone()].iter().copied())
            .collect()
    }
}

/// `r` (inside one of `ranges`) as an offset range into the concatenation of `ranges`.
fn rebase(r: &Range<usize>, ranges: &[Range<usize>]) -> Range<usize> {
    let mut before = 0;
    for whole in ranges {
        if whole.start <= r.start && r.end <= whole.end {
            let at = before + r.start - whole.start;
            return at..at + r.len();
        }
        before += whole.len();
    }
    panic!("{r:?} is in no range of its unit {ranges:?}")
}

/// A model's weights split over the ranks (`--shard full`): each forward and backward gathers a
/// unit's weights just before using it and hands the buffer back after, and the backward gives
/// each unit's gradients to the ranks' reduce-scatter as it leaves the unit. `own` is this
/// rank's shard of the weights (the model's `params`).
pub trait GatheredWeights<B: Backend> {
    fn units(&self) -> &ParamUnits;
    /// Values in unit `unit`'s gathered buffer and gradient buffer: its length, padded to a
    /// whole number of equal pieces, one a rank.
    fn padded_len(&self, unit: usize) -> usize;
    /// Unit `unit`'s weights whole, in a buffer of `units().len(unit)` values; the device's later
    /// work waits for the gather. `next`, when given, is gathered meanwhile (on a GPU, on the
    /// communication stream while this unit computes): FSDP's prefetch.
    fn gather(&self, own: &B::Params, unit: usize, next: Option<usize>) -> Result<B::Params>;
    /// A gathered buffer back to the pool, once the work that reads it is queued.
    fn release(&self, buf: B::Params);
    /// Adds the ranks' sum of `grads` (unit `unit`'s whole gradient) to this rank's part of it
    /// in `shard` (the rank's gradient shard), and hands `grads` back to the pool: possibly
    /// later, while the backward runs on, but by [`GatheredWeights::flush`].
    fn reduce(&self, unit: usize, grads: B::Acc, shard: &mut B::Acc) -> Result<()>;
    /// Every reduce still in flight added to `shard`: the backward's last call.
    fn flush(&self, shard: &mut B::Acc) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;

    /// Every tensor of the layout is in exactly one unit, at the same values.
    #[test]
    fn units_cover_the_layout_once_and_rebase_every_tensor() {
        for tied in [false, true] {
            let mut cfg = LlamaConfig::preset("tiny").expect("a preset");
            cfg.tie_word_embeddings = tied;
            let layout = ParamLayout::new(&cfg);
            let units = ParamUnits::new(&layout);
            assert_eq!(units.count(), 1 + cfg.num_hidden_layers);
            let total: usize = (0..units.count()).map(|u| units.len(u)).sum();
            assert_eq!(total, layout.len);
            let whole: Vec<usize> = (0..layout.len).collect();
            let outer = units.unit_values(OUTER, &whole);
            let o = &units.outer;
            assert_eq!(&outer[o.embed.clone()], &whole[layout.embed.clone()]);
            assert_eq!(
                &outer[o.final_norm.clone()],
                &whole[layout.final_norm.clone()]
            );
            let (head, whole_head) = (o.lm_head.clone().unwrap(), layout.lm_head.clone().unwrap());
            assert_eq!(&outer[head.clone()], &whole[whole_head]);
            assert_eq!(head == o.embed, tied);
            for (l, slots) in layout.layers.iter().enumerate() {
                let unit = units.unit_values(layer_unit(l), &whole);
                let r = &units.layers[l];
                assert_eq!(&unit[r.q_proj.clone()], &whole[slots.q_proj.clone()]);
                assert_eq!(&unit[r.down_proj.clone()], &whole[slots.down_proj.clone()]);
                assert_eq!(r.input_norm.start, 0);
                assert_eq!(r.down_proj.end, units.len(layer_unit(l)));
            }
        }
    }
}
