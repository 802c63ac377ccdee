mod loss_support;

use loss_support::{assert_all_close, assert_close, assert_gradient_matches};
use prefer::loss::reward_model_loss;

#[test]
fn bradley_terry_matches_hand_values() {
    // z = r_c − r_r = [2 − 1, 0.5 − 1.5] = [1, −1]
    // ℓ = [−log σ(1), −log σ(−1)] = [0.313262, 1.313262]; mean 0.813262
    let out = reward_model_loss(&[2.0, 0.5], &[1.0, 1.5], None);
    assert_close(out.loss, 0.813_262, 1e-6, "loss");
    // ∂ℓ/∂r_c = −σ(−z) / N = [−0.268941, −0.731059] / 2
    assert_all_close(
        &out.grad_chosen,
        &[-0.134_471, -0.365_529],
        1e-6,
        "grad chosen",
    );
    assert_all_close(
        &out.grad_rejected,
        &[0.134_471, 0.365_529],
        1e-6,
        "grad rejected",
    );
    assert_all_close(&out.margins, &[1.0, -1.0], 0.0, "margins");
    // one of two pairs ranked right; mean margin (1 − 1)/2 = 0
    assert_eq!(out.accuracy, 0.5);
    assert_eq!(out.mean_margin, 0.0);
}

#[test]
fn target_margin_shifts_the_logit() {
    // z = [1 − 0.5, −1 − 0] = [0.5, −1]; ℓ = [0.474077, 1.313262]; mean 0.893669
    let out = reward_model_loss(&[2.0, 0.5], &[1.0, 1.5], Some(&[0.5, 0.0]));
    assert_close(out.loss, 0.893_669, 1e-6, "loss");
    // the reported margins and accuracy are about r_c − r_r alone
    assert_all_close(&out.margins, &[1.0, -1.0], 0.0, "margins");
    assert_eq!(out.accuracy, 0.5);
}

#[test]
fn gradients_match_finite_differences() {
    let rewards = [0.3, -1.2, 2.0, 0.1, 0.4, -0.5]; // [chosen 3, rejected 3]
    let margin = [0.2, 0.0, 1.0];
    let out = reward_model_loss(&rewards[..3], &rewards[3..], Some(&margin));
    let analytic = [out.grad_chosen, out.grad_rejected].concat();
    let loss = |x: &[f32]| reward_model_loss(&x[..3], &x[3..], Some(&margin)).loss;
    assert_gradient_matches(&analytic, loss, &rewards, "bradley-terry");
}

#[test]
fn empty_and_extreme_inputs_are_finite() {
    let out = reward_model_loss(&[], &[], None);
    assert_eq!((out.loss, out.accuracy, out.mean_margin), (0.0, 0.0, 0.0));
    // z = −200: −log σ(−200) = 200 (a naive log(σ) would be −log 0 = ∞)
    let out = reward_model_loss(&[-100.0], &[100.0], None);
    assert_close(out.loss, 200.0, 1e-4, "large loss");
    assert_close(out.grad_chosen[0], -1.0, 1e-7, "saturated grad");
}
