//! The DPO family of offline preference losses over (chosen, rejected) pairs.
//!
//! Every loss depends on the policy only through the chosen-minus-rejected sequence log-prob
//! difference, so ∂ℓ/∂π_r = −∂ℓ/∂π_c for every pair. To reach per-token gradients, feed
//! `grad_policy_chosen` / `grad_policy_rejected` to [`super::sequence_logprobs_backward`].

use super::numerics::{log_sigmoid, sigmoid};
use super::seq_logprob::SeqReduction;

/// Which DPO-family loss to use. With h = (π_c − π_r) − (ref_c − ref_r) (sequence log-probs):
///
/// The discriminants are the codes kernels/dpo_loss.cu reads ([`DpoLoss::kernel_code`]); its
/// `DPO_*` defines are checked against them (src/ops/cuda/dpo_loss.rs).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DpoLoss {
    /// DPO (Rafailov et al. 2023), with cDPO label smoothing ε (Mitchell 2023):
    /// ℓ = −(1 − ε) log σ(βh) − ε log σ(−βh).
    #[default]
    Sigmoid = 0,
    /// IPO (Azar et al. 2023): ℓ = (h − 1/(2β))². TRL feeds it length-normalised log-probs:
    /// `average_logps` gives TRL's IPO.
    Ipo = 1,
    /// SLiC-HF hinge (Zhao et al. 2023): ℓ = max(0, 1 − βh).
    Hinge = 2,
    /// SimPO (Meng et al. 2024), reference-free, on length-normalised log-probs (the inputs must
    /// already be per-token means):
    /// z = β(π̄_c − π̄_r) − γ, ℓ = −(1 − ε) log σ(z) − ε log σ(−z).
    Simpo = 3,
    /// Reference-free DPO: z = β(π_c − π_r), ℓ = −(1 − ε) log σ(z) − ε log σ(−z).
    RefFreeSigmoid = 4,
}

impl DpoLoss {
    /// The `kind` argument of kernels/dpo_loss.cu (its `DPO_*` defines).
    pub fn kernel_code(self) -> i32 {
        self as i32
    }

    /// Whether the loss reads the reference log-probs.
    pub fn uses_reference(self) -> bool {
        matches!(self, DpoLoss::Sigmoid | DpoLoss::Ipo | DpoLoss::Hinge)
    }
}

/// Options of [`dpo_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpoConfig {
    pub loss: DpoLoss,
    /// β > 0: inverse temperature / KL strength. Default 0.1 (Ivison et al. 2024).
    pub beta: f32,
    /// Label smoothing ε ∈ [0, 0.5) (cDPO: the probability that a label is flipped). Used by the
    /// logistic losses (Sigmoid, Simpo, RefFreeSigmoid); ignored by Ipo and Hinge. Default 0.
    pub label_smoothing: f32,
    /// SimPO target reward margin γ (on the β-scaled logit, as in the paper; TRL's
    /// `simpo_gamma` is γ/β). Used by Simpo only. Default 0.5.
    pub simpo_gamma: f32,
    /// Compare per-token means of the response log-probs (policy's and reference's) instead of
    /// sums, for every loss: with Ipo it is TRL's IPO, with Sigmoid open-instruct's `dpo_norm`.
    /// SimPO always averages. Default false (the papers' sums).
    pub average_logps: bool,
}

impl DpoConfig {
    /// How each sequence's token log-probs are reduced before the loss: a mean for SimPO and
    /// under `average_logps`, else a sum.
    pub fn reduction(&self) -> SeqReduction {
        if self.average_logps || self.loss == DpoLoss::Simpo {
            SeqReduction::Mean
        } else {
            SeqReduction::Sum
        }
    }
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            loss: DpoLoss::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            average_logps: false,
        }
    }
}

/// Per-pair sequence log-probs, each `[N]` for N pairs.
///
/// For the reference-free losses (Simpo, RefFreeSigmoid) the reference slices are not read
/// and may be empty; the reference is then taken as 0 in the implicit rewards.
#[derive(Clone, Copy, Debug)]
pub struct DpoInputs<'a> {
    pub policy_chosen: &'a [f32],
    pub policy_rejected: &'a [f32],
    pub reference_chosen: &'a [f32],
    pub reference_rejected: &'a [f32],
}

/// Result of [`dpo_loss`]; every vector is `[N]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DpoOutput {
    /// Mean over pairs of `losses` (0 for N = 0).
    pub loss: f32,
    /// ∂loss/∂π_c and ∂loss/∂π_r (already including the 1/N of the mean).
    pub grad_policy_chosen: Vec<f32>,
    pub grad_policy_rejected: Vec<f32>,
    /// Per-pair loss ℓ_i.
    pub losses: Vec<f32>,
    /// Implicit rewards β(π_c − ref_c) and β(π_r − ref_r) (ref = 0 for reference-free losses).
    pub chosen_rewards: Vec<f32>,
    pub rejected_rewards: Vec<f32>,
    /// chosen_reward − rejected_reward.
    pub reward_margins: Vec<f32>,
    /// chosen_reward > rejected_reward (strict, as TRL; a tie counts as wrong).
    pub reward_correct: Vec<bool>,
    /// Fraction of `reward_correct` (0 for N = 0).
    pub reward_accuracy: f32,
}

