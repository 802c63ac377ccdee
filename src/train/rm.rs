//! The reward model's objective: Bradley-Terry, −log σ(r_c − r_r − margin), with r the scalar
//! head at each sequence's last token.

use super::objective::{backward_and_recycle, Objective, PairRows, PendingStats, Split};
use super::pair_batch::PairBatch;
use crate::model::{GradSink, HeadGrads, Heads, Llama};
use crate::ops::Backend;
use anyhow::Result;

pub struct RewardObjective;

impl<B: Backend> Objective<B> for RewardObjective {
    fn pass(
        &self,
        model: &Llama<B>,
        split: &Split,
        idx: &[usize],
        grad: Option<(f32, GradSink<B>)>,
    ) -> Result<PendingStats<B>> {
        let pairs: Vec<_> = idx.iter().map(|&i| &split.pairs[i]).collect();
        let pad = model.cfg.pad_token_id;
        let pb = PairBatch::new(&pairs, pad.unwrap_or(0));
        let b = pb.pairs;
        let fwd = model.forward_heads(&pb.batch, Heads::VALUE)?;
        // The loss runs where the values are (kernels/reward_loss.cu on CUDA): the reward tokens'
        // positions go up, and each pair's loss and rewards stay there until the loop logs.
        let token: Vec<u32> = (0..2 * b).map(|r| pb.reward_token(r, pad) as u32).collect();
        let o = &model.backend;
        let token = o.index(&token)?;
        let margins = match pairs.iter().any(|p| p.margin.is_some()) {
            true => Some(
                o.to_device(
                    &pairs
                        .iter()
                        .map(|p| p.margin.unwrap_or(0.0))
                        .collect::<Vec<_>>(),
                )?,
            ),
            false => None,
        };
        let mut dvalue = o.acc(pb.batch.tokens())?;
        let mut rows = o.acc(3 * b)?;
        let scale = grad.as_ref().map_or(0.0, |(s, _)| *s);
        o.bradley_terry_loss(
            &mut dvalue,
            &mut rows,
            &fwd.value,
            &token,
            margins.as_ref(),
            b,
            scale,
        )?;
        let heads = HeadGrads {
            value: Some(&dvalue),
            ..Default::default()
        };
        backward_and_recycle(model, fwd, heads, grad)?;
        o.recycle_index(token);
        for x in [Some(dvalue), margins].into_iter().flatten() {
            o.recycle_acc(x);
        }
        Ok(PendingStats {
            rows,
            layout: PairRows::Reward,
            pairs: b,
            tokens: pb.real_tokens(),
        })
    }
}
