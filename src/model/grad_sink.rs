//! Where a backward adds its gradients, and whom it tells as parts of them become final: a
//! data-parallel trainer starts summing a layer's gradients over the ranks while the backward is
//! still running on the layers below (as PyTorch's DDP does with its buckets).
//!
//! A backward finishes the parameters in the reverse of their layout order: the heads (final
//! norm, an untied LM head, a score head: the end of the layout) first, then the decoder layers
//! from the last down, then the embedding (with a tied LM head) at the start of the layout. So
//! what is final at any point is always one contiguous tail of the layout.

use super::params::ParamLayout;
use crate::ops::Backend;
use anyhow::Result;
use std::ops::Range;

/// Told by a backward, with the gradient buffer, each time a tail of the layout became final.
pub trait GradsReady<B: Backend> {
    /// `final_from`: every gradient at or after this offset of the layout is final for this
    /// backward (no later kernel of it writes there). Offsets only ever decrease, and the last
    /// call has 0.
    fn ready(&mut self, grads: &mut B::Acc, final_from: usize) -> Result<()>;
}

/// A backward's destination: the gradient buffer (the parameter layout) and, on a trainer's last
/// micro-batch before a data-parallel step, whom to tell as it fills.
pub struct GradSink<'a, B: Backend> {
    pub buf: &'a mut B::Acc,
    pub ready: Option<&'a mut dyn GradsReady<B>>,
}

impl<'a, B: Backend> GradSink<'a, B> {
    /// Just the buffer: nobody is told.
    pub fn plain(buf: &'a mut B::Acc) -> Self {
        GradSink { buf, ready: None }
    }

    /// The same sink for a shorter borrow (to pass it on and keep it).
    pub fn reborrow(&mut self) -> GradSink<'_, B> {
        GradSink {
            buf: self.buf,
            ready: match &mut self.ready {
                Some(r) => Some(&mut **r),
                None => None,
            },
        }
    }

    /// Tells whoever listens that the layout from `final_from` on is final.
    pub fn finished_from(&mut self, final_from: usize) -> Result<()> {
        match &mut self.ready {
            Some(r) => r.ready(self.buf, final_from),
            None => Ok(()),
        }
    }
}

/// Where, in the layout, the gradients are final after each stage of a backward: after the
/// heads, after each decoder layer (from the last down), and at the end.
pub fn final_offsets(layout: &ParamLayout) -> Vec<usize> {
    let mut at = vec![layout.final_norm.start];
    at.extend(layout.layers.iter().rev().map(|l| l.input_norm.start));
    at.push(0);
    at
}

/// Cuts the layout into contiguous buckets, in the order a backward finishes them (from the end
/// of the layout to its start): each takes whole stages (the heads, a layer, the embedding) until
/// it holds at least `cap` values, and the last takes what is left. `cap` 0: a bucket per stage.
pub fn buckets(layout: &ParamLayout, cap: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut end = layout.len;
    for at in final_offsets(layout) {
        if end - at >= cap.max(1) || at == 0 {
            out.push(at..end);
            end = at;
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;

    fn layout(tied: bool) -> ParamLayout {
        let mut cfg = LlamaConfig::preset("tiny").expect("a preset");
        cfg.tie_word_embeddings = tied;
        ParamLayout::new(&cfg)
    }

    #[test]
    fn buckets_cover_the_layout_once_from_its_end() {
        for tied in [false, true] {
            let lay = layout(tied);
            for cap in [0, 1, 1000, lay.len / 3, lay.len, usize::MAX] {
                let b = buckets(&lay, cap);
                assert_eq!(b.first().unwrap().end, lay.len, "cap {cap}");
                assert_eq!(b.last().unwrap().start, 0, "cap {cap}");
                for w in b.windows(2) {
                    assert_eq!(w[0].start, w[1].end, "cap {cap}: contiguous, descending");
                }
                // Every bucket but the last holds at least the cap.
                for r in &b[..b.len() - 1] {
                    assert!(r.len() >= cap.max(1), "cap {cap}: {r:?}");
                }
            }
        }
    }

    #[test]
    fn cap_zero_gives_a_bucket_per_stage() {
        let lay = layout(false);
        let b = buckets(&lay, 0);
        // The heads, each layer, the embedding.
        assert_eq!(b.len(), lay.layers.len() + 2);
        assert_eq!(b[0], lay.final_norm.start..lay.len);
        let last = lay.layers.len() - 1;
        assert_eq!(
            b[1],
            lay.layers[last].input_norm.start..lay.layers[last].down_proj.end
        );
        assert_eq!(b[b.len() - 1], lay.embed.clone());
        // The whole model in one bucket when the cap exceeds it.
        assert_eq!(buckets(&lay, usize::MAX), vec![0..lay.len]);
    }
}
