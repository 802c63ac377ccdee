//! Numerically stable scalar functions and masked reductions shared by every loss.
//!
//! Reductions accumulate in f64 and round once to f32, so a reference value does not depend
//! on summation order; the GPU kernels (f32 tree reductions) are compared against them.
//! Values at masked-out positions are never read, so padding may hold anything, even NaN.

/// Stable log σ(x) = −log(1 + e^{−x}).
///
/// Derivative: d/dx log σ(x) = σ(−x).
pub fn log_sigmoid(x: f32) -> f32 {
    // Branch on the sign so that exp only ever sees a non-positive argument (no overflow):
    // x ≥ 0: −log1p(e^{−x});  x < 0: log σ(x) = x − log1p(e^{x}).
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// Stable σ(x) = 1 / (1 + e^{−x}).
pub fn sigmoid(x: f32) -> f32 {
    // Same sign split as `log_sigmoid`: e^{x} / (1 + e^{x}) for x < 0 avoids e^{−x} overflow.
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Stable log Σ_i e^{x_i} = m + log Σ_i e^{x_i − m} with m = max_i x_i.
///
/// An empty slice (or one holding only −∞) gives −∞, the log of an empty sum; +∞ anywhere gives +∞.
pub fn logsumexp(values: &[f32]) -> f32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max.is_infinite() {
        // −∞: all terms are zero. +∞: the sum is infinite. Both would give NaN below (∞ − ∞).
        return max;
    }
    let sum: f64 = values.iter().map(|&x| f64::from(x - max).exp()).sum();
    max + sum.ln() as f32
}

/// Number of valid items: #{i : mask_i}.
pub fn masked_count(mask: &[bool]) -> usize {
    mask.iter().filter(|&&valid| valid).count()
}

/// Σ_{i : mask_i} x_i (0 when nothing is valid).
pub fn masked_sum(values: &[f32], mask: &[bool]) -> f32 {
    assert_eq!(values.len(), mask.len(), "values and mask lengths differ");
    masked_sum_f64(values, mask) as f32
}

/// Σ_{i : mask_i} x_i / #{i : mask_i}; 0 when nothing is valid.
pub fn masked_mean(values: &[f32], mask: &[bool]) -> f32 {
    assert_eq!(values.len(), mask.len(), "values and mask lengths differ");
    masked_mean_f64(values, mask) as f32
}

/// Masked variance Σ_{i : mask_i} (x_i − x̄)² / d with d = n − 1 (`unbiased`, Bessel) or d = n.
///
/// Two-pass (mean first, then squared deviations), so it is exact for large offsets.
/// Returns 0 when d ≤ 0 (no valid item, or a single one with `unbiased`).
pub fn masked_variance(values: &[f32], mask: &[bool], unbiased: bool) -> f32 {
    assert_eq!(values.len(), mask.len(), "values and mask lengths differ");
    masked_variance_f64(values, mask, unbiased) as f32
}

/// Plain mean Σ x_i / n over a per-item slice; 0 for an empty slice.
pub fn mean(values: &[f32]) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    (values.iter().map(|&x| f64::from(x)).sum::<f64>() / values.len() as f64) as f32
}

/// How a per-token loss ℓ_{b,t} over a `[batch, time]` mask is reduced to one scalar.
///
/// Every variant is linear, L = Σ_{b,t} w_{b,t} ℓ_{b,t}, with weights from [`aggregation_weights`];
/// so ∂L/∂ℓ_{b,t} = w_{b,t}, and masked tokens get weight 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LossAggregation {
    /// w = 1 / N with N the number of valid tokens in the whole batch (PPO in TRL, DAPO).
    #[default]
    TokenMean,
    /// w = 1 / (n_b · B') with n_b the valid tokens of row b and B' the number of non-empty rows:
    /// mean over tokens within a sequence, then over sequences (GRPO, Shao et al. 2024).
    SequenceMean,
    /// w = 1 / (B · max_len), a constant that does not depend on response lengths
    /// (Dr. GRPO, Liu et al. 2025; `max_len` is the generation budget).
    FixedNormaliser { max_len: usize },
}

/// Per-token weights w_{b,t} of a [`LossAggregation`]: `[batch, time]`, 0 at masked tokens.
///
/// A batch without any valid token gets all-zero weights (the loss is then 0, not NaN).
pub fn aggregation_weights(
    mask: &[bool],
    batch: usize,
    time: usize,
    aggregation: LossAggregation,
) -> Vec<f32> {
    assert_shape("mask", mask.len(), batch, time);
    let mut weights = vec![0.0f32; batch * time]; // [B, T]
    match aggregation {
        LossAggregation::TokenMean => {
            let count = masked_count(mask);
            if count > 0 {
                let w = (1.0 / count as f64) as f32;
                fill_valid(&mut weights, mask, w);
            }
        }
        LossAggregation::SequenceMean => {
            let row_counts: Vec<usize> = (0..batch)
                .map(|b| masked_count(&mask[b * time..(b + 1) * time]))
                .collect(); // [B]
            let non_empty_rows = row_counts.iter().filter(|&&n| n > 0).count();
            for (b, &n) in row_counts.iter().enumerate() {
                if n > 0 {
                    let w = (1.0 / (n as f64 * non_empty_rows as f64)) as f32;
                    let row = b * time..(b + 1) * time;
                    fill_valid(&mut weights[row.clone()], &mask[row], w);
                }
            }
        }
        LossAggregation::FixedNormaliser { max_len } => {
            assert!(max_len > 0, "FixedNormaliser needs max_len > 0");
            if batch > 0 {
                let w = (1.0 / (batch as f64 * max_len as f64)) as f32;
                fill_valid(&mut weights, mask, w);
            }
        }
    }
    weights
}

fn fill_valid(weights: &mut [f32], mask: &[bool], w: f32) {
    for (weight, &valid) in weights.iter_mut().zip(mask) {
        if valid {
            *weight = w;
        }
    }
}

pub(crate) fn masked_sum_f64(values: &[f32], mask: &[bool]) -> f64 {
    values
        .iter()
        .zip(mask)
        .filter(|(_, &valid)| valid)
        .map(|(&x, _)| f64::from(x))
        .sum()
}

pub(crate) fn masked_mean_f64(values: &[f32], mask: &[bool]) -> f64 {
    let count = masked_count(mask);
    if count == 0 {
        return 0.0;
    }
    masked_sum_f64(values, mask) / count as f64
}

pub(crate) fn masked_variance_f64(values: &[f32], mask: &[bool], unbiased: bool) -> f64 {
    let count = masked_count(mask);
    let divisor = if unbiased {
        count as f64 - 1.0
    } else {
        count as f64
    };
    if divisor <= 0.0 {
        return 0.0;
    }
    let mean = masked_mean_f64(values, mask);
    let squared_deviations: f64 = values
        .iter()
        .zip(mask)
        .filter(|(_, &valid)| valid)
        .map(|(&x, _)| (f64::from(x) - mean).powi(2))
        .sum();
    squared_deviations / divisor
}

/// Panics unless a `[batch, time]` tensor has `batch * time` elements.
pub(crate) fn assert_shape(name: &str, len: usize, batch: usize, time: usize) {
    assert_eq!(
        len,
        batch * time,
        "{name} has {len} elements, expected [batch={batch}, time={time}]"
    );
}
