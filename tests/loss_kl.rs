mod loss_support;

use loss_support::{assert_all_close, assert_close, assert_gradient_matches};
use prefer::loss::{mean_sequence_kl, per_token_kl, KlEstimator};

// Token 0: log r = ref − logp = −1.5 − −1 = −0.5;  token 1: log r = −1 − −2 = 1;
// token 2 is masked (NaN never read).
const LOGP: [f32; 3] = [-1.0, -2.0, f32::NAN];
const REF_LOGP: [f32; 3] = [-1.5, -1.0, f32::NAN];
const MASK: [bool; 3] = [true, true, false];

#[test]
fn estimators_match_hand_values() {
    // k1 = −log r = [0.5, −1]; ∂/∂logp = 1
    let k1 = per_token_kl(&LOGP, &REF_LOGP, &MASK, KlEstimator::K1, None);
    assert_all_close(&k1.kl, &[0.5, -1.0, 0.0], 1e-7, "k1");
    assert_all_close(&k1.grad_logp, &[1.0, 1.0, 0.0], 0.0, "k1 grad");
    // k2 = ½ (log r)² = [0.125, 0.5]; ∂/∂logp = −log r = [0.5, −1]
    let k2 = per_token_kl(&LOGP, &REF_LOGP, &MASK, KlEstimator::K2, None);
    assert_all_close(&k2.kl, &[0.125, 0.5, 0.0], 1e-7, "k2");
    assert_all_close(&k2.grad_logp, &[0.5, -1.0, 0.0], 1e-7, "k2 grad");
    // k3 = (r − 1) − log r = [e^−0.5 − 0.5, e − 2] = [0.106531, 0.718282];
    // ∂/∂logp = 1 − r = [1 − 0.606531, 1 − e] = [0.393469, −1.718282]
    let k3 = per_token_kl(&LOGP, &REF_LOGP, &MASK, KlEstimator::K3, None);
    assert_all_close(&k3.kl, &[0.106_531, 0.718_282, 0.0], 1e-6, "k3");
    assert_all_close(
        &k3.grad_logp,
        &[0.393_469, -1.718_282, 0.0],
        1e-6,
        "k3 grad",
    );
}

#[test]
fn clamp_limits_log_ratio_and_zeroes_its_gradient() {
    // c = 0.5: token 0 sits exactly on the bound (|−0.5| = c, not clamped, gradient passes);
    // token 1 has log r = 1 → clamped to 0.5, gradient 0.
    let c = Some(0.5);
    let k1 = per_token_kl(&LOGP, &REF_LOGP, &MASK, KlEstimator::K1, c);
    // k1 = −log r = [0.5, −0.5]
    assert_all_close(&k1.kl, &[0.5, -0.5, 0.0], 1e-7, "k1 clamped");
    assert_all_close(&k1.grad_logp, &[1.0, 0.0, 0.0], 0.0, "k1 clamped grad");
    let k2 = per_token_kl(&LOGP, &REF_LOGP, &MASK, KlEstimator::K2, c);
    // k2 = ½ 0.25 = 0.125 for both
    assert_all_close(&k2.kl, &[0.125, 0.125, 0.0], 1e-7, "k2 clamped");
    assert_all_close(&k2.grad_logp, &[0.5, 0.0, 0.0], 1e-7, "k2 clamped grad");
    let k3 = per_token_kl(&LOGP, &REF_LOGP, &MASK, KlEstimator::K3, c);
    // token 1: k3 = e^0.5 − 1 − 0.5 = 0.148721
    assert_all_close(&k3.kl, &[0.106_531, 0.148_721, 0.0], 1e-6, "k3 clamped");
    assert_all_close(
        &k3.grad_logp,
        &[0.393_469, 0.0, 0.0],
        1e-6,
        "k3 clamped grad",
    );
}

#[test]
fn gradients_match_finite_differences() {
    // Σ_t kl_t has gradient grad_logp (diagonal Jacobian). Log-ratios −0.7 … 0.9 stay ≥ 0.1 from
    // the clamp bound ±0.8 used below; the token with |log r| = 0.9 is clamped (gradient 0).
    let logp = [-1.0, -0.3, -2.2, -0.9];
    let ref_logp = [-1.7, -0.1, -1.3, -0.9];
    let mask = [true; 4];
    for estimator in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
        for clamp in [None, Some(0.8)] {
            let out = per_token_kl(&logp, &ref_logp, &mask, estimator, clamp);
            let total = |x: &[f32]| {
                per_token_kl(x, &ref_logp, &mask, estimator, clamp)
                    .kl
                    .iter()
                    .sum()
            };
            assert_gradient_matches(
                &out.grad_logp,
                total,
                &logp,
                &format!("{estimator:?} {clamp:?}"),
            );
        }
    }
}

#[test]
fn k3_is_non_negative_and_accurate_near_zero() {
    // log r = 1e−4: k3 = e^{1e−4} − 1 − 1e−4 ≈ (1e−4)²/2 = 5e−9. Computing r − 1 from r in f32
    // would be off by up to ulp(1)/2 = 6e−8 (garbage or a wrong sign); exp_m1 keeps the error
    // near ulp(1e−4) = 7e−12.
    let out = per_token_kl(&[0.0], &[1e-4], &[true], KlEstimator::K3, None);
    assert_close(out.kl[0], 5e-9, 2e-11, "k3 near zero");
    let logp = [-3.0, -0.1, -1.0, -5.0];
    let ref_logp = [-0.2, -4.0, -1.0, -5.5];
    let out = per_token_kl(&logp, &ref_logp, &[true; 4], KlEstimator::K3, None);
    assert!(
        out.kl.iter().all(|&k| k >= 0.0),
        "k3 must be ≥ 0: {:?}",
        out.kl
    );
}

#[test]
fn mean_sequence_kl_sums_tokens_then_averages_rows() {
    // [batch 3, time 2]: row sums 0.5 + 0.25 = 0.75, 1.0, and an empty row 0 → mean 1.75 / 3
    let kl = [0.5, 0.25, 1.0, 9.0, 9.0, 9.0];
    let mask = [true, true, true, false, false, false];
    assert_close(
        mean_sequence_kl(&kl, &mask, 3, 2),
        1.75 / 3.0,
        1e-7,
        "mean KL",
    );
    assert_eq!(mean_sequence_kl(&[], &[], 0, 2), 0.0);
}
