//! Win rate against reference answers, judged by a reward model, and its length-controlled form.
//!
//! - A policy answer wins when the judge's reward for it is above the reference answer's; a tie
//!   counts one half (AlpacaEval's convention).
//! - Length control, after AlpacaEval 2 (Dubois et al. 2024): the judge's preference is regressed
//!   on the length difference, logit P(policy preferred) = a + b·tanh(Δ/σ), with Δ the policy
//!   answer's length minus the reference's in characters and σ their standard deviation, fitted
//!   by logistic regression to the judge's soft preference σ(r_policy − r_reference). The
//!   length-controlled win rate is the fitted preference at equal length, σ(a).
//!
//! Where prefer differs from AlpacaEval 2: the judge is a reward model (its reward difference is
//! the preference's logit) rather than a GPT-4 prompt, and the GLM has no per-instruction
//! difficulty term, which AlpacaEval estimates from many models' results on the same set.

/// 1 for a win, ½ for a tie, 0 for a loss, from the reward difference.
pub fn outcome(margin: f64) -> f64 {
    if margin > 0.0 {
        1.0
    } else if margin == 0.0 {
        0.5
    } else {
        0.0
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The length-controlled win rate: σ(a) of the logistic fit logit p = a + b·tanh(Δ/σ_Δ) to the
/// soft preferences σ(margin). `margins` and `length_diffs` (policy minus reference, characters)
/// are per instruction.
pub fn length_controlled(margins: &[f64], length_diffs: &[f64]) -> f64 {
    let n = margins.len().min(length_diffs.len());
    if n == 0 {
        return f64::NAN;
    }
    let mean = length_diffs.iter().sum::<f64>() / n as f64;
    let sd = (length_diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    let x: Vec<f64> = length_diffs
        .iter()
        .map(|d| if sd > 0.0 { (d / sd).tanh() } else { 0.0 })
        .collect();
    let y: Vec<f64> = margins.iter().map(|&m| sigmoid(m)).collect();
    // Newton's method on the cross-entropy with soft labels; a tiny ridge keeps b defined when
    // every length difference is the same.
    let (mut a, mut b) = (0.0f64, 0.0f64);
    let ridge = 1e-6;
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (ridge * a, ridge * b, ridge, 0.0, ridge);
        for i in 0..n {
            let p = sigmoid(a + b * x[i]);
            let (r, w) = (p - y[i], p * (1.0 - p));
            ga += r;
            gb += r * x[i];
            haa += w;
            hab += w * x[i];
            hbb += w * x[i] * x[i];
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-300 {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        a -= da;
        b -= db;
        if da.abs() + db.abs() < 1e-12 {
            break;
        }
    }
    sigmoid(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_count_one_half() {
        assert_eq!([outcome(0.3), outcome(0.0), outcome(-2.0)], [1.0, 0.5, 0.0]);
    }

    #[test]
    fn a_judge_that_only_likes_length_gives_an_even_length_controlled_rate() {
        // The judge's preference is exactly σ(2·tanh(Δ/σ)): all length, no quality. Longer
        // answers win most of the time, yet at equal length the fit says 50%.
        let diffs: Vec<f64> = (0..200).map(|i| (i as f64 - 60.0) * 3.0).collect();
        let mean = diffs.iter().sum::<f64>() / 200.0;
        let sd = (diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / 200.0).sqrt();
        let margins: Vec<f64> = diffs.iter().map(|d| 2.0 * (d / sd).tanh()).collect();
        let raw = margins.iter().map(|&m| outcome(m)).sum::<f64>() / 200.0;
        assert!(raw > 0.65, "{raw}");
        let lc = length_controlled(&margins, &diffs);
        assert!((lc - 0.5).abs() < 1e-6, "{lc}");
    }

    #[test]
    fn a_judge_with_a_constant_preference_is_recovered_whatever_the_lengths() {
        let diffs: Vec<f64> = (0..50)
            .map(|i| ((i * 37) % 11) as f64 * 10.0 - 40.0)
            .collect();
        let margins = vec![1.0; 50];
        let lc = length_controlled(&margins, &diffs);
        assert!((lc - sigmoid(1.0)).abs() < 1e-6, "{lc}");
        // Equal lengths everywhere: the length term has nothing to explain.
        let lc = length_controlled(&[0.5, -0.5, 1.5], &[0.0, 0.0, 0.0]);
        let want = [0.5f64, -0.5, 1.5].iter().map(|&m| sigmoid(m)).sum::<f64>() / 3.0;
        assert!((lc - want).abs() < 1e-6, "{lc} vs {want}");
    }
}
