mod loss_support;

use loss_support::assert_all_close;
use prefer::loss::{apply_eos_penalty, per_token_kl, shaped_rewards, EosPenalty, KlEstimator};

#[test]
fn missing_eos_gets_the_penalty_score() {
    let scores = [1.5, 2.0, -0.3];
    let ends_with_eos = [true, false, true];
    // default penalty −10 replaces the score of the response without EOS
    let out = apply_eos_penalty(&scores, &ends_with_eos, &EosPenalty::default());
    assert_eq!(out, vec![1.5, -10.0, -0.3]);
    let custom = EosPenalty {
        missing_eos_score: -5.0,
    };
    assert_eq!(
        apply_eos_penalty(&scores, &ends_with_eos, &custom),
        vec![1.5, -5.0, -0.3]
    );
}

#[test]
fn kl_penalty_on_every_token_and_score_on_the_last() {
    // [batch 3, time 4]; row 0 right-padded, row 1 left-padded, row 2 empty. β = 0.05.
    let kl = [
        0.2, -0.1, 0.4, 9.0, // row 0, last token padding
        9.0, 9.0, 0.3, 0.5, // row 1, two padding tokens first
        9.0, 9.0, 9.0, 9.0, // row 2, all padding
    ];
    let mask = [
        true, true, true, false, //
        false, false, true, true, //
        false, false, false, false,
    ];
    let scores = [1.0, -2.0, 7.0];
    let rewards = shaped_rewards(&kl, &scores, &mask, 3, 4, 0.05);
    let expected = [
        // −0.05·0.2, −0.05·−0.1, −0.05·0.4 + 1.0 (last response token), padding
        -0.01, 0.005, 0.98, 0.0, //
        // padding, padding, −0.05·0.3, −0.05·0.5 − 2.0
        0.0, 0.0, -0.015, -2.025, //
        // no response token: the score has nowhere to go
        0.0, 0.0, 0.0, 0.0,
    ];
    assert_all_close(&rewards, &expected, 1e-7, "rewards");
}

#[test]
fn shaping_with_k1_from_logprobs() {
    // k1 = logp − ref = [−1 − −1.5, −2 − −1] = [0.5, −1]; β = 0.1; score 3 at the last token:
    // rewards = [−0.05, 0.1 + 3] = [−0.05, 3.1]
    let kl = per_token_kl(
        &[-1.0, -2.0],
        &[-1.5, -1.0],
        &[true; 2],
        KlEstimator::K1,
        None,
    )
    .kl;
    let rewards = shaped_rewards(&kl, &[3.0], &[true; 2], 1, 2, 0.1);
    assert_all_close(&rewards, &[-0.05, 3.1], 1e-6, "rewards");
}
