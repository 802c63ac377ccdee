//! Helpers shared by the `loss_*` integration tests: tolerant comparisons and finite differences.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

/// Panics unless |actual − expected| ≤ tol.
pub fn assert_close(actual: f32, expected: f32, tol: f32, what: &str) {
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: got {actual}, expected {expected} (tol {tol})"
    );
}

/// Elementwise [`assert_close`] on two slices of equal length.
pub fn assert_all_close(actual: &[f32], expected: &[f32], tol: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert_close(a, e, tol, &format!("{what}[{i}]"));
    }
}

/// Central finite differences (f(x + h e_i) − f(x − h e_i)) / (2h) for every i, h = 1e-3.
///
/// The step actually taken is read back from the rounded f32 inputs, so input rounding does not
/// bias the quotient.
pub fn central_differences(f: impl Fn(&[f32]) -> f32, x: &[f32]) -> Vec<f32> {
    const STEP: f32 = 1e-3;
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            probe[i] = x[i] + STEP;
            let (x_plus, f_plus) = (probe[i], f(&probe));
            probe[i] = x[i] - STEP;
            let (x_minus, f_minus) = (probe[i], f(&probe));
            probe[i] = x[i];
            (f64::from(f_plus - f_minus) / f64::from(x_plus - x_minus)) as f32
        })
        .collect()
}

/// Checks an analytic gradient against [`central_differences`] of `f` at `x`.
///
/// Tolerance 1e-3 · (1 + |g|): the losses under test are O(1) (|f| ≤ ~4), so rounding f to f32
/// (relative 6e-8) perturbs the quotient by at most 2 · 4 · 6e-8 / 2e-3 ≈ 2.4e-4, and the
/// truncation error h²/6 · |f'''| ≈ 1.7e-7 · |f'''| is negligible for the smooth pieces tested
/// (test points keep ≥ 10 h away from kinks and clip boundaries).
pub fn assert_gradient_matches(analytic: &[f32], f: impl Fn(&[f32]) -> f32, x: &[f32], what: &str) {
    let numeric = central_differences(f, x);
    assert_eq!(analytic.len(), numeric.len(), "{what}: gradient length");
    for (i, (&a, &n)) in analytic.iter().zip(&numeric).enumerate() {
        let tol = 1e-3 * (1.0 + a.abs());
        assert!(
            (a - n).abs() <= tol,
            "{what}[{i}]: analytic {a}, finite difference {n} (tol {tol})"
        );
    }
}
