mod loss_support;

use loss_support::{assert_all_close, assert_close, assert_gradient_matches};
use prefer::loss::{
    dpo_loss, sequence_logprobs, sequence_logprobs_backward, DpoConfig, DpoInputs, DpoLoss,
    SeqReduction,
};

fn config(loss: DpoLoss) -> DpoConfig {
    DpoConfig {
        loss,
        ..DpoConfig::default()
    }
}

/// Runs `dpo_loss` on policy log-probs packed as [chosen..., rejected...].
fn loss_of(policy: &[f32], reference: (&[f32], &[f32]), config: &DpoConfig) -> f32 {
    let n = policy.len() / 2;
    let inputs = DpoInputs {
        policy_chosen: &policy[..n],
        policy_rejected: &policy[n..],
        reference_chosen: reference.0,
        reference_rejected: reference.1,
    };
    dpo_loss(&inputs, config).loss
}

#[test]
fn policy_equal_to_reference_gives_known_values() {
    // π = ref ⇒ h = 0 for every pair.
    let chosen = [-3.0, -10.0, -0.5];
    let rejected = [-4.0, -2.0, -7.5];
    let inputs = DpoInputs {
        policy_chosen: &chosen,
        policy_rejected: &rejected,
        reference_chosen: &chosen,
        reference_rejected: &rejected,
    };
    let beta = 0.1;
    // sigmoid: −log σ(0) = ln 2 = 0.693147; ∂/∂π_c = −β σ(0) / N = −0.1 · 0.5 / 3
    let out = dpo_loss(&inputs, &config(DpoLoss::Sigmoid));
    assert_close(out.loss, std::f32::consts::LN_2, 1e-6, "sigmoid");
    assert_all_close(
        &out.grad_policy_chosen,
        &[-0.05 / 3.0; 3],
        1e-7,
        "sigmoid grad",
    );
    assert_all_close(
        &out.grad_policy_rejected,
        &[0.05 / 3.0; 3],
        1e-7,
        "sigmoid grad",
    );
    // IPO: (0 − 1/(2β))² = 1/(4β²) = 1/0.04 = 25; ∂/∂π_c = 2 (0 − 5) / 3 = −10/3
    let out = dpo_loss(&inputs, &config(DpoLoss::Ipo));
    assert_close(out.loss, 1.0 / (4.0 * beta * beta), 1e-4, "ipo");
    assert_all_close(&out.grad_policy_chosen, &[-10.0 / 3.0; 3], 1e-5, "ipo grad");
    // hinge: max(0, 1 − 0) = 1; ∂/∂π_c = −β / 3
    let out = dpo_loss(&inputs, &config(DpoLoss::Hinge));
    assert_close(out.loss, 1.0, 1e-7, "hinge");
    assert_all_close(
        &out.grad_policy_chosen,
        &[-0.1 / 3.0; 3],
        1e-7,
        "hinge grad",
    );
    // every implicit reward is 0, so no pair is "correct" (strict >)
    assert_eq!(out.chosen_rewards, vec![0.0; 3]);
    assert_eq!(out.reward_accuracy, 0.0);
}

#[test]
fn each_loss_matches_a_worked_example() {
    // h = (−1 − −2) − (−1.5 − −1.5) = 1; β = 0.1 ⇒ βh = 0.1
    let inputs = DpoInputs {
        policy_chosen: &[-1.0],
        policy_rejected: &[-2.0],
        reference_chosen: &[-1.5],
        reference_rejected: &[-1.5],
    };
    // sigmoid: −log σ(0.1) = 0.644397; ∂/∂π_c = −β σ(−0.1) = −0.1 · 0.475021 = −0.0475021
    let out = dpo_loss(&inputs, &config(DpoLoss::Sigmoid));
    assert_close(out.loss, 0.644_397, 1e-6, "sigmoid");
    assert_close(
        out.grad_policy_chosen[0],
        -0.047_502_1,
        1e-7,
        "sigmoid grad c",
    );
    assert_close(
        out.grad_policy_rejected[0],
        0.047_502_1,
        1e-7,
        "sigmoid grad r",
    );
    // cDPO, ε = 0.1: 0.9 · 0.644397 + 0.1 · (−log σ(−0.1) = 0.744397) = 0.654397
    let cdpo = DpoConfig {
        label_smoothing: 0.1,
        ..DpoConfig::default()
    };
    assert_close(dpo_loss(&inputs, &cdpo).loss, 0.654_397, 1e-6, "cdpo");
    // IPO: (h − 1/(2β))² = (1 − 5)² = 16
    assert_close(
        dpo_loss(&inputs, &config(DpoLoss::Ipo)).loss,
        16.0,
        1e-5,
        "ipo",
    );
    // hinge: max(0, 1 − 0.1) = 0.9
    assert_close(
        dpo_loss(&inputs, &config(DpoLoss::Hinge)).loss,
        0.9,
        1e-6,
        "hinge",
    );
    // reference-free sigmoid ignores the reference: −log σ(0.1 · (−1 − −2)) = 0.644397
    let out = dpo_loss(&inputs, &config(DpoLoss::RefFreeSigmoid));
    assert_close(out.loss, 0.644_397, 1e-6, "ref-free");
    // its implicit rewards use ref = 0: β π_c = −0.1, β π_r = −0.2
    assert_close(out.chosen_rewards[0], -0.1, 1e-7, "ref-free chosen reward");
    assert_close(
        out.rejected_rewards[0],
        -0.2,
        1e-7,
        "ref-free rejected reward",
    );
}

