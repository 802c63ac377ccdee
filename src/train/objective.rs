//! What an offline trainer optimises: the reward model's Bradley-Terry loss or a DPO-family loss.
//! The training loop (trainer.rs) is the same for both.

use crate::data::preference::PreferencePair;
use crate::model::{Forward, GradSink, HeadGrads, Llama};
use crate::ops::cpu::dpo_loss::DpoPairs;
use crate::ops::cpu::reward_loss::RewardPairs;
use crate::ops::Backend;
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
    /// Every field as a number, for a sum over ranks ([`PairStats::SUMS`] of them).
    pub fn to_sums(&self) -> [f64; PairStats::SUMS] {
        let (c, r, has) = match self.policy_logp_sums {
            Some((c, r)) => (c, r, 1.0),
            None => (0.0, 0.0, 0.0),
        };
        [
            self.pairs as f64,
            self.tokens as f64,
            self.loss_sum,
            self.correct as f64,
            self.ties as f64,
            self.margin_sum,
            self.chosen_reward_sum,
            self.rejected_reward_sum,
            c,
            r,
            has,
        ]
    }

    /// The stats [`PairStats::to_sums`] wrote (or their sum over ranks).
    pub fn from_sums(v: &[f64]) -> PairStats {
        PairStats {
            pairs: v[0] as usize,
            tokens: v[1] as usize,
            loss_sum: v[2],
            correct: v[3] as usize,
            ties: v[4] as usize,
            margin_sum: v[5],
            chosen_reward_sum: v[6],
            rejected_reward_sum: v[7],
            policy_logp_sums: (v[10] > 0.0).then_some((v[8], v[9])),
        }
    }

    pub const SUMS: usize = 11;

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

/// What a pending micro-batch's rows hold.
#[derive(Clone, Copy, Debug)]
pub enum PairRows {
    /// [pairs, 5] of `DpoPairs::from_rows`.
    Dpo,
    /// [pairs, 3] of `RewardPairs::from_rows`.
    Reward,
}

/// A micro-batch's loss and metrics where they were computed, one row per pair (on the device
/// for a GPU), read back only when the training loop logs, so the steps in between never wait
/// for the device.
pub struct PendingStats<B: Backend> {
    pub rows: B::Acc,
    pub layout: PairRows,
    pub pairs: usize,
    pub tokens: usize,
}

impl<B: Backend> PendingStats<B> {
    /// The stats on the host (a device-to-host copy of the rows).
    pub fn resolve(self, o: &B) -> Result<PairStats> {
        let host = o.to_host(&self.rows)?;
        o.recycle_acc(self.rows);
        Ok(match self.layout {
            PairRows::Dpo => {
                PairStats::of_dpo(&DpoPairs::from_rows(&host, self.pairs), self.tokens)
            }
            PairRows::Reward => {
                PairStats::of_reward(&RewardPairs::from_rows(&host, self.pairs), self.tokens)
            }
        })
    }
}

impl PairStats {
    /// A reward-model micro-batch's sums.
    pub fn of_reward(out: &RewardPairs, tokens: usize) -> PairStats {
        let loss_sum = out.loss as f64 * out.chosen.len() as f64;
        PairStats::of_pairs(loss_sum, &out.chosen, &out.rejected, tokens, None)
    }

    /// A DPO micro-batch's sums, with the policy's sequence log-probs.
    pub fn of_dpo(out: &DpoPairs, tokens: usize) -> PairStats {
        let b = out.losses.len();
        let sum = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>();
        let logps = Some((sum(&out.seq[..b]), sum(&out.seq[b..])));
        let (chosen, rejected) = (&out.chosen_rewards, &out.rejected_rewards);
        PairStats::of_pairs(sum(&out.losses), chosen, rejected, tokens, logps)
    }

    /// Sums over pairs with these rewards: a pair counts as correct when its chosen reward is
    /// higher, a tie when they are equal.
    fn of_pairs(
        loss_sum: f64,
        chosen: &[f32],
        rejected: &[f32],
        tokens: usize,
        policy_logp_sums: Option<(f64, f64)>,
    ) -> PairStats {
        let margins: Vec<f32> = chosen.iter().zip(rejected).map(|(c, r)| c - r).collect();
        let sum = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>();
        PairStats {
            pairs: chosen.len(),
            tokens,
            loss_sum,
            correct: margins.iter().filter(|&&m| m > 0.0).count(),
            ties: margins.iter().filter(|&&m| m == 0.0).count(),
            margin_sum: sum(&margins),
            chosen_reward_sum: sum(chosen),
            rejected_reward_sum: sum(rejected),
            policy_logp_sums,
        }
    }
}

/// A data split and what the objective precomputed for it (DPO's reference log-probs).
pub struct Split<'a> {
    pub pairs: &'a [PreferencePair],
    /// Reference sequence log-probs (chosen, rejected) per pair, for losses that use them.
    pub reference: Option<&'a [(f32, f32)]>,
}

/// The end of a pass: when training (`grad` is `Some`), the backward from the loss's gradient
/// at the heads `heads` into the gradient buffer; then the forward's buffers go back to the pool.
pub fn backward_and_recycle<B: Backend>(
    model: &Llama<B>,
    fwd: Forward<B>,
    heads: HeadGrads<B>,
    grad: Option<(f32, GradSink<B>)>,
) -> Result<()> {
    if let Some((_, sink)) = grad {
        model.backward_into(&fwd, &heads, sink)?;
    }
    fwd.recycle(&model.backend);
    Ok(())
}

pub trait Objective<B: Backend> {
    /// One pass over the pairs `idx` of `split`: their loss and metrics (perhaps still pending
    /// on the device), and with `grad = Some((scale, grads))` also `scale` × the gradient of
    /// their mean loss added to `grads` (the parameter layout).
    fn pass(
        &self,
        model: &Llama<B>,
        split: &Split,
        idx: &[usize],
        grad: Option<(f32, GradSink<B>)>,
    ) -> Result<PendingStats<B>>;

    /// Adds `scale` × the gradient of the mean loss over the pairs `idx` to `grads`, and returns
    /// the pairs' loss and metrics, perhaps still pending.
    fn accumulate(
        &self,
        model: &Llama<B>,
        split: &Split,
        idx: &[usize],
        scale: f32,
        grads: GradSink<B>,
    ) -> Result<PendingStats<B>> {
        self.pass(model, split, idx, Some((scale, grads)))
    }

    /// Loss and metrics of the pairs `idx`, without gradients.
    fn evaluate(&self, model: &Llama<B>, split: &Split, idx: &[usize]) -> Result<PairStats> {
        self.pass(model, split, idx, None)?.resolve(&model.backend)
    }
}
