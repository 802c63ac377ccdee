//! Whitening over a batch mask, and running score normalisation across batches.

use super::numerics::{masked_mean_f64, masked_variance_f64};

/// ε added to the variance in [`whiten`] (as TRL) and to the std in [`RunningMoments::normalise`].
pub const WHITEN_EPS: f32 = 1e-8;

/// Masked whitening over the whole batch (TRL's `whiten`), `values`/`mask`: `[batch, time]` (any shape):
///
/// x'_i = (x_i − μ) / √(σ² + 1e-8) (+ μ again if `!shift_mean`), with μ and σ² the masked mean and
/// **unbiased** (n − 1) masked variance over all valid items of the batch.
///
/// `shift_mean = true` for advantages (zero mean, unit variance); `false` for rewards (rescale
/// only, keep the mean: TRL's `whiten(rewards, shift_mean=False)`). Masked positions are 0.
/// With one valid item σ² is taken as 0 (so it maps to 0, or to itself without the shift);
/// with none the result is all zeros.
pub fn whiten(values: &[f32], mask: &[bool], shift_mean: bool) -> Vec<f32> {
    assert_eq!(values.len(), mask.len(), "values and mask lengths differ");
    let mean = masked_mean_f64(values, mask);
    let variance = masked_variance_f64(values, mask, true);
    let inv_std = 1.0 / (variance + f64::from(WHITEN_EPS)).sqrt();
    let offset = if shift_mean { 0.0 } else { mean };
    values
        .iter()
        .zip(mask)
        .map(|(&x, &valid)| {
            if valid {
                ((f64::from(x) - mean) * inv_std + offset) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// Running mean and variance of every score seen so far, merged batch by batch with the parallel
/// form of Welford's algorithm (Chan et al. 1979), used for reward normalisation.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunningMoments {
    count: f64,
    mean: f64,
    /// Σ (x − mean)² over everything seen.
    sum_squared_deviations: f64,
}

impl RunningMoments {
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges a batch: with (n_a, μ_a, M_a) so far and (n_b, μ_b, M_b) for the batch (two-pass),
    /// δ = μ_b − μ_a, n = n_a + n_b, μ = μ_a + δ n_b / n, M = M_a + M_b + δ² n_a n_b / n.
    pub fn update(&mut self, values: &[f32]) {
        if values.is_empty() {
            return;
        }
        let batch_count = values.len() as f64;
        let batch_mean = values.iter().map(|&x| f64::from(x)).sum::<f64>() / batch_count;
        let batch_m2: f64 = values
            .iter()
            .map(|&x| (f64::from(x) - batch_mean).powi(2))
            .sum();
        let total = self.count + batch_count;
        let delta = batch_mean - self.mean;
        self.mean += delta * batch_count / total;
        self.sum_squared_deviations += batch_m2 + delta * delta * self.count * batch_count / total;
        self.count = total;
    }

    /// Number of values merged so far.
    pub fn count(&self) -> u64 {
        self.count as u64
    }

    /// Mean of everything seen (0 before any update).
    pub fn mean(&self) -> f32 {
        self.mean as f32
    }

    /// Unbiased standard deviation √(M / (n − 1)) of everything seen; 0 while n < 2.
    pub fn std(&self) -> f32 {
        if self.count < 2.0 {
            return 0.0;
        }
        (self.sum_squared_deviations / (self.count - 1.0)).sqrt() as f32
    }

    /// (x − mean) / (std + 1e-8) elementwise, with the current statistics. Call [`Self::update`]
    /// with the batch first to include it (as TRL does). While the statistics have no spread yet
    /// (fewer than two values, or all equal) values are only centred: scaling by 1/1e-8 would turn
    /// the first batch's rounding noise into huge rewards.
    pub fn normalise(&self, values: &[f32]) -> Vec<f32> {
        let std = f64::from(self.std());
        let scale = if std > 0.0 {
            1.0 / (std + f64::from(WHITEN_EPS))
        } else {
            1.0
        };
        values
            .iter()
            .map(|&x| ((f64::from(x) - self.mean) * scale) as f32)
            .collect()
    }
}
