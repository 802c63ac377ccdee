mod loss_support;

use loss_support::{assert_all_close, assert_close};
use prefer::loss::{
    aggregation_weights, log_sigmoid, logsumexp, masked_count, masked_mean, masked_sum,
    masked_variance, mean, sigmoid, LossAggregation,
};

#[test]
fn log_sigmoid_matches_hand_values() {
    // log σ(0) = −ln 2 = −0.693147
    assert_close(log_sigmoid(0.0), -std::f32::consts::LN_2, 1e-7, "log σ(0)");
    // log σ(2) = −ln(1 + e^−2) = −ln(1.135335) = −0.126928
    assert_close(log_sigmoid(2.0), -0.126_928, 1e-6, "log σ(2)");
    // log σ(−2) = −2 + log σ(2) = −2.126928
    assert_close(log_sigmoid(-2.0), -2.126_928, 1e-6, "log σ(−2)");
}

#[test]
fn log_sigmoid_is_finite_at_extremes() {
    // log σ(−1000) = −1000 − ln(1 + e^−1000) = −1000 (a naive ln(σ) would give −∞)
    assert_eq!(log_sigmoid(-1000.0), -1000.0);
    // log σ(1000) = −ln(1 + e^−1000) = −0 (a naive 1 + e^{1000} would overflow)
    assert_eq!(log_sigmoid(1000.0), 0.0);
    // log σ(−100) = −100 − ln(1 + 3.7e−44) = −100
    assert_close(log_sigmoid(-100.0), -100.0, 1e-5, "log σ(−100)");
}

#[test]
fn sigmoid_matches_hand_values_and_saturates() {
    assert_eq!(sigmoid(0.0), 0.5);
    // σ(2) = 1 / (1 + e^−2) = 1 / 1.135335 = 0.880797
    assert_close(sigmoid(2.0), 0.880_797, 1e-6, "σ(2)");
    // σ(−2) = 1 − σ(2) = 0.119203
    assert_close(sigmoid(-2.0), 0.119_203, 1e-6, "σ(−2)");
    // e^{1000} overflows f32, the stable form never computes it
    assert_eq!(sigmoid(1000.0), 1.0);
    assert_eq!(sigmoid(-1000.0), 0.0);
}

#[test]
fn logsumexp_is_stable() {
    // 3 + ln(e^−2 + e^−1 + e^0) = 3 + ln(1.503215) = 3.407606
    assert_close(logsumexp(&[1.0, 2.0, 3.0]), 3.407_606, 1e-6, "lse(1,2,3)");
    // 1000 + ln 2: a naive e^{1000} overflows
    assert_close(
        logsumexp(&[1000.0, 1000.0]),
        1_000.693_1,
        1e-4,
        "lse(1000,1000)",
    );
    // log of an empty sum is −∞, and −∞ − −∞ must not produce NaN
    assert_eq!(logsumexp(&[]), f32::NEG_INFINITY);
    assert_eq!(logsumexp(&[f32::NEG_INFINITY; 2]), f32::NEG_INFINITY);
    // one −∞ term contributes nothing: ln(e^0) = 0
    assert_close(logsumexp(&[0.0, f32::NEG_INFINITY]), 0.0, 1e-7, "lse(0,−∞)");
}

#[test]
fn masked_reductions_ignore_masked_values() {
    // The NaN sits at a masked position and must never be read.
    let values = [1.0, 2.0, f32::NAN, 4.0];
    let mask = [true, true, false, true];
    assert_eq!(masked_count(&mask), 3);
    // 1 + 2 + 4 = 7
    assert_eq!(masked_sum(&values, &mask), 7.0);
    // 7 / 3 = 2.333333
    assert_close(masked_mean(&values, &mask), 7.0 / 3.0, 1e-6, "mean");
    // deviations −4/3, −1/3, 5/3 → squares sum 42/9 = 4.666667; /2 = 2.333333, /3 = 1.555556
    assert_close(
        masked_variance(&values, &mask, true),
        2.333_333,
        1e-6,
        "unbiased var",
    );
    assert_close(
        masked_variance(&values, &mask, false),
        1.555_556,
        1e-6,
        "biased var",
    );
}

#[test]
fn masked_reductions_of_nothing_are_zero() {
    let values = [f32::NAN, 5.0];
    let none = [false, false];
    assert_eq!(masked_sum(&values, &none), 0.0);
    assert_eq!(masked_mean(&values, &none), 0.0);
    assert_eq!(masked_variance(&values, &none, false), 0.0);
    // a single valid item has no unbiased variance (n − 1 = 0): defined as 0
    assert_eq!(masked_variance(&values, &[false, true], true), 0.0);
    assert_eq!(masked_variance(&values, &[false, true], false), 0.0);
    assert_eq!(mean(&[]), 0.0);
    // (1 + 2 + 6) / 3 = 3
    assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
}

#[test]
fn masked_variance_is_exact_for_large_offsets() {
    // 1e6 + {1, 2, 3}: unbiased variance 1 (a one-pass E[x²] − E[x]² in f32 would lose it all)
    let values = [1_000_001.0, 1_000_002.0, 1_000_003.0];
    assert_close(masked_variance(&values, &[true; 3], true), 1.0, 1e-6, "var");
}

#[test]
fn aggregation_weights_per_variant() {
    // [batch = 3, time = 3]: row 0 has 2 valid tokens, row 1 none, row 2 one.
    let mask = [true, true, false, false, false, false, true, false, false];
    let token = aggregation_weights(&mask, 3, 3, LossAggregation::TokenMean);
    // 3 valid tokens → 1/3 each
    let third = 1.0 / 3.0;
    let expected = [third, third, 0.0, 0.0, 0.0, 0.0, third, 0.0, 0.0];
    assert_all_close(&token, &expected, 1e-7, "token mean");

    let sequence = aggregation_weights(&mask, 3, 3, LossAggregation::SequenceMean);
    // 2 non-empty rows: row 0 → 1/(2·2) = 0.25, row 2 → 1/(1·2) = 0.5
    let expected = [0.25, 0.25, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0];
    assert_all_close(&sequence, &expected, 1e-7, "sequence mean");

    let fixed = aggregation_weights(&mask, 3, 3, LossAggregation::FixedNormaliser { max_len: 4 });
    // 1 / (B · max_len) = 1 / (3 · 4) = 1/12, independent of the lengths
    let w = 1.0 / 12.0;
    let expected = [w, w, 0.0, 0.0, 0.0, 0.0, w, 0.0, 0.0];
    assert_all_close(&fixed, &expected, 1e-7, "fixed normaliser");
}

#[test]
fn aggregation_weights_of_fully_masked_batch_are_zero() {
    let mask = [false; 6];
    for aggregation in [
        LossAggregation::TokenMean,
        LossAggregation::SequenceMean,
        LossAggregation::FixedNormaliser { max_len: 3 },
    ] {
        let weights = aggregation_weights(&mask, 2, 3, aggregation);
        assert_eq!(weights, vec![0.0; 6], "{aggregation:?}");
    }
}

#[test]
#[should_panic(expected = "expected [batch=2, time=3]")]
fn aggregation_weights_reject_wrong_shape() {
    aggregation_weights(&[true; 5], 2, 3, LossAggregation::TokenMean);
}
