//! The reward model's objective: Bradley-Terry, −log σ(r_c − r_r − margin), with r the scalar
//! head at each sequence's last token.

use super::objective::{Objective, PairStats, Split};
use super::pair_batch::PairBatch;
use crate::loss::reward_model_loss;
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
        let value = model.backend.to_host(&fwd.value)?; // [2B·T]: the loss runs on the host
        let chosen: Vec<f32> = (0..b).map(|i| value[pb.reward_token(i, pad)]).collect();
        let rejected: Vec<f32> = (0..b).map(|i| value[pb.reward_token(b + i, pad)]).collect();
        let margins: Option<Vec<f32>> = pairs
            .iter()
            .any(|p| p.margin.is_some())
            .then(|| pairs.iter().map(|p| p.margin.unwrap_or(0.0)).collect());
        let out = reward_model_loss(&chosen, &rejected, margins.as_deref());
        if let Some((scale, grads)) = grad {
            let mut dvalue = vec![0.0; pb.batch.tokens()];
            for i in 0..b {
                dvalue[pb.reward_token(i, pad)] = scale * out.grad_chosen[i];
                dvalue[pb.reward_token(b + i, pad)] = scale * out.grad_rejected[i];
            }
            let dvalue = model.backend.to_device(&dvalue)?;
            let heads = HeadGrads {
                value: Some(&dvalue),
                ..Default::default()
            };
            model.backward(&fwd, &heads, grads)?;
        }
        Ok(PairStats {
            pairs: b,
            tokens: pb.real_tokens(),
            loss_sum: out.loss as f64 * b as f64,
            correct: chosen.iter().zip(&rejected).filter(|(c, r)| c > r).count(),
            ties: chosen.iter().zip(&rejected).filter(|(c, r)| c == r).count(),
            margin_sum: out.margins.iter().map(|&m| m as f64).sum(),
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
    ) -> Result<PairStats> {
        self.run(model, split, idx, Some((scale, grads)))
    }
    fn evaluate(&self, model: &Llama<B>, split: &Split, idx: &[usize]) -> Result<PairStats> {
        self.run(model, split, idx, None)
    }
}