#[test]
fn simpo_uses_length_normalised_logprobs_and_margin() {
    // Token log-probs [batch 2, time 4]: chosen avg (−0.25 − 0.75)/2 = −0.5,
    // rejected avg (−1 − 2 − 1.5)/3 = −1.5.
    let tokens = [-0.25, -0.75, 0.0, 0.0, -1.0, -2.0, -1.5, 0.0];
    let mask = [true, true, false, false, true, true, true, false];
    let avg = sequence_logprobs(&tokens, &mask, 2, 4, SeqReduction::Mean);
    assert_all_close(&avg, &[-0.5, -1.5], 1e-7, "averages");
    let simpo = DpoConfig {
        loss: DpoLoss::Simpo,
        beta: 2.0,
        simpo_gamma: 0.5,
        ..DpoConfig::default()
    };
    let inputs = DpoInputs {
        policy_chosen: &avg[..1],
        policy_rejected: &avg[1..],
        reference_chosen: &[],
        reference_rejected: &[],
    };
    // z = β(π̄_c − π̄_r) − γ = 2 · 1 − 0.5 = 1.5; −log σ(1.5) = 0.201413
    let out = dpo_loss(&inputs, &simpo);
    assert_close(out.loss, 0.201_413, 1e-6, "simpo");

    // Chain rule down to the tokens, checked end to end with finite differences.
    let grad_tokens_from = |out: &prefer::loss::DpoOutput| {
        let grad_seq = [out.grad_policy_chosen[0], out.grad_policy_rejected[0]];
        sequence_logprobs_backward(&grad_seq, &mask, 2, 4, SeqReduction::Mean)
    };
    let loss_of_tokens = |x: &[f32]| {
        let avg = sequence_logprobs(x, &mask, 2, 4, SeqReduction::Mean);
        let inputs = DpoInputs {
            policy_chosen: &avg[..1],
            policy_rejected: &avg[1..],
            reference_chosen: &[],
            reference_rejected: &[],
        };
        dpo_loss(&inputs, &simpo).loss
    };
    assert_gradient_matches(
        &grad_tokens_from(&out),
        loss_of_tokens,
        &tokens,
        "simpo tokens",
    );
}

#[test]
fn metrics_per_pair() {
    // pair 0: chosen reward 0.1(−1 − −1.5) = 0.05, rejected 0.1(−2 − −1.5) = −0.05 → correct
    // pair 1: chosen 0.1(−3 − −2) = −0.1, rejected 0.1(−1 − −2) = 0.1 → wrong
    let inputs = DpoInputs {
        policy_chosen: &[-1.0, -3.0],
        policy_rejected: &[-2.0, -1.0],
        reference_chosen: &[-1.5, -2.0],
        reference_rejected: &[-1.5, -2.0],
    };
    let out = dpo_loss(&inputs, &DpoConfig::default());
    assert_all_close(&out.chosen_rewards, &[0.05, -0.1], 1e-7, "chosen rewards");
    assert_all_close(
        &out.rejected_rewards,
        &[-0.05, 0.1],
        1e-7,
        "rejected rewards",
    );
    assert_all_close(&out.reward_margins, &[0.1, -0.2], 1e-7, "margins");
    assert_eq!(out.reward_correct, vec![true, false]);
    assert_eq!(out.reward_accuracy, 0.5);
    // pair 1: h = −2, βh = −0.2, −log σ(−0.2) = 0.798139; mean (0.644397 + 0.798139)/2 = 0.721268
    assert_all_close(&out.losses, &[0.644_397, 0.798_139], 1e-6, "losses");
    assert_close(out.loss, 0.721_268, 1e-6, "mean loss");
}

