mod loss_support;

use loss_support::{assert_all_close, assert_close, assert_gradient_matches};
use prefer::loss::{
    clipped_policy_loss, clipped_value_loss, entropy_bonus, explained_variance, LossAggregation,
    PolicyLossConfig, ValueLossConfig, DEFAULT_VALUE_COEF,
};

// [batch 2, time 3]: row 0 has 3 valid tokens, row 1 one; padding is NaN (never read).
// log-ratios logp − old_logp = [0.1, 0.5, −0.5, 0.5], ratios ρ = [1.105171, 1.648721, 0.606531,
// 1.648721], advantages A = [1, 2, −1, −1], ε = 0.2 (clip range [0.8, 1.2]):
// t0: max(−1.105171, −1.105171) = −1.105171  inside the range, gradient −Aρ = −1.105171
// t1: max(−3.297443, −2·1.2 = −2.4) = −2.4   clipped (counts in clip fraction), gradient 0
// t2: max(0.606531, 0.8) = 0.8               clipped, gradient 0
// t3: max(1.648721, 1.2) = 1.648721          unclipped (A < 0, ρ > 1+ε), gradient −Aρ = 1.648721
const NAN: f32 = f32::NAN;
const OLD_LOGP: [f32; 6] = [-1.0, -1.0, -1.0, -2.0, NAN, NAN];
const LOGP: [f32; 6] = [-0.9, -0.5, -1.5, -1.5, NAN, NAN];
const ADVANTAGES: [f32; 6] = [1.0, 2.0, -1.0, -1.0, NAN, NAN];
const MASK: [bool; 6] = [true, true, true, true, false, false];

fn policy_config(aggregation: LossAggregation, dual_clip: Option<f32>) -> PolicyLossConfig {
    PolicyLossConfig {
        clip_eps: 0.2,
        dual_clip,
        aggregation,
    }
}

#[test]
fn policy_loss_matches_hand_values() {
    let config = policy_config(LossAggregation::TokenMean, None);
    let out = clipped_policy_loss(&LOGP, &OLD_LOGP, &ADVANTAGES, &MASK, 2, 3, &config);
    // (−1.105171 − 2.4 + 0.8 + 1.648721) / 4 = −0.264112
    assert_close(out.loss, -0.264_112, 1e-6, "loss");
    let expected = [-1.105_171 / 4.0, 0.0, 0.0, 1.648_721 / 4.0, 0.0, 0.0];
    assert_all_close(&out.grad_logp, &expected, 1e-6, "grad");
    // ½ · (0.01 + 0.25 + 0.25 + 0.25) / 4 = 0.095
    assert_close(out.approx_kl, 0.095, 1e-7, "approx kl");
    // t1 and t2 clipped: 2/4
    assert_eq!(out.clip_fraction, 0.5);
    // (1.105171 + 1.648721 + 0.606531 + 1.648721) / 4 = 1.252286
    assert_close(out.mean_ratio, 1.252_286, 1e-6, "mean ratio");
}

