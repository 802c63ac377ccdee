//! The DPO family on a micro-batch of pairs, as the trainer applies it: the oracle of
//! kernels/dpo_loss.cu, made of the src/loss functions (sequence_logprobs, dpo_loss,
//! sequence_logprobs_backward).

use crate::loss::{
    dpo_loss as dpo_pair_loss, sequence_logprobs, sequence_logprobs_backward, DpoConfig, DpoInputs,
};

/// Per-pair results, each `[pairs]`, and the sequence log-probs `[2·pairs]` (chosen, then
/// rejected).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DpoPairs {
    pub losses: Vec<f32>,
    pub chosen_rewards: Vec<f32>,
    pub rejected_rewards: Vec<f32>,
    /// Sequence log-probs: the chosen responses', then the rejected.
    pub seq: Vec<f32>,
}

impl DpoPairs {
    /// From the device layout, [pairs, 5]: loss, chosen reward, rejected reward, chosen and
    /// rejected sequence log-probs (kernels/dpo_loss.cu writes it).
    pub fn from_rows(rows: &[f32], pairs: usize) -> DpoPairs {
        let col = |k: usize| (0..pairs).map(|i| rows[i * 5 + k]).collect::<Vec<f32>>();
        let mut seq = col(3);
        seq.extend(col(4));
        DpoPairs {
            losses: col(0),
            chosen_rewards: col(1),
            rejected_rewards: col(2),
            seq,
        }
    }

    /// Into the device layout (`from_rows`).
    pub fn write_rows(&self, rows: &mut [f32]) {
        let p = self.losses.len();
        for i in 0..p {
            rows[i * 5..i * 5 + 5].copy_from_slice(&[
                self.losses[i],
                self.chosen_rewards[i],
                self.rejected_rewards[i],
                self.seq[i],
                self.seq[p + i],
            ]);
        }
    }
}

/// dlogp[2P·T] (written) = grad_scale · ∂(mean pair loss)/∂logp, from token log-probs
/// logp[2P·T] (rows: the chosen responses, then the rejected), the response mask (each row's
/// log-probs reduced by `cfg.reduction()`), and the reference's sequence log-probs [2P]
/// (ignored by the reference-free losses).
#[allow(clippy::too_many_arguments)]
pub fn dpo_loss(
    dlogp: &mut [f32],
    logp: &[f32],
    mask: &[bool],
    reference: Option<&[f32]>,
    pairs: usize,
    t: usize,
    cfg: &DpoConfig,
    grad_scale: f32,
) -> DpoPairs {
    let (rows, reduction) = (2 * pairs, cfg.reduction());
    let seq = sequence_logprobs(logp, mask, rows, t, reduction);
    let (ref_c, ref_r) = match reference {
        Some(r) => (&r[..pairs], &r[pairs..]),
        None => (&[][..], &[][..]),
    };
    let out = dpo_pair_loss(
        &DpoInputs {
            policy_chosen: &seq[..pairs],
            policy_rejected: &seq[pairs..],
            reference_chosen: ref_c,
            reference_rejected: ref_r,
        },
        cfg,
    );
    let dseq: Vec<f32> = out
        .grad_policy_chosen
        .iter()
        .chain(&out.grad_policy_rejected)
        .map(|g| g * grad_scale)
        .collect();
    dlogp.copy_from_slice(&sequence_logprobs_backward(&dseq, mask, rows, t, reduction));
    DpoPairs {
        losses: out.losses,
        chosen_rewards: out.chosen_rewards,
        rejected_rewards: out.rejected_rewards,
        seq,
    }
}