#[test]
fn hinge_is_flat_past_the_margin() {
    // βh = 0.1 · 20 = 2 ≥ 1 ⇒ loss 0 and no gradient
    let inputs = DpoInputs {
        policy_chosen: &[0.0],
        policy_rejected: &[-20.0],
        reference_chosen: &[0.0],
        reference_rejected: &[0.0],
    };
    let out = dpo_loss(&inputs, &config(DpoLoss::Hinge));
    assert_eq!(out.loss, 0.0);
    assert_eq!(out.grad_policy_chosen, vec![0.0]);
}

#[test]
fn gradients_match_finite_differences_for_every_loss() {
    // Three pairs; every βh stays ≥ 0.05 (≫ the 1e-3 probe) away from the hinge kink at βh = 1.
    let policy = [-1.0, -2.5, -0.7, -2.0, -1.0, -3.1]; // [chosen 3, rejected 3]
    let reference_chosen = [-1.2, -2.0, -1.0];
    let reference_rejected = [-1.8, -1.5, -2.0];
    for (loss, label_smoothing) in [
        (DpoLoss::Sigmoid, 0.0),
        (DpoLoss::Sigmoid, 0.2),
        (DpoLoss::Ipo, 0.0),
        (DpoLoss::Hinge, 0.0),
        (DpoLoss::Simpo, 0.1),
        (DpoLoss::RefFreeSigmoid, 0.0),
    ] {
        let config = DpoConfig {
            loss,
            beta: if loss == DpoLoss::Simpo { 2.0 } else { 0.5 },
            label_smoothing,
            simpo_gamma: 0.4,
            average_logps: false,
        };
        let reference = (&reference_chosen[..], &reference_rejected[..]);
        let inputs = DpoInputs {
            policy_chosen: &policy[..3],
            policy_rejected: &policy[3..],
            reference_chosen: reference.0,
            reference_rejected: reference.1,
        };
        let out = dpo_loss(&inputs, &config);
        let analytic = [out.grad_policy_chosen, out.grad_policy_rejected].concat();
        assert_gradient_matches(
            &analytic,
            |x| loss_of(x, reference, &config),
            &policy,
            &format!("{loss:?} ε={label_smoothing}"),
        );
    }
}

#[test]
fn extreme_margins_stay_finite() {
    // h = ±1000 with β = 1: −log σ(1000) = 0 and −log σ(−1000) = 1000, gradients 0 and −1/2.
    let inputs = DpoInputs {
        policy_chosen: &[0.0, -1000.0],
        policy_rejected: &[-1000.0, 0.0],
        reference_chosen: &[0.0, 0.0],
        reference_rejected: &[0.0, 0.0],
    };
    let config = DpoConfig {
        beta: 1.0,
        ..DpoConfig::default()
    };
    let out = dpo_loss(&inputs, &config);
    assert_all_close(&out.losses, &[0.0, 1000.0], 1e-3, "losses");
    assert_all_close(&out.grad_policy_chosen, &[0.0, -0.5], 1e-7, "grads");
}

#[test]
fn empty_batch_is_zero_not_nan() {
    let inputs = DpoInputs {
        policy_chosen: &[],
        policy_rejected: &[],
        reference_chosen: &[],
        reference_rejected: &[],
    };
    let out = dpo_loss(&inputs, &DpoConfig::default());
    assert_eq!(out.loss, 0.0);
    assert_eq!(out.reward_accuracy, 0.0);
    assert!(out.grad_policy_chosen.is_empty());
}

#[test]
#[should_panic(expected = "reference_chosen must be [N]")]
fn reference_losses_require_reference() {
    let inputs = DpoInputs {
        policy_chosen: &[-1.0],
        policy_rejected: &[-2.0],
        reference_chosen: &[],
        reference_rejected: &[],
    };
    dpo_loss(&inputs, &DpoConfig::default());
}

/// Token log-probs of two pairs, [4 rows, T 4]: rows 0-1 chosen, 2-3 rejected, with responses of
/// 2, 3, 1 and 4 tokens.
const TOKENS: [f32; 16] = [
    -0.5, -1.5, 0.0, 0.0, //
    -1.0, -2.0, -3.0, 0.0, //
    -4.0, 0.0, 0.0, 0.0, //
    -0.5, -0.5, -1.0, -2.0,
];
const MASK: [bool; 16] = [
    true, true, false, false, //
    true, true, true, false, //
    true, false, false, false, //
    true, true, true, true,
];