/// DPO-family loss, mean over N pairs, with gradients w.r.t. the policy sequence log-probs.
pub fn dpo_loss(inputs: &DpoInputs<'_>, config: &DpoConfig) -> DpoOutput {
    let n = inputs.policy_chosen.len();
    assert_eq!(
        inputs.policy_rejected.len(),
        n,
        "policy_rejected must be [N]"
    );
    let uses_reference = config.loss.uses_reference();
    if uses_reference {
        assert_eq!(
            inputs.reference_chosen.len(),
            n,
            "reference_chosen must be [N]"
        );
        assert_eq!(
            inputs.reference_rejected.len(),
            n,
            "reference_rejected must be [N]"
        );
    }
    let beta = config.beta;
    assert!(beta > 0.0, "beta must be positive");
    let eps = config.label_smoothing;
    // The gradient of a mean carries the 1/N factor; N = 0 leaves every vector empty.
    let inv_n = if n > 0 { 1.0 / n as f32 } else { 0.0 };

    let mut out = DpoOutput {
        loss: 0.0,
        grad_policy_chosen: Vec::with_capacity(n),
        grad_policy_rejected: Vec::with_capacity(n),
        losses: Vec::with_capacity(n),
        chosen_rewards: Vec::with_capacity(n),
        rejected_rewards: Vec::with_capacity(n),
        reward_margins: Vec::with_capacity(n),
        reward_correct: Vec::with_capacity(n),
        reward_accuracy: 0.0,
    };
    let mut loss_sum = 0.0f64;
    let mut correct_count = 0usize;
    for i in 0..n {
        let (policy_c, policy_r) = (inputs.policy_chosen[i], inputs.policy_rejected[i]);
        let (reference_c, reference_r) = if uses_reference {
            (inputs.reference_chosen[i], inputs.reference_rejected[i])
        } else {
            (0.0, 0.0)
        };
        // h: how much more the policy prefers chosen over rejected than the reference does.
        let h = (policy_c - policy_r) - (reference_c - reference_r);
        // (ℓ, ∂ℓ/∂π_c); ∂ℓ/∂π_r is its negative.
        let (loss, dloss_dpolicy_c) = match config.loss {
            DpoLoss::Sigmoid | DpoLoss::RefFreeSigmoid => {
                // For RefFreeSigmoid the reference is 0, so h = π_c − π_r.
                let (loss, dloss_dz) = smoothed_logistic_loss(beta * h, eps);
                (loss, dloss_dz * beta)
            }
            DpoLoss::Simpo => {
                let (loss, dloss_dz) = smoothed_logistic_loss(beta * h - config.simpo_gamma, eps);
                (loss, dloss_dz * beta)
            }
            DpoLoss::Ipo => {
                // IPO regresses h onto the target 1/(2β).
                let residual = h - 1.0 / (2.0 * beta);
                (residual * residual, 2.0 * residual)
            }
            DpoLoss::Hinge => {
                let slack = 1.0 - beta * h;
                // At the kink (slack = 0) use the zero subgradient, as relu' (0) = 0 in PyTorch.
                if slack > 0.0 {
                    (slack, -beta)
                } else {
                    (0.0, 0.0)
                }
            }
        };
        let chosen_reward = beta * (policy_c - reference_c);
        let rejected_reward = beta * (policy_r - reference_r);
        let correct = chosen_reward > rejected_reward;

        loss_sum += f64::from(loss);
        correct_count += usize::from(correct);
        out.losses.push(loss);
        out.grad_policy_chosen.push(dloss_dpolicy_c * inv_n);
        out.grad_policy_rejected.push(-dloss_dpolicy_c * inv_n);
        out.chosen_rewards.push(chosen_reward);
        out.rejected_rewards.push(rejected_reward);
        out.reward_margins.push(chosen_reward - rejected_reward);
        out.reward_correct.push(correct);
    }
    if n > 0 {
        out.loss = (loss_sum / n as f64) as f32;
        out.reward_accuracy = (correct_count as f64 / n as f64) as f32;
    }
    out
}

/// ℓ(z) = −(1 − ε) log σ(z) − ε log σ(−z) and dℓ/dz = −(1 − ε) σ(−z) + ε σ(z).
fn smoothed_logistic_loss(z: f32, eps: f32) -> (f32, f32) {
    let loss = -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
    let dloss_dz = -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z);
    (loss, dloss_dz)
}
