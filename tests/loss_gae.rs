mod loss_support;

use loss_support::assert_all_close;
use prefer::loss::{gae, GaeConfig};

#[test]
fn gae_matches_a_worked_example() {
    // γ = 0.9, λ = 0.8 (γλ = 0.72), rewards [0, 0, 1], values [0.5, 0.6, 0.7]:
    // t=2: δ = 1 + 0 − 0.7 = 0.3                A = 0.3
    // t=1: δ = 0 + 0.9·0.7 − 0.6 = 0.03         A = 0.03 + 0.72·0.3 = 0.246
    // t=0: δ = 0 + 0.9·0.6 − 0.5 = 0.04         A = 0.04 + 0.72·0.246 = 0.21712
    // returns = A + V = [0.71712, 0.846, 1.0]
    // Row 0 is contiguous; row 1 is left-padded; row 2 has a hole (skipped, not discounted);
    // row 3 is empty. Padding holds NaN so any read of it would show.
    let nan = f32::NAN;
    let rewards = [
        0.0, 0.0, 1.0, nan, //
        nan, 0.0, 0.0, 1.0, //
        0.0, nan, 0.0, 1.0, //
        nan, nan, nan, nan,
    ];
    let values = [
        0.5, 0.6, 0.7, nan, //
        nan, 0.5, 0.6, 0.7, //
        0.5, nan, 0.6, 0.7, //
        nan, nan, nan, nan,
    ];
    let mask = [
        true, true, true, false, //
        false, true, true, true, //
        true, false, true, true, //
        false, false, false, false,
    ];
    let config = GaeConfig {
        gamma: 0.9,
        lambda: 0.8,
    };
    let out = gae(&rewards, &values, &mask, 4, 4, &config);
    let expected_advantages = [
        0.217_12, 0.246, 0.3, 0.0, //
        0.0, 0.217_12, 0.246, 0.3, //
        0.217_12, 0.0, 0.246, 0.3, //
        0.0, 0.0, 0.0, 0.0,
    ];
    let expected_returns = [
        0.717_12, 0.846, 1.0, 0.0, //
        0.0, 0.717_12, 0.846, 1.0, //
        0.717_12, 0.0, 0.846, 1.0, //
        0.0, 0.0, 0.0, 0.0,
    ];
    assert_all_close(&out.advantages, &expected_advantages, 1e-6, "advantages");
    assert_all_close(&out.returns, &expected_returns, 1e-6, "returns");
}

#[test]
fn gamma_lambda_one_gives_reward_to_go_minus_value() {
    // γ = λ = 1: the δ's telescope, A_t = Σ_{k ≥ t, valid} r_k − V_t.
    let (batch, time) = (3, 5);
    let lengths = [5, 2, 0]; // right-padded rows of different lengths, one empty
    let mask: Vec<bool> = (0..batch * time)
        .map(|i| i % time < lengths[i / time])
        .collect();
    let rewards: Vec<f32> = (0..batch * time)
        .map(|i| ((i * 7) % 5) as f32 * 0.3 - 0.4)
        .collect();
    let values: Vec<f32> = (0..batch * time)
        .map(|i| ((i * 3) % 4) as f32 * 0.25)
        .collect();
    let config = GaeConfig {
        gamma: 1.0,
        lambda: 1.0,
    };
    let out = gae(&rewards, &values, &mask, batch, time, &config);
    let mut expected = vec![0.0f32; batch * time];
    for b in 0..batch {
        for t in 0..lengths[b] {
            let reward_to_go: f32 = (t..lengths[b]).map(|k| rewards[b * time + k]).sum();
            expected[b * time + t] = reward_to_go - values[b * time + t];
        }
    }
    assert_all_close(&out.advantages, &expected, 1e-5, "advantages");
    // and the returns are the reward-to-go itself on valid tokens
    let returns: Vec<f32> = (0..batch * time)
        .map(|i| {
            if mask[i] {
                expected[i] + values[i]
            } else {
                0.0
            }
        })
        .collect();
    assert_all_close(&out.returns, &returns, 1e-5, "returns");
}

#[test]
fn lambda_zero_is_one_step_td() {
    // λ = 0: A_t = δ_t = r_t + γ V_{t+1} − V_t; γ = 0.5, r = [1, 2], V = [3, 4]
    // A = [1 + 0.5·4 − 3, 2 + 0 − 4] = [0, −2]
    let config = GaeConfig {
        gamma: 0.5,
        lambda: 0.0,
    };
    let out = gae(&[1.0, 2.0], &[3.0, 4.0], &[true; 2], 1, 2, &config);
    assert_all_close(&out.advantages, &[0.0, -2.0], 1e-7, "advantages");
}

#[test]
fn default_config_is_the_paper() {
    assert_eq!(
        GaeConfig::default(),
        GaeConfig {
            gamma: 1.0,
            lambda: 0.95
        }
    );
}