#[test]
fn average_logps_turns_every_loss_to_means() {
    for loss in [
        DpoLoss::Sigmoid,
        DpoLoss::Ipo,
        DpoLoss::Hinge,
        DpoLoss::RefFreeSigmoid,
    ] {
        let on = DpoConfig {
            loss,
            average_logps: true,
            ..DpoConfig::default()
        };
        assert_eq!(on.reduction(), SeqReduction::Mean, "{loss:?}");
        assert_eq!(config(loss).reduction(), SeqReduction::Sum, "{loss:?}");
    }
    // SimPO averages whatever the switch says.
    assert_eq!(config(DpoLoss::Simpo).reduction(), SeqReduction::Mean);
}

#[test]
fn trl_ipo_on_averaged_logprobs_matches_a_worked_example() {
    // Means: chosen (−0.5 − 1.5)/2 = −1, (−1 − 2 − 3)/3 = −2; rejected −4, (−0.5 − 0.5 − 1 − 2)/4 = −1.
    let mean = sequence_logprobs(&TOKENS, &MASK, 4, 4, SeqReduction::Mean);
    assert_all_close(&mean, &[-1.0, -2.0, -4.0, -1.0], 1e-7, "means");
    // Reference means −1.5, −1.5, −2.5, −1.5. Pair 0: h = (−1 − −4) − (−1.5 − −2.5) = 2;
    // pair 1: h = (−2 − −1) − (−1.5 − −1.5) = −1. β = 0.1: target 1/(2β) = 5,
    // ℓ = (2 − 5)² = 9 and (−1 − 5)² = 36, mean 22.5.
    let ipo = DpoConfig {
        loss: DpoLoss::Ipo,
        average_logps: true,
        ..DpoConfig::default()
    };
    let reference = [-1.5, -1.5, -2.5, -1.5];
    let mut dlogp = vec![0.0; 16];
    let out = prefer::ops::cpu::dpo_loss::dpo_loss(
        &mut dlogp,
        &TOKENS,
        &MASK,
        Some(&reference),
        2,
        4,
        &ipo,
        1.0,
    );
    assert_all_close(&out.losses, &[9.0, 36.0], 1e-5, "TRL IPO losses");
    // ∂ℓ/∂h = 2(h − 5) = −6 and −12, over N = 2 pairs, then 1/n to each response token:
    // chosen row 0 gets −3/2 per token, row 1 (pair 1's chosen) −6/3; the rejected rows the
    // opposite over their own lengths.
    let want = [
        -1.5, -1.5, 0.0, 0.0, //
        -2.0, -2.0, -2.0, 0.0, //
        3.0, 0.0, 0.0, 0.0, //
        1.5, 1.5, 1.5, 1.5,
    ];
    assert_all_close(&dlogp, &want, 1e-5, "TRL IPO token gradient");
    // The implicit rewards are β times the mean gaps: 0.1 · (−1 − −1.5) = 0.05, ...
    assert_all_close(&out.chosen_rewards, &[0.05, -0.05], 1e-6, "chosen rewards");
    assert_all_close(
        &out.rejected_rewards,
        &[-0.15, 0.05],
        1e-6,
        "rejected rewards",
    );
}

#[test]
fn average_logps_gradients_match_finite_differences_for_every_loss() {
    // The whole chain a DPO step runs: token log-probs → per-sequence means → loss, against
    // finite differences of the token log-probs.
    let reference = [-1.2, -2.5, -3.0, -1.4];
    for (loss, beta) in [
        (DpoLoss::Sigmoid, 0.5),
        (DpoLoss::Ipo, 0.5),
        (DpoLoss::Hinge, 0.5),
        (DpoLoss::RefFreeSigmoid, 0.5),
    ] {
        let cfg = DpoConfig {
            loss,
            beta,
            label_smoothing: if loss == DpoLoss::Sigmoid { 0.1 } else { 0.0 },
            average_logps: true,
            ..DpoConfig::default()
        };
        let run = |x: &[f32], dlogp: &mut [f32]| {
            prefer::ops::cpu::dpo_loss::dpo_loss(dlogp, x, &MASK, Some(&reference), 2, 4, &cfg, 1.0)
        };
        let mut analytic = vec![0.0; 16];
        run(&TOKENS, &mut analytic);
        let mean_loss = |x: &[f32]| {
            let out = run(x, &mut [0.0; 16]);
            out.losses.iter().sum::<f32>() / 2.0
        };
        assert_gradient_matches(&analytic, mean_loss, &TOKENS, &format!("{loss:?} on means"));
        // On means every token of a response gets the same share, and padding none.
        assert_eq!(analytic[2], 0.0, "{loss:?}");
        assert_eq!(analytic[0], analytic[1], "{loss:?}");
        assert!(
            analytic[12..16].iter().all(|&g| g == analytic[12]),
            "{loss:?}"
        );
        assert_ne!(analytic[12], 0.0, "{loss:?}");
    }
}
