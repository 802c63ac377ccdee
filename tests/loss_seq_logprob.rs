mod loss_support;

use loss_support::{assert_all_close, assert_gradient_matches};
use prefer::loss::{sequence_logprobs, sequence_logprobs_backward, SeqReduction};

// [batch = 3, time = 3]; padding holds NaN to show it is never read.
// Row 0: two response tokens; row 1: left-padded, two tokens; row 2: empty.
const NAN: f32 = f32::NAN;
const TOKENS: [f32; 9] = [
    -1.0, -2.0, NAN, //
    NAN, -0.5, -1.5, //
    NAN, NAN, NAN,
];
const MASK: [bool; 9] = [
    true, true, false, //
    false, true, true, //
    false, false, false,
];

#[test]
fn sum_and_mean_reductions() {
    let sum = sequence_logprobs(&TOKENS, &MASK, 3, 3, SeqReduction::Sum);
    // row 0: −1 − 2 = −3; row 1: −0.5 − 1.5 = −2; row 2: empty sum = 0
    assert_all_close(&sum, &[-3.0, -2.0, 0.0], 1e-7, "sum");
    let mean = sequence_logprobs(&TOKENS, &MASK, 3, 3, SeqReduction::Mean);
    // row 0: −3/2 = −1.5; row 1: −2/2 = −1; row 2: defined as 0 (not 0/0)
    assert_all_close(&mean, &[-1.5, -1.0, 0.0], 1e-7, "mean");
}

#[test]
fn backward_spreads_gradient_over_valid_tokens() {
    let grad_seq = [2.0, 3.0, 5.0];
    let sum = sequence_logprobs_backward(&grad_seq, &MASK, 3, 3, SeqReduction::Sum);
    // Sum: each valid token gets ∂L/∂s_b; masked tokens and the empty row get 0.
    let expected = [2.0, 2.0, 0.0, 0.0, 3.0, 3.0, 0.0, 0.0, 0.0];
    assert_all_close(&sum, &expected, 0.0, "sum backward");
    let mean = sequence_logprobs_backward(&grad_seq, &MASK, 3, 3, SeqReduction::Mean);
    // Mean: ∂L/∂s_b / n_b = 2/2 = 1 and 3/2 = 1.5.
    let expected = [1.0, 1.0, 0.0, 0.0, 1.5, 1.5, 0.0, 0.0, 0.0];
    assert_all_close(&mean, &expected, 0.0, "mean backward");
}

#[test]
fn backward_matches_finite_differences() {
    // L = Σ_b c_b s_b; the padding is replaced by finite numbers so the probe can move it
    // (its gradient must still come out 0).
    let tokens: Vec<f32> = TOKENS
        .iter()
        .map(|&x| if x.is_nan() { -0.7 } else { x })
        .collect();
    let weights = [0.3f32, -1.2, 0.8];
    for reduction in [SeqReduction::Sum, SeqReduction::Mean] {
        let grad = sequence_logprobs_backward(&weights, &MASK, 3, 3, reduction);
        let loss = |x: &[f32]| {
            let seq = sequence_logprobs(x, &MASK, 3, 3, reduction);
            seq.iter().zip(&weights).map(|(s, w)| s * w).sum::<f32>()
        };
        assert_gradient_matches(&grad, loss, &tokens, &format!("{reduction:?}"));
    }
}
