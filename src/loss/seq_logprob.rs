//! Sequence log-probabilities from per-token log-probabilities, and their backward pass.

use super::numerics::{assert_shape, masked_count, masked_sum_f64};

/// How per-token log-probs of one response are combined into one sequence log-prob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SeqReduction {
    /// log π(y|x) = Σ_{t : m_t} log π(y_t | x, y_<t)  (DPO, IPO, hinge).
    #[default]
    Sum,
    /// Length-normalised (1/n) Σ_{t : m_t} log π(y_t | …), n = #{t : m_t}  (SimPO; TRL's IPO).
    Mean,
}

/// Sequence log-probs s_b from token log-probs `[batch, time]` and a response mask `[batch, time]`.
///
/// Returns `[batch]`. A row without response tokens gives s_b = 0 for both reductions
/// (an empty sum; for `Mean` this is the documented choice instead of 0/0).
pub fn sequence_logprobs(
    token_logprobs: &[f32],
    mask: &[bool],
    batch: usize,
    time: usize,
    reduction: SeqReduction,
) -> Vec<f32> {
    assert_shape("token_logprobs", token_logprobs.len(), batch, time);
    assert_shape("mask", mask.len(), batch, time);
    (0..batch)
        .map(|b| {
            let row = b * time..(b + 1) * time;
            let sum = masked_sum_f64(&token_logprobs[row.clone()], &mask[row.clone()]);
            let value = match reduction {
                SeqReduction::Sum => sum,
                SeqReduction::Mean => {
                    let n = masked_count(&mask[row]);
                    if n == 0 {
                        0.0
                    } else {
                        sum / n as f64
                    }
                }
            };
            value as f32
        })
        .collect()
}

/// Backward of [`sequence_logprobs`]: given ∂L/∂s_b (`[batch]`), returns ∂L/∂(token log-prob) `[batch, time]`.
///
/// Sum: ∂L/∂ℓ_{b,t} = m_{b,t} · ∂L/∂s_b.  Mean: ∂L/∂ℓ_{b,t} = m_{b,t} · ∂L/∂s_b / n_b.
/// Masked tokens, and every token of an empty row, get gradient 0.
pub fn sequence_logprobs_backward(
    grad_sequence: &[f32],
    mask: &[bool],
    batch: usize,
    time: usize,
    reduction: SeqReduction,
) -> Vec<f32> {
    assert_eq!(grad_sequence.len(), batch, "grad_sequence must be [batch]");
    assert_shape("mask", mask.len(), batch, time);
    let mut grad_tokens = vec![0.0f32; batch * time]; // [B, T]
    for (b, &grad_seq) in grad_sequence.iter().enumerate() {
        let row = b * time..(b + 1) * time;
        let per_token = match reduction {
            SeqReduction::Sum => grad_seq,
            SeqReduction::Mean => {
                let n = masked_count(&mask[row.clone()]);
                if n == 0 {
                    0.0
                } else {
                    grad_seq / n as f32
                }
            }
        };
        for (grad, &valid) in grad_tokens[row.clone()].iter_mut().zip(&mask[row]) {
            if valid {
                *grad = per_token;
            }
        }
    }
    grad_tokens
}
