//! Preference-learning math in fp32 on the CPU: the reference the CUDA kernels are tested against.
//!
//! Every function is model-independent and works on plain slices:
//! - token tensors are row-major `[batch, time]` slices with explicit `batch` and `time`;
//!   `mask[i] == true` marks a valid (response) token, and masked values are never read;
//! - per-sequence / per-pair tensors are `[batch]` / `[N]` slices;
//! - differentiable functions return a struct with the value, `grad_*` w.r.t. each
//!   differentiable input (already including the 1/N of mean reductions) and metrics;
//! - means divide by the number of valid items; with none they return 0, never NaN;
//! - reductions accumulate in f64 and round once, so results do not depend on summation order.
//!
//! Offline: [`sequence_logprobs`] → [`dpo_loss`] (or [`reward_model_loss`] for a reward model),
//! then [`sequence_logprobs_backward`] to take the gradient back to tokens.
//!
//! PPO rollout, in order (Ivison et al. 2024 defaults in parentheses):
//! 1. scores from the reward model; [`apply_eos_penalty`] (on, −10);
//! 2. optional [`RunningMoments`] score normalisation (off);
//! 3. [`per_token_kl`] (k1, no clamp) and [`shaped_rewards`] with β from [`KlController`] (fixed 0.05);
//! 4. optional [`whiten()`] of the rewards with `shift_mean = false` (off);
//! 5. [`gae()`] (γ = 1, λ = 0.95), then [`whiten()`] of the advantages with `shift_mean = true` (on);
//! 6. per minibatch: [`clipped_policy_loss`] (ε = 0.2) + 0.1 · [`clipped_value_loss`] (δ = 0.2)
//!    (+ optional [`entropy_bonus`]).
//!
//! GRPO / RLOO replace steps 3-5 by [`grpo_advantages`] or [`rloo_advantages`] broadcast to tokens.
//!
//! See `docs/losses.md` for the table of formulas, defaults and papers.

pub mod critic_free;
pub mod dpo;
pub mod gae;
pub mod kl;
pub mod kl_control;
pub mod numerics;
pub mod ppo;
pub mod reward;
pub mod reward_shaping;
pub mod seq_logprob;
pub mod whiten;

pub use critic_free::{grpo_advantages, rloo_advantages, GRPO_STD_EPS};
pub use dpo::{dpo_loss, DpoConfig, DpoInputs, DpoLoss, DpoOutput};
pub use gae::{gae, Gae, GaeConfig};
pub use kl::{mean_sequence_kl, per_token_kl, KlEstimator, KlPenalty, PerTokenKl};
pub use kl_control::KlController;
pub use numerics::{
    aggregation_weights, log_sigmoid, logsumexp, masked_count, masked_mean, masked_sum,
    masked_variance, mean, sigmoid, LossAggregation,
};
pub use ppo::{
    clipped_policy_loss, clipped_value_loss, entropy_bonus, explained_variance, EntropyBonusOutput,
    PolicyLossConfig, PolicyLossOutput, ValueLossConfig, ValueLossOutput, DEFAULT_VALUE_COEF,
};
pub use reward::{reward_model_loss, RewardModelOutput};
pub use reward_shaping::{apply_eos_penalty, shaped_rewards, EosPenalty};
pub use seq_logprob::{sequence_logprobs, sequence_logprobs_backward, SeqReduction};
pub use whiten::{whiten, RunningMoments, WHITEN_EPS};
