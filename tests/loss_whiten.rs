mod loss_support;

use loss_support::{assert_all_close, assert_close};
use prefer::loss::{whiten, RunningMoments};

#[test]
fn whiten_with_and_without_mean_shift() {
    // valid [2, 4, 6, 8], mean 5, unbiased var (9 + 1 + 1 + 9)/3 = 6.666667, std 2.581989;
    // the masked NaN is never read and comes back as 0.
    let values = [2.0, 4.0, f32::NAN, 6.0, 8.0];
    let mask = [true, true, false, true, true];
    // (x − 5) / 2.581989 = [−1.161895, −0.387298, 0.387298, 1.161895]
    let shifted = whiten(&values, &mask, true);
    let expected = [-1.161_895, -0.387_298, 0.0, 0.387_298, 1.161_895];
    assert_all_close(&shifted, &expected, 1e-6, "shift_mean = true");
    // shift_mean = false adds the mean back: [3.838105, 4.612702, 5.387298, 6.161895]
    let kept = whiten(&values, &mask, false);
    let expected = [3.838_105, 4.612_702, 0.0, 5.387_298, 6.161_895];
    assert_all_close(&kept, &expected, 1e-6, "shift_mean = false");
}

#[test]
fn whiten_degenerate_masks_are_finite() {
    // One valid item: variance defined as 0, so (x − x)/√1e-8 = 0, or x itself without the shift.
    assert_eq!(whiten(&[3.0, 1.0], &[true, false], true), vec![0.0, 0.0]);
    assert_eq!(whiten(&[3.0, 1.0], &[true, false], false), vec![3.0, 0.0]);
    // Nothing valid: all zeros.
    assert_eq!(
        whiten(&[3.0, f32::NAN], &[false, false], true),
        vec![0.0, 0.0]
    );
}

#[test]
fn running_moments_merge_equals_one_pass() {
    // 1e6 + {1, 2, 3} then 1e6 + {4, 5}: mean 1e6 + 3, unbiased std √(10/4) = 1.581139
    let mut moments = RunningMoments::new();
    moments.update(&[1_000_001.0, 1_000_002.0, 1_000_003.0]);
    moments.update(&[]);
    moments.update(&[1_000_004.0, 1_000_005.0]);
    assert_eq!(moments.count(), 5);
    assert_eq!(moments.mean(), 1_000_003.0);
    assert_close(moments.std(), 1.581_139, 1e-6, "std");
    // normalise: (x − mean)/(std + 1e−8): 1e6 + 3 → 0, 1e6 + 4 → 1/1.581139 = 0.632456
    let normalised = moments.normalise(&[1_000_003.0, 1_000_004.0]);
    assert_all_close(&normalised, &[0.0, 0.632_456], 1e-6, "normalised");
}

#[test]
fn running_moments_before_two_values() {
    let mut moments = RunningMoments::new();
    assert_eq!((moments.mean(), moments.std()), (0.0, 0.0));
    moments.update(&[4.0]);
    // one value: mean 4, std defined as 0; normalising the value itself gives 0, not NaN
    assert_eq!((moments.mean(), moments.std()), (4.0, 0.0));
    assert_eq!(moments.normalise(&[4.0]), vec![0.0]);
}
