//! From a scored batch of rollouts to per-token advantages and value targets, with every switch
//! "Unpacking DPO and PPO" compares. Each step is a src/loss function; this file only orders them:
//!
//! PPO: EOS trick → score normalisation → per-token KL (estimator, clamp) → shaped rewards with
//! β → reward whitening → GAE → advantage whitening.
//! RLOO: EOS trick → score normalisation → score − β·(sequence KL) → leave-one-out baseline,
//! broadcast to the completion's tokens (no value model), as TRL's RLOOTrainer.
//! GRPO: EOS trick → score normalisation → group-normalised scores, broadcast; its KL is a loss
//! term (β·k3 per token, Shao et al. 2024) that the trainer adds, not part of the reward: the
//! group's std would otherwise blow the KL's noise up to unit advantages when the scores tie.

use crate::loss::{
    apply_eos_penalty, gae, grpo_advantages, per_token_kl, rloo_advantages, shaped_rewards, whiten,
    EosPenalty, GaeConfig, KlEstimator, RunningMoments,
};

/// Which advantage estimator an iteration uses.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    /// GAE over a learned value model (Schulman et al. 2017).
    Ppo,
    /// Group-normalised scores (Shao et al. 2024).
    Grpo,
    /// Leave-one-out baselines (Ahmadian et al. 2024).
    Rloo,
}

/// The switches of the reward and advantage computation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RewardSwitches {
    pub kl_estimator: KlEstimator,
    pub kl_clamp: Option<f32>,
    /// The EOS trick: None turns it off.
    pub eos_penalty: Option<EosPenalty>,
    /// Normalise scores with running moments over all iterations.
    pub reward_norm: bool,
    /// Whiten the shaped per-token rewards over the batch (no mean shift).
    pub reward_whiten: bool,
    pub advantage_whiten: bool,
    pub gae: GaeConfig,
}

/// One batch of rollouts as the trainer sees it: token tensors [N, T] where position t holds
/// the log-prob (and value) of token t+1, and `mask` marks the completion's tokens.
pub struct ScoredBatch<'a> {
    pub batch: usize,
    pub time: usize,
    pub mask: &'a [bool],
    /// Log-probs of the policy that sampled the batch (scored by the trainer's kernels).
    pub old_logp: &'a [f32],
    pub ref_logp: &'a [f32],
    /// The value model's estimates; empty for GRPO and RLOO.
    pub values: &'a [f32],
    /// Sequence scores [N] (reward model and/or verifiable reward), before the EOS trick.
    pub scores: &'a [f32],
    pub ends_with_eos: &'a [bool],
}

/// What an iteration trains on, and what it reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Advantages {
    pub advantages: Vec<f32>, // [N, T]
    /// Value targets [N, T]; empty without a value model.
    pub returns: Vec<f32>,
    /// Per-token KL of the policy from the reference [N, T].
    pub kl: Vec<f32>,
    /// Scores after the EOS trick and normalisation [N].
    pub scores: Vec<f32>,
    /// Per sequence: score − β·Σ KL (TRL's `objective/rlhf_reward`) [N].
    pub rlhf_reward: Vec<f32>,
}

/// Scores after the EOS trick and (optional) running normalisation, which `moments` carries
/// across iterations.
fn final_scores(s: &ScoredBatch, sw: &RewardSwitches, moments: &mut RunningMoments) -> Vec<f32> {
    let scores = match &sw.eos_penalty {
        Some(p) => apply_eos_penalty(s.scores, s.ends_with_eos, p),
        None => s.scores.to_vec(),
    };
    if sw.reward_norm {
        moments.update(&scores);
        moments.normalise(&scores)
    } else {
        scores
    }
}

fn sequence_sums(x: &[f32], mask: &[bool], batch: usize, time: usize) -> Vec<f32> {
    (0..batch)
        .map(|b| {
            let r = b * time..(b + 1) * time;
            x[r.clone()]
                .iter()
                .zip(&mask[r])
                .filter(|(_, &m)| m)
                .map(|(&v, _)| v as f64)
                .sum::<f64>() as f32
        })
        .collect()
}

/// The advantages of one batch. `group` is the number of rollouts per prompt (consecutive rows).
pub fn advantages(
    algo: Algo,
    s: &ScoredBatch,
    sw: &RewardSwitches,
    kl_coef: f32,
    group: usize,
    moments: &mut RunningMoments,
) -> Advantages {
    let (b, t) = (s.batch, s.time);
    let scores = final_scores(s, sw, moments);
    let kl = per_token_kl(s.old_logp, s.ref_logp, s.mask, sw.kl_estimator, sw.kl_clamp).kl;
    let seq_kl = sequence_sums(&kl, s.mask, b, t);
    let rlhf_reward: Vec<f32> = scores
        .iter()
        .zip(&seq_kl)
        .map(|(&r, &k)| r - kl_coef * k)
        .collect();
    match algo {
        Algo::Ppo => {
            let mut rewards = shaped_rewards(&kl, &scores, s.mask, b, t, kl_coef);
            if sw.reward_whiten {
                rewards = whiten(&rewards, s.mask, false);
            }
            let g = gae(&rewards, s.values, s.mask, b, t, &sw.gae);
            let advantages = if sw.advantage_whiten {
                whiten(&g.advantages, s.mask, true)
            } else {
                g.advantages
            };
            Advantages {
                advantages,
                returns: g.returns,
                kl,
                scores,
                rlhf_reward,
            }
        }
        Algo::Grpo | Algo::Rloo => {
            let per_seq = if algo == Algo::Grpo {
                grpo_advantages(&scores, group, true)
            } else {
                rloo_advantages(&rlhf_reward, group)
            };
            let advantages = (0..b * t)
                .map(|i| if s.mask[i] { per_seq[i / t] } else { 0.0 })
                .collect();
            Advantages {
                advantages,
                returns: Vec::new(),
                kl,
                scores,
                rlhf_reward,
            }
        }
    }
}
