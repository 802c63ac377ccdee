mod loss_support;

use loss_support::assert_all_close;
use prefer::loss::{grpo_advantages, rloo_advantages};

#[test]
fn grpo_normalises_within_each_group() {
    // group 0: [1, 2, 3, 4], mean 2.5, unbiased std √(5/3) = 1.290994;
    // (s − 2.5) / (1.290994 + 1e−4) = [−1.161805, −0.387268, 0.387268, 1.161805]
    // group 1: constant → 0 (std 0, numerator 0)
    let scores = [1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0];
    let scaled = grpo_advantages(&scores, 4, true);
    let expected = [
        -1.161_805, -0.387_268, 0.387_268, 1.161_805, 0.0, 0.0, 0.0, 0.0,
    ];
    assert_all_close(&scaled, &expected, 1e-6, "grpo");
    // Dr. GRPO: centre only, s − mean
    let centred = grpo_advantages(&scores, 4, false);
    let expected = [-1.5, -0.5, 0.5, 1.5, 0.0, 0.0, 0.0, 0.0];
    assert_all_close(&centred, &expected, 1e-7, "dr grpo");
}

#[test]
fn grpo_group_of_one_is_zero() {
    assert_eq!(grpo_advantages(&[3.0, -7.0], 1, true), vec![0.0, 0.0]);
    assert_eq!(grpo_advantages(&[3.0, -7.0], 1, false), vec![0.0, 0.0]);
}

#[test]
fn rloo_uses_leave_one_out_baselines() {
    // [1, 2, 3, 4]: A_i = s_i − (10 − s_i)/3 = [1 − 3, 2 − 8/3, 3 − 7/3, 4 − 2]
    //             = [−2, −0.666667, 0.666667, 2]
    // [1, 3]: [1 − 3, 3 − 1] = [−2, 2]
    let out = rloo_advantages(&[1.0, 2.0, 3.0, 4.0], 4);
    assert_all_close(&out, &[-2.0, -0.666_667, 0.666_667, 2.0], 1e-6, "n = 4");
    assert_all_close(
        &rloo_advantages(&[1.0, 3.0, 0.0, 0.0], 2),
        &[-2.0, 2.0, 0.0, 0.0],
        0.0,
        "n = 2",
    );
    // n = 1: no other rollout, advantage defined as 0
    assert_eq!(rloo_advantages(&[5.0, 6.0], 1), vec![0.0, 0.0]);
}

#[test]
#[should_panic(expected = "not a multiple of group_size")]
fn groups_must_tile_the_scores() {
    grpo_advantages(&[1.0, 2.0, 3.0], 2, true);
}
