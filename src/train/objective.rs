//! What an offline trainer optimises: the reward model's Bradley-Terry loss or a DPO-family loss.
//! The training loop (trainer.rs) is the same for both.

use crate::data::preference::PreferencePair;
use crate::model::{Backend, Llama};
use crate::ops::cpu::dpo_loss::DpoPairs;
use anyhow::Result;

/// Loss and metrics over some pairs; sums, so micro-batches and evaluation chunks add up.
#[derive(Clone, Debug, Default)]
pub struct PairStats {
    pub pairs: usize,
    pub tokens: usize,
    pub loss_sum: f64,
    pub correct: usize,
    /// Pairs whose margin is exactly 0: counted as wrong (as TRL does), and reported apart, so
    /// an untrained model's accuracy of 0 is explained.
    pub ties: usize,
    pub margin_sum: f64,
    pub chosen_reward_sum: f64,
    pub rejected_reward_sum: f64,
    /// DPO: the policy's sequence log-probs (chosen, rejected) summed over pairs; TRL's
    /// `logps/chosen` and `logps/rejected` are their means. None for the reward model.
    pub policy_logp_sums: Option<(f64, f64)>,
}

impl PairStats {
    pub fn add(&mut self, o: &PairStats) {
        self.pairs += o.pairs;
        self.tokens += o.tokens;
        self.loss_sum += o.loss_sum;
        self.correct += o.correct;
        self.ties += o.ties;
        self.margin_sum += o.margin_sum;
        self.chosen_reward_sum += o.chosen_reward_sum;
        self.rejected_reward_sum += o.rejected_reward_sum;
        if let Some((c, r)) = o.policy_logp_sums {
            let (sc, sr) = self.policy_logp_sums.get_or_insert((0.0, 0.0));
            *sc += c;
            *sr += r;
        }
    }
    fn mean(&self, x: f64) -> f64 {
        if self.pairs == 0 {
            0.0
        } else {
            x / self.pairs as f64
        }
    }
    pub fn loss(&self) -> f64 {
        self.mean(self.loss_sum)
    }
    pub fn accuracy(&self) -> f64 {
        self.mean(self.correct as f64)
    }
    pub fn tie_rate(&self) -> f64 {
        self.mean(self.ties as f64)
    }
    pub fn margin(&self) -> f64 {
        self.mean(self.margin_sum)
    }
    pub fn chosen_reward(&self) -> f64 {
        self.mean(self.chosen_reward_sum)
    }
    pub fn rejected_reward(&self) -> f64 {
        self.mean(self.rejected_reward_sum)
    }
    /// Mean policy log-probs (chosen, rejected), for objectives that have them.
    pub fn policy_logps(&self) -> Option<(f64, f64)> {
        self.policy_logp_sums
            .map(|(c, r)| (self.mean(c), self.mean(r)))
    }
}

/// A micro-batch's loss and metrics where they were computed, one row per pair (on the device
/// for a GPU), read back only when the training loop logs, so the steps in between never wait
/// for the device.
pub enum PendingStats<B: Backend> {
    /// [pairs, 5] rows of `DpoPairs::from_rows`.
    DpoRows {
        rows: B::Acc,
        pairs: usize,
        tokens: usize,
    },
    /// [pairs, 3] rows of `RewardPairs::from_rows`.
    RewardRows {
        rows: B::Acc,
        pairs: usize,
        tokens: usize,
    },
}

impl<B: Backend> PendingStats<B> {
    /// The stats on the host (a device-to-host copy for the device rows).
    pub fn resolve(self, o: &B) -> Result<PairStats> {
        match self {
            PendingStats::DpoRows {
                rows,
                pairs,
                tokens,
            } => {
                let host = o.to_host(&rows)?;
                o.recycle_acc(rows);
                Ok(PairStats::of_dpo(
                    &DpoPairs::from_rows(&host, pairs),
                    tokens,
                ))
            }
            PendingStats::RewardRows {
                rows,
                pairs,
                tokens,
            } => {
                let host = o.to_host(&rows)?;
                o.recycle_acc(rows);
                Ok(PairStats::of_reward(&host, pairs, tokens))
            }
        }
    }
}

impl PairStats {
    /// The sums of a reward-model micro-batch's rows [pairs, 3]: loss, chosen and rejected reward.
    pub fn of_reward(rows: &[f32], pairs: usize, tokens: usize) -> PairStats {
        let col = |k: usize| (0..pairs).map(move |i| rows[i * 3 + k]);
        let margins: Vec<f32> = col(1).zip(col(2)).map(|(c, r)| c - r).collect();
        PairStats {
            pairs,
            tokens,
            loss_sum: col(0).map(|x| x as f64).sum(),
            correct: margins.iter().filter(|&&m| m > 0.0).count(),
            ties: margins.iter().filter(|&&m| m == 0.0).count(),
            margin_sum: margins.iter().map(|&m| m as f64).sum(),
            chosen_reward_sum: col(1).map(|x| x as f64).sum(),
            rejected_reward_sum: col(2).map(|x| x as f64).sum(),
            policy_logp_sums: None,
        }
    }

    /// The sums of a DPO micro-batch's per-pair outputs.
    pub fn of_dpo(out: &DpoPairs, tokens: usize) -> PairStats {
        let b = out.losses.len();
        let sum = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>();
        let margins: Vec<f32> = out
            .chosen_rewards
            .iter()
            .zip(&out.rejected_rewards)
            .map(|(c, r)| c - r)
            .collect();
        PairStats {
            pairs: b,
            tokens,
            loss_sum: sum(&out.losses),
            correct: margins.iter().filter(|&&m| m > 0.0).count(),
            ties: margins.iter().filter(|&&m| m == 0.0).count(),
            margin_sum: sum(&margins),
            chosen_reward_sum: sum(&out.chosen_rewards),
            rejected_reward_sum: sum(&out.rejected_rewards),
            policy_logp_sums: Some((sum(&out.seq[..b]), sum(&out.seq[b..]))),
        }
    }
}

/// A data split and what the objective precomputed for it (DPO's reference log-probs).
pub struct Split<'a> {
    pub pairs: &'a [PreferencePair],
    /// Reference sequence log-probs (chosen, rejected) per pair, for losses that use them.
    pub reference: Option<&'a [(f32, f32)]>,
}

pub trait Objective<B: Backend> {
    /// Adds `scale` × the gradient of the mean loss over the pairs `idx` of `split` to `grads`
    /// (the parameter layout), and returns the pairs' loss and metrics, perhaps still pending.
    fn accumulate(
        &self,
        model: &Llama<B>,
        split: &Split,
        idx: &[usize],
        scale: f32,
        grads: &mut B::Acc,
    ) -> Result<PendingStats<B>>;

    /// Loss and metrics of the pairs `idx`, without gradients.
    fn evaluate(&self, model: &Llama<B>, split: &Split, idx: &[usize]) -> Result<PairStats>;
}
