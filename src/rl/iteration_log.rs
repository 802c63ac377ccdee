//! What a PPO iteration logs: its metrics.jsonl row (TRL's names: objective/*, policy/*, loss/*,
//! val/*), its rollouts.jsonl rows (every completion with its score), and its progress line.

use super::advantages::Advantages;
use super::options::RewardSource;
use super::ppo_epochs::EpochStats;
use super::rollout_batch::RolloutBatch;
use super::scoring::Scored;
use super::setup::Setup;
use crate::generate::Rollout;
use crate::loss::{mean_sequence_kl, per_token_kl, KlEstimator};
use serde_json::{json, Value};

/// Seconds spent in each stage of an iteration.
pub struct Timings {
    pub generate: f64,
    pub score: f64,
    pub train: f64,
    pub total: f64,
}

/// One finished iteration, as the logs see it.
pub struct Iteration<'a> {
    /// 0-based.
    pub it: usize,
    pub rollouts: &'a [Rollout],
    /// The prompts' indices in the prompt file, by the rollouts' prompt_index.
    pub picked: &'a [usize],
    pub rb: &'a RolloutBatch,
    pub scored: &'a Scored,
    pub adv: &'a Advantages,
    pub epochs: &'a EpochStats,
    pub policy_norms: &'a [f32],
    pub value_norms: &'a [f32],
    /// β this iteration trained with (before the controller's update).
    pub kl_coef: f32,
    pub lr: f32,
    /// Whether a reference model was scored (not when β is fixed at 0).
    pub has_reference: bool,
    pub times: Timings,
}

pub fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

fn mean_f32(v: &[f32]) -> f64 {
    mean(v.iter().map(|&x| x as f64))
}

impl Iteration<'_> {
    /// The sequence KL (k1: the sum of log π − log π_ref over a completion), averaged over the
    /// batch: what the adaptive KL controller follows.
    pub fn sequence_kl_k1(&self) -> f32 {
        self.sequence_kl(KlEstimator::K1)
    }

    fn sequence_kl(&self, estimator: KlEstimator) -> f32 {
        let (n, t) = (self.rb.batch.batch, self.rb.batch.seq);
        let s = self.scored;
        let kl = per_token_kl(&s.old_logp, &s.ref_logp, &self.rb.mask, estimator, None).kl;
        mean_sequence_kl(&kl, &self.rb.mask, n, t)
    }

    /// Mean raw score of the rollouts (the reward model's, or the math-answer accuracy).
    pub fn raw_score(&self) -> f64 {
        mean_f32(&self.scored.scores)
    }

    pub fn max_logprob_gap(&self) -> f64 {
        self.scored.gaps.iter().copied().fold(0.0, f64::max)
    }

    /// Every completion with its score, a rollouts.jsonl row each (TRL logs a table of them).
    pub fn rollout_rows(&self, s: &Setup) -> Vec<Value> {
        self.rollouts
            .iter()
            .zip(&self.scored.scores)
            .map(|(r, score)| {
                json!({
                    "step": self.it + 1, "prompt_index": self.picked[r.prompt_index],
                    "rollout_index": r.rollout_index,
                    "text": s.tokenizer.decode_generated(&r.completion_ids).unwrap_or_default(),
                    "completion_ids": r.completion_ids, "logprobs": r.logprobs,
                    "finish_reason": r.finish_reason, "score": score,
                })
            })
            .collect()
    }

    /// The metrics.jsonl row.
    pub fn metrics_row(&self, s: &Setup) -> Value {
        let (n, t) = (self.rb.batch.batch, self.rb.batch.seq);
        let (rb, sc, adv, e) = (self.rb, self.scored, self.adv, self.epochs);
        let seq_kl = mean_sequence_kl(&adv.kl, &rb.mask, n, t);
        let seq_entropy = mean((0..n).map(|b| {
            (0..t)
                .filter(|&j| rb.mask[b * t + j])
                .map(|j| sc.entropy[b * t + j] as f64)
                .sum::<f64>()
        }));
        let lengths = self.rollouts.iter().map(|r| r.completion_ids.len() as f64);
        let eos_count = rb.ends_with_eos.iter().filter(|&&e| e).count();
        let final_mean = mean_f32(&adv.scores);
        let final_std = mean(adv.scores.iter().map(|&x| (x as f64 - final_mean).powi(2))).sqrt();
        let tokens: usize = self.rollouts.iter().map(|r| r.completion_ids.len()).sum();
        let mean_of = |v: &[f64]| mean(v.iter().copied());
        let tm = &self.times;
        let mut row = json!({
            "step": self.it + 1, "episode": (self.it + 1) * n,
            "objective/scores": if s.opts.reward == RewardSource::MathAnswer { mean_f32(&sc.math) } else { self.raw_score() },
            "objective/kl": seq_kl,
            "objective/entropy": seq_entropy,
            "objective/rlhf_reward": mean_f32(&adv.rlhf_reward),
            "policy/clipfrac_avg": mean_of(&e.clipfrac),
            "policy/approxkl_avg": mean_of(&e.approxkl),
            "loss/policy_avg": mean_of(&e.policy_loss),
            "loss/value_avg": mean_of(&e.value_loss),
            "policy/grad_norm": mean_f32(self.policy_norms), "value/grad_norm": mean_f32(self.value_norms),
            "val/num_eos_tokens": eos_count,
            "lr": self.lr,
            "reward/mean": final_mean, "reward/std": final_std,
            "reward/rm_score": mean_f32(&sc.rm_scores),
            "reward/math_accuracy": mean_f32(&sc.math),
            "kl/k1": self.sequence_kl(KlEstimator::K1), "kl/k3": self.sequence_kl(KlEstimator::K3),
            "kl/coef": self.kl_coef,
            "value/explained_variance": mean_of(&e.explained_variance),
            "value/clipfrac": mean_of(&e.value_clipfrac),
            "response/length": mean(lengths), "response/eos_rate": eos_count as f64 / n as f64,
            "logprob_gap/max": self.max_logprob_gap(), "logprob_gap/mean": mean_of(&sc.gaps),
            "tokens_per_s": tokens as f64 / tm.total,
            "time/generate": tm.generate, "time/score": tm.score, "time/train": tm.train,
        });
        if !self.has_reference {
            // No reference pass (β fixed at 0), so no KL was measured; TRL's GRPO logs none either.
            if let Some(fields) = row.as_object_mut() {
                for key in ["objective/kl", "kl/k1", "kl/k3"] {
                    fields.remove(key);
                }
            }
        }
        row
    }

    /// The progress line.
    pub fn status(&self) -> String {
        let (n, t) = (self.rb.batch.batch, self.rb.batch.seq);
        let kl = match self.has_reference {
            true => format!(
                ", kl {:.4}",
                mean_sequence_kl(&self.adv.kl, &self.rb.mask, n, t)
            ),
            false => String::new(),
        };
        let tm = &self.times;
        format!(
            "score {:.4}{kl}, policy loss {:.4}, {:.1} s (generate {:.1}, score {:.1}, train {:.1})",
            self.raw_score(),
            mean(self.epochs.policy_loss.iter().copied()),
            tm.total,
            tm.generate,
            tm.score,
            tm.train
        )
    }
}