#[test]
fn dual_clip_caps_negative_advantage_loss() {
    // c = 1.5: t3 (A = −1) is capped at −c·A = 1.5 < 1.648721, gradient 0; t2 has loss
    // 0.8 < 1.5 and keeps it. (−1.105171 − 2.4 + 0.8 + 1.5) / 4 = −0.301293
    let config = policy_config(LossAggregation::TokenMean, Some(1.5));
    let out = clipped_policy_loss(&LOGP, &OLD_LOGP, &ADVANTAGES, &MASK, 2, 3, &config);
    assert_close(out.loss, -0.301_293, 1e-6, "loss");
    let expected = [-1.105_171 / 4.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    assert_all_close(&out.grad_logp, &expected, 1e-6, "grad");
}

#[test]
fn policy_loss_aggregations() {
    // Sequence mean: row 0 (−1.105171 − 2.4 + 0.8)/3 = −0.901724, row 1 1.648721;
    // (−0.901724 + 1.648721)/2 = 0.373499. Gradients −1.105171/(3·2), 1.648721/(1·2).
    let config = policy_config(LossAggregation::SequenceMean, None);
    let out = clipped_policy_loss(&LOGP, &OLD_LOGP, &ADVANTAGES, &MASK, 2, 3, &config);
    assert_close(out.loss, 0.373_499, 1e-6, "sequence mean loss");
    let expected = [-0.184_195, 0.0, 0.0, 0.824_361, 0.0, 0.0];
    assert_all_close(&out.grad_logp, &expected, 1e-6, "sequence mean grad");
    // Fixed normaliser B·max_len = 2·4: −1.056450 / 8 = −0.132056, t0 gradient −1.105171/8
    let fixed = LossAggregation::FixedNormaliser { max_len: 4 };
    let out = clipped_policy_loss(
        &LOGP,
        &OLD_LOGP,
        &ADVANTAGES,
        &MASK,
        2,
        3,
        &policy_config(fixed, None),
    );
    assert_close(out.loss, -0.132_056, 1e-6, "fixed loss");
    assert_close(out.grad_logp[0], -0.138_146, 1e-6, "fixed grad");
}

#[test]
fn policy_gradient_matches_finite_differences() {
    // Ratios e^{±0.5}, e^{0.1}, e^{−0.05}… stay ≥ 0.03 (≫ the 1e-3 probe) from the clip bounds
    // 0.8 / 1.2 and from the dual-clip switch; each aggregation is checked.
    let logp = [-0.9, -0.5, -1.5, -1.5, -0.45, -2.0];
    let old_logp = [-1.0, -1.0, -1.0, -2.0, -0.4, -2.0];
    let advantages = [1.0, 2.0, -1.0, -1.0, 0.7, -0.3];
    let mask = [true, true, true, true, true, false];
    for aggregation in [
        LossAggregation::TokenMean,
        LossAggregation::SequenceMean,
        LossAggregation::FixedNormaliser { max_len: 3 },
    ] {
        for dual_clip in [None, Some(1.5)] {
            let config = policy_config(aggregation, dual_clip);
            let out = clipped_policy_loss(&logp, &old_logp, &advantages, &mask, 2, 3, &config);
            let loss = |x: &[f32]| {
                clipped_policy_loss(x, &old_logp, &advantages, &mask, 2, 3, &config).loss
            };
            assert_gradient_matches(
                &out.grad_logp,
                loss,
                &logp,
                &format!("{aggregation:?} {dual_clip:?}"),
            );
        }
    }
}

#[test]
fn fully_masked_policy_batch_is_zero() {
    for aggregation in [LossAggregation::TokenMean, LossAggregation::SequenceMean] {
        let config = policy_config(aggregation, None);
        let out = clipped_policy_loss(&LOGP, &OLD_LOGP, &ADVANTAGES, &[false; 6], 2, 3, &config);
        assert_eq!(
            (out.loss, out.approx_kl, out.clip_fraction, out.mean_ratio),
            (0.0, 0.0, 0.0, 0.0)
        );
        assert_eq!(out.grad_logp, vec![0.0; 6]);
    }
}

#[test]
fn value_loss_matches_hand_values() {
    // δ = 0.2:
    // t0: v=1.0, v_old=0.9, R=2: v_c = 1.0; errors −1, −1 → ½·1 = 0.5, gradient v − R = −1
    // t1: v=1.5, v_old=1.0, R=2: v_c = 1.2; (−0.5)² = 0.25 < (−0.8)² = 0.64 → ½·0.64 = 0.32, gradient 0
    // t2: v=1.5, v_old=1.0, R=1: v_c = 1.2; 0.5² = 0.25 > 0.2² = 0.04 → ½·0.25 = 0.125, gradient 0.5
    // loss (0.5 + 0.32 + 0.125)/3 = 0.315; gradients / 3; clip fraction 1/3
    let values = [1.0, 1.5, 1.5, NAN];
    let old_values = [0.9, 1.0, 1.0, NAN];
    let returns = [2.0, 2.0, 1.0, NAN];
    let mask = [true, true, true, false];
    let out = clipped_value_loss(
        &values,
        &old_values,
        &returns,
        &mask,
        1,
        4,
        &ValueLossConfig::default(),
    );
    assert_close(out.loss, 0.315, 1e-6, "loss");
    assert_all_close(
        &out.grad_values,
        &[-1.0 / 3.0, 0.0, 0.5 / 3.0, 0.0],
        1e-7,
        "grad",
    );
    assert_close(out.clip_fraction, 1.0 / 3.0, 1e-7, "clip fraction");
    // R = [2, 2, 1]: Var(R) = 2/9 = 0.222222; R − v = [1, 0.5, −0.5]: Var = 7/18 = 0.388889;
    // 1 − 0.388889/0.222222 = 1 − 1.75 = −0.75
    assert_close(out.explained_variance, -0.75, 1e-6, "explained variance");
    // without clipping: ½ (1 + 0.25 + 0.25)/3 = 0.25
    let unclipped = ValueLossConfig { clip_range: None };
    let out = clipped_value_loss(&values, &old_values, &returns, &mask, 1, 4, &unclipped);
    assert_close(out.loss, 0.25, 1e-7, "unclipped loss");
    assert_all_close(
        &out.grad_values,
        &[-1.0 / 3.0, -0.5 / 3.0, 0.5 / 3.0, 0.0],
        1e-7,
        "unclipped grad",
    );
}

#[test]
fn value_gradient_matches_finite_differences() {
    // Values stay ≥ 0.05 from v_old ± 0.2 and from where the two squared errors cross.
    let values = [1.0, 1.5, 1.5, 0.3, -0.2];
    let old_values = [0.9, 1.0, 1.0, 0.35, 0.3];
    let returns = [2.0, 2.0, 1.0, 0.1, 0.4];
    let mask = [true, true, true, true, true];
    for config in [
        ValueLossConfig::default(),
        ValueLossConfig { clip_range: None },
    ] {
        let out = clipped_value_loss(&values, &old_values, &returns, &mask, 1, 5, &config);
        let loss =
            |x: &[f32]| clipped_value_loss(x, &old_values, &returns, &mask, 1, 5, &config).loss;
        assert_gradient_matches(&out.grad_values, loss, &values, &format!("{config:?}"));
    }
}

#[test]
fn explained_variance_edge_cases() {
    // perfect prediction: 1 − 0/Var(R) = 1
    assert_eq!(
        explained_variance(&[1.0, 3.0], &[1.0, 3.0], &[true; 2]),
        1.0
    );
    // constant prediction at the mean: Var(R − v) = Var(R) → 0
    assert_close(
        explained_variance(&[2.0, 2.0], &[1.0, 3.0], &[true; 2]),
        0.0,
        1e-7,
        "mean",
    );
    // Var(R) = 0 (constant returns, one token, or none): defined as 0, not 0/0
    assert_eq!(
        explained_variance(&[0.0, 1.0], &[5.0, 5.0], &[true; 2]),
        0.0
    );
    assert_eq!(explained_variance(&[0.0], &[5.0], &[true]), 0.0);
    assert_eq!(explained_variance(&[0.0], &[5.0], &[false]), 0.0);
}

#[test]
fn fully_masked_value_batch_is_zero() {
    let out = clipped_value_loss(
        &[1.0; 4],
        &[0.0; 4],
        &[3.0; 4],
        &[false; 4],
        2,
        2,
        &ValueLossConfig::default(),
    );
    assert_eq!(
        (out.loss, out.clip_fraction, out.explained_variance),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(out.grad_values, vec![0.0; 4]);
}

#[test]
fn entropy_bonus_is_negative_mean_entropy() {
    // mean(1, 2, 3) = 2; loss = −0.01 · 2 = −0.02; ∂/∂H_t = −0.01/3
    let out = entropy_bonus(
        &[1.0, 2.0, NAN, 3.0],
        &[true, true, false, true],
        2,
        2,
        0.01,
    );
    assert_close(out.loss, -0.02, 1e-8, "loss");
    assert_close(out.mean_entropy, 2.0, 1e-7, "mean entropy");
    let g = -0.01 / 3.0;
    assert_all_close(&out.grad_entropy, &[g, g, 0.0, g], 1e-9, "grad");
    let empty = entropy_bonus(&[NAN; 2], &[false; 2], 1, 2, 0.01);
    assert_eq!((empty.loss, empty.mean_entropy), (0.0, 0.0));
    assert_eq!(empty.grad_entropy, vec![0.0; 2]);
}

#[test]
fn defaults_are_the_paper() {
    let policy = PolicyLossConfig::default();
    assert_eq!(
        (policy.clip_eps, policy.dual_clip, policy.aggregation),
        (0.2, None, LossAggregation::TokenMean)
    );
    assert_eq!(ValueLossConfig::default().clip_range, Some(0.2));
    assert_eq!(DEFAULT_VALUE_COEF, 0.1);
}
