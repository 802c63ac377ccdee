//! The reward model's objective: Bradley-Terry, −log σ(r_c − r_r − margin), with r the scalar
//! head at each sequence's last token.

use super::objective::{Objective, PairStats, PendingStats, Split};
use super::pair_batch::PairBatch;
use crate::model::{Backend, HeadGrads, Heads, Llama};
use anyhow::Result;

pub struct RewardObjective;

impl RewardObjective {
    fn run<B: Backend>(
        &self,
        model: &Llama<B>,
        split: &Split,
        idx: &[usize],
        grad: Option<(f32, &mut B::Acc)>,
    ) -> Result<PairStats> {
        let pairs: Vec<_> = idx.iter().map(|&i| &split.pairs[i]).collect();
        let pad = model.cfg.pad_token_id;
        let pb = PairBatch::new(&pairs, pad.unwrap_or(0));
        let b = pb.pairs;
        let fwd = model.forward_heads(&pb.batch, Heads::VALUE)?;
        // The loss runs where the values are (kernels/reward_loss.cu on CUDA): the reward tokens'
        // positions go up, three floats per pair come back.
        let token: Vec<u32> = (0..2 * b).map(|r| pb.reward_token(r, pad) as u32).collect();
        let margins: Option<Vec<f32>> = pairs
            .iter()
            .any(|p| p.margin.is_some())
            .then(|| pairs.iter().map(|p| p.margin.unwrap_or(0.0)).collect());
        let o = &model.backend;
        let mut dvalue = o.acc(pb.batch.tokens())?;
        let scale = grad.as_ref().map_or(0.0, |(s, _)| *s);
        let out = o.bradley_terry_loss(
            &mut dvalue,
            &fwd.value,
            &token,
            margins.as_deref(),
            b,
            scale,
        )?;
        if let Some((_, grads)) = grad {
            let heads = HeadGrads {
                value: Some(&dvalue),
                ..Default::default()
            };
            model.backward(&fwd, &heads, grads)?;
        }
        fwd.recycle(o);
        o.recycle_acc(dvalue);
        let (chosen, rejected) = (&out.chosen, &out.rejected);
        Ok(PairStats {
            pairs: b,
            tokens: pb.real_tokens(),
            loss_sum: out.loss as f64 * b as f64,
            correct: chosen.iter().zip(rejected).filter(|(c, r)| c > r).count(),
            ties: chosen.iter().zip(rejected).filter(|(c, r)| c == r).count(),
            margin_sum: chosen
                .iter()
                .zip(rejected)
                .map(|(c, r)| (c - r) as f64)
                .sum(),
            chosen_reward_sum: chosen.iter().map(|&r| r as f64).sum(),
            rejected_reward_sum: rejected.iter().map(|&r| r as f64).sum(),
            policy_logp_sums: None,
        })
    }
}

impl<B: Backend> Objective<B> for RewardObjective {
    fn accumulate(
        &self,
        model: &Llama<B>,
        split: &Split,
        idx: &[usize],
        scale: f32,
        grads: &mut B::Acc,
    ) -> Result<PendingStats<B>> {
        // The reward model's three floats per pair come back at once (kernels/reward_loss.cu).
        Ok(PendingStats::Host(self.run(
            model,
            split,
            idx,
            Some((scale, grads)),
        )?))
    }
    fn evaluate(&self, model: &Llama<B>, split: &Split, idx: &[usize]) -> Result<PairStats> {
        self.run(model, split, idx, None)
    }
}
