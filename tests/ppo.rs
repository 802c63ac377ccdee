//! `prefer ppo`: each switch changes the math as its src/loss formula says; PPO raises a reward
//! model's score on the CPU; a run stopped and resumed ends bitwise equal to one that was not;
//! the rollout log-probs equal the trainer's; the software GPU agrees with the CPU.

use prefer::loss::{
    gae, per_token_kl, shaped_rewards, whiten, EosPenalty, GaeConfig, KlEstimator, RunningMoments,
};
use prefer::rl::advantages::{advantages, Algo, RewardSwitches, ScoredBatch};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::signal_after_rows;

const B: usize = 3;
const T: usize = 4;

fn switches() -> RewardSwitches {
    RewardSwitches {
        kl_estimator: KlEstimator::K1,
        kl_clamp: None,
        eos_penalty: Some(EosPenalty {
            missing_eos_score: -10.0,
        }),
        reward_norm: false,
        reward_whiten: false,
        advantage_whiten: true,
        gae: GaeConfig::default(),
    }
}

/// Three sequences of four positions; the completions cover positions 1..3, 0..3 and 2..3.
struct Fixture {
    mask: Vec<bool>,
    old: Vec<f32>,
    reference: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
    eos: Vec<bool>,
}

fn fixture() -> Fixture {
    let mask = [
        [false, true, true, true],
        [true, true, true, true],
        [false, false, true, true],
    ]
    .concat();
    let f = |i: usize, a: f32| -(0.3 + a * ((i * 7919) % 13) as f32 / 13.0);
    Fixture {
        old: (0..B * T).map(|i| f(i, 2.0)).collect(),
        reference: (0..B * T).map(|i| f(i + 5, 1.5)).collect(),
        values: (0..B * T).map(|i| 0.1 * i as f32 - 0.4).collect(),
        scores: vec![1.5, -0.5, 2.5],
        eos: vec![true, false, true],
        mask,
    }
}

fn run(
    fx: &Fixture,
    algo: Algo,
    sw: &RewardSwitches,
    beta: f32,
    group: usize,
    m: &mut RunningMoments,
) -> prefer::rl::advantages::Advantages {
    let s = ScoredBatch {
        batch: B,
        time: T,
        mask: &fx.mask,
        old_logp: &fx.old,
        ref_logp: &fx.reference,
        values: &fx.values,
        scores: &fx.scores,
        ends_with_eos: &fx.eos,
    };
    advantages(algo, &s, sw, beta, group, m)
}

#[test]
fn the_eos_trick_replaces_only_truncated_completions_scores() {
    let fx = fixture();
    let a = run(
        &fx,
        Algo::Ppo,
        &switches(),
        0.05,
        1,
        &mut RunningMoments::new(),
    );
    assert_eq!(a.scores, vec![1.5, -10.0, 2.5]);
    let off = RewardSwitches {
        eos_penalty: None,
        ..switches()
    };
    let b = run(&fx, Algo::Ppo, &off, 0.05, 1, &mut RunningMoments::new());
    assert_eq!(b.scores, fx.scores);
}

#[test]
fn ppo_advantages_are_gae_over_shaped_rewards_then_whitened() {
    let fx = fixture();
    let a = run(
        &fx,
        Algo::Ppo,
        &switches(),
        0.05,
        1,
        &mut RunningMoments::new(),
    );
    let kl = per_token_kl(&fx.old, &fx.reference, &fx.mask, KlEstimator::K1, None).kl;
    let rewards = shaped_rewards(&kl, &[1.5, -10.0, 2.5], &fx.mask, B, T, 0.05);
    let g = gae(&rewards, &fx.values, &fx.mask, B, T, &GaeConfig::default());
    assert_eq!(a.kl, kl);
    assert_eq!(a.returns, g.returns);
    assert_eq!(a.advantages, whiten(&g.advantages, &fx.mask, true));
    // Off: the raw GAE advantages.
    let off = RewardSwitches {
        advantage_whiten: false,
        ..switches()
    };
    assert_eq!(
        run(&fx, Algo::Ppo, &off, 0.05, 1, &mut RunningMoments::new()).advantages,
        g.advantages
    );
    // Reward whitening whitens the shaped rewards over the batch, without shifting their mean.
    let rw = RewardSwitches {
        reward_whiten: true,
        advantage_whiten: false,
        ..switches()
    };
    let g2 = gae(
        &whiten(&rewards, &fx.mask, false),
        &fx.values,
        &fx.mask,
        B,
        T,
        &GaeConfig::default(),
    );
    assert_eq!(
        run(&fx, Algo::Ppo, &rw, 0.05, 1, &mut RunningMoments::new()).advantages,
        g2.advantages
    );
}

#[test]
fn the_kl_clamp_and_estimator_change_the_per_token_kl() {
    let fx = fixture();
    let clamp = RewardSwitches {
        kl_clamp: Some(0.2),
        ..switches()
    };
    let a = run(&fx, Algo::Ppo, &clamp, 0.05, 1, &mut RunningMoments::new());
    for i in 0..B * T {
        let want = if fx.mask[i] {
            (fx.old[i] - fx.reference[i]).clamp(-0.2, 0.2)
        } else {
            0.0
        };
        assert!(
            (a.kl[i] - want).abs() < 1e-7,
            "token {i}: {} vs {want}",
            a.kl[i]
        );
    }
    let k3 = RewardSwitches {
        kl_estimator: KlEstimator::K3,
        ..switches()
    };
    let b = run(&fx, Algo::Ppo, &k3, 0.05, 1, &mut RunningMoments::new());
    for i in (0..B * T).filter(|&i| fx.mask[i]) {
        let lr = fx.reference[i] - fx.old[i];
        assert!((b.kl[i] - (lr.exp_m1() - lr)).abs() < 1e-6);
    }
}

#[test]
fn reward_normalisation_uses_every_batch_seen_so_far() {
    let fx = fixture();
    let sw = RewardSwitches {
        reward_norm: true,
        ..switches()
    };
    let mut m = RunningMoments::new();
    let first = run(&fx, Algo::Ppo, &sw, 0.05, 1, &mut m);
    let second = run(&fx, Algo::Ppo, &sw, 0.05, 1, &mut m);
    let mut expect = RunningMoments::new();
    expect.update(&[1.5, -10.0, 2.5]);
    assert_eq!(first.scores, expect.normalise(&[1.5, -10.0, 2.5]));
    expect.update(&[1.5, -10.0, 2.5]);
    assert_eq!(second.scores, expect.normalise(&[1.5, -10.0, 2.5]));
    assert_eq!(m.count(), 6);
}

#[test]
fn grpo_and_rloo_broadcast_group_baselines_over_the_completion() {
    let mut fx = fixture();
    fx.eos = vec![true; B];
    let sw = switches();
    let beta = 0.1;
    let g = run(&fx, Algo::Grpo, &sw, beta, 3, &mut RunningMoments::new());
    let r = run(&fx, Algo::Rloo, &sw, beta, 3, &mut RunningMoments::new());
    let kl = per_token_kl(&fx.old, &fx.reference, &fx.mask, KlEstimator::K1, None).kl;
    let seq: Vec<f32> = (0..B)
        .map(|b| {
            fx.scores[b]
                - beta
                    * (0..T)
                        .filter(|&t| fx.mask[b * T + t])
                        .map(|t| kl[b * T + t])
                        .sum::<f32>()
        })
        .collect();
    // GRPO normalises the scores alone (its KL is a loss term); RLOO's reward carries the KL.
    let grpo = prefer::loss::grpo_advantages(&fx.scores, 3, true);
    let rloo = prefer::loss::rloo_advantages(&seq, 3);
    for i in 0..B * T {
        let (want_g, want_r) = if fx.mask[i] {
            (grpo[i / T], rloo[i / T])
        } else {
            (0.0, 0.0)
        };
        assert!((g.advantages[i] - want_g).abs() < 1e-5);
        assert!((r.advantages[i] - want_r).abs() < 1e-5);
    }
    assert!(g.returns.is_empty());
}

// ---- end to end, on the CPU ------------------------------------------------------------------

fn prefer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prefer"))
}

/// A tiny base policy, a reward model trained on the demo's synthetic task, and its prompts.
fn setup(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use prefer::cmd::init::{run_init, InitOptions};
    use prefer::train::{run_training, TrainArgs, TrainerKind};
    let base = root.join("base");
    let opts = InitOptions {
        seed: 0,
        scalar_head: false,
        dtype: prefer::model::weights::SaveDtype::F32,
        layers: None,
        init_std: None,
        vocab_size: None,
        overwrite: false,
    };
    run_init("tiny", &base, &opts).unwrap();
    let data = root.join("train.jsonl");
    let text = prefer::data::synthetic::synthetic_preferences(512, 0);
    std::fs::write(&data, &text).unwrap();
    let mut prompts: Vec<String> = Vec::new();
    for l in text.lines() {
        let p = serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"]
            .as_str()
            .unwrap()
            .to_string();
        if !prompts.contains(&p) {
            prompts.push(p);
        }
    }
    let prompts_path = root.join("prompts.jsonl");
    std::fs::write(
        &prompts_path,
        prompts
            .iter()
            .take(12)
            .map(|p| serde_json::json!({"prompt": p}).to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let rm = root.join("rm");
    run_training(
        TrainArgs {
            model: Some(base.clone()),
            data: Some(data),
            batch_size: Some(16),
            grad_accum: Some(1),
            // PPO renders its prompts with the chat template: the RM reads them the same way.
            chat_template: Some(true),
            run: prefer::train::RunArgs {
                out: Some(rm.clone()),
                lr: Some(3e-3),
                epochs: Some(2),
                warmup_ratio: Some(0.1),
                device: Some(prefer::cmd::Device::Cpu),
                ..prefer::train::RunArgs::default()
            },
            ..TrainArgs::default()
        },
        TrainerKind::RewardModel,
    )
    .unwrap();
    (base, rm, prompts_path)
}

fn ppo_args(
    base: &Path,
    rm: &Path,
    prompts: &Path,
    out: &Path,
    iters: &str,
    max_new: &str,
) -> Vec<String> {
    [
        "ppo",
        "--device",
        "cpu",
        "--policy",
        base.to_str().unwrap(),
        "--reward-model",
        rm.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--prompt-batch-size",
        "12",
        "--rollouts-per-prompt",
        "4",
        "--minibatch-size",
        "16",
        "--max-new-tokens",
        max_new,
        "--lr",
        "3e-3",
        "--ppo-epochs",
        "2",
        "--temperature",
        "1.0",
        "--max-steps",
        iters,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn ppo_with_the_papers_switches_raises_the_reward_models_score_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let (base, rm, prompts) = setup(dir.path());
    let out = dir.path().join("ppo");
    let o = prefer()
        .args(ppo_args(&base, &rm, &prompts, &out, "40", "40"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = metrics(&out);
    assert_eq!(rows.len(), 40);
    let score = |r: &serde_json::Value| r["objective/scores"].as_f64().unwrap();
    let first = score(&rows[0]);
    let last = rows[35..].iter().map(score).sum::<f64>() / 5.0;
    assert!(last > first + 1.0, "RM score {first:.3} -> {last:.3}");
    for r in &rows {
        // The engine's log-probs and the trainer's for the same tokens, on the CPU.
        assert!(r["logprob_gap/max"].as_f64().unwrap() < 1e-5, "{r}");
        for key in [
            "objective/kl",
            "objective/entropy",
            "objective/rlhf_reward",
            "policy/clipfrac_avg",
            "policy/approxkl_avg",
            "loss/policy_avg",
            "loss/value_avg",
            "val/num_eos_tokens",
            "lr",
            "value/explained_variance",
            "time/generate",
        ] {
            assert!(r.get(key).is_some(), "no {key} in {r}");
        }
    }
    // The final policy loads as an HF folder; the value model sits in value/.
    assert!(out.join("model.safetensors").is_file() && out.join("value/config.json").is_file());
}

#[test]
fn a_stopped_and_resumed_ppo_run_ends_bitwise_equal_and_the_adaptive_kl_moves() {
    let dir = tempfile::tempdir().unwrap();
    let (base, rm, prompts) = setup(dir.path());
    let mut args = ppo_args(&base, &rm, &prompts, &dir.path().join("full"), "4", "12");
    args.extend(["--adaptive-kl", "--target-kl", "1", "--kl-horizon", "100"].map(String::from));
    let o = prefer().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut stopped = ppo_args(&base, &rm, &prompts, &dir.path().join("part"), "4", "12");
    stopped.extend(
        [
            "--adaptive-kl",
            "--target-kl",
            "1",
            "--kl-horizon",
            "100",
            "--stop-after",
            "2",
        ]
        .map(String::from),
    );
    let o = prefer().args(&stopped).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("stopped at iteration 2/4; checkpoint saved")
    );
    let o = prefer()
        .args(["ppo", "--resume", dir.path().join("part").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |d: &str| std::fs::read(dir.path().join(d).join("model.safetensors")).unwrap();
    assert!(read("full") == read("part"), "resumed policy differs");
    let readv =
        |d: &str| std::fs::read(dir.path().join(d).join("value/model.safetensors")).unwrap();
    assert!(
        readv("full") == readv("part"),
        "resumed value model differs"
    );
    // β after each iteration: β ← β (1 + clip(KL/target − 1, ±0.2) · N / horizon), N = 48.
    let rows = metrics(&dir.path().join("full"));
    for w in rows.windows(2) {
        let (beta, kl) = (
            w[0]["kl/coef"].as_f64().unwrap(),
            w[0]["kl/k1"].as_f64().unwrap(),
        );
        let want = beta * (1.0 + (kl / 1.0 - 1.0).clamp(-0.2, 0.2) * 48.0 / 100.0);
        assert!(
            (w[1]["kl/coef"].as_f64().unwrap() - want).abs() < 1e-6 * want.max(1.0),
            "{beta} {kl}"
        );
    }
}

#[test]
fn bad_ppo_options_are_refused_with_their_names() {
    let bad = |args: &[&str], want: &str| {
        let o = prefer().arg("ppo").args(args).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(want), "{args:?}: {e}");
    };
    bad(
        &["--policy", "p", "--prompts", "x", "--out", "o"],
        "--reward-model is required",
    );
    bad(
        &[
            "--policy",
            "p",
            "--prompts",
            "x",
            "--out",
            "o",
            "--reward-model",
            "r",
            "--algo",
            "grpo",
            "--rollouts-per-prompt",
            "1",
        ],
        "--rollouts-per-prompt 2 or more",
    );
    bad(
        &[
            "--policy",
            "p",
            "--prompts",
            "x",
            "--out",
            "o",
            "--reward-model",
            "r",
            "--minibatch-size",
            "7",
            "--prompt-batch-size",
            "8",
        ],
        "--minibatch-size (7) must divide",
    );
    bad(
        &[
            "--policy",
            "p",
            "--prompts",
            "x",
            "--out",
            "o",
            "--reward-model",
            "r",
            "--temperature",
            "0",
        ],
        "--temperature 0 is out of range: give a number in (0, 100]",
    );
}

#[test]
fn grpo_learns_a_verifiable_task_on_the_cpu() {
    // Answer with the number in the prompt plus one, graded by the last number in the completion.
    use prefer::cmd::init::{run_init, InitOptions};
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let opts = InitOptions {
        seed: 0,
        scalar_head: false,
        dtype: prefer::model::weights::SaveDtype::F32,
        layers: None,
        init_std: None,
        vocab_size: None,
        overwrite: false,
    };
    run_init("tiny", &base, &opts).unwrap();
    let prompts = dir.path().join("plus1.jsonl");
    std::fs::write(
        &prompts,
        (1..5)
            .map(|n| {
                serde_json::json!({"prompt": n.to_string(), "answer": n + 1}).to_string() + "\n"
            })
            .collect::<String>(),
    )
    .unwrap();
    let out = dir.path().join("grpo");
    let o = prefer()
        .args([
            "ppo",
            "--device",
            "cpu",
            "--algo",
            "grpo",
            "--reward",
            "math-answer",
        ])
        .args([
            "--prompt-batch-size",
            "4",
            "--rollouts-per-prompt",
            "32",
            "--minibatch-size",
            "64",
        ])
        .args([
            "--max-new-tokens",
            "3",
            "--lr",
            "3e-3",
            "--max-steps",
            "150",
        ])
        .arg("--policy")
        .arg(&base)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = metrics(&out);
    let acc = |r: &serde_json::Value| r["objective/scores"].as_f64().unwrap();
    let first = acc(&rows[0]);
    let last = rows[140..].iter().map(acc).sum::<f64>() / 10.0;
    assert!(
        first < 0.1 && last >= 0.8,
        "accuracy {first:.3} -> {last:.3}"
    );
    assert!(!out.join("value").exists(), "GRPO trains no value model");
    // GRPO's own defaults (TRL's), saved in full so a resume keeps them: no EOS trick, T 1, β 0.
    let saved: toml::Value =
        toml::from_str(&std::fs::read_to_string(out.join("run.toml")).unwrap()).unwrap();
    assert_eq!(saved["no-eos-trick"].as_bool(), Some(true));
    assert_eq!(saved["temperature"].as_float(), Some(1.0));
    assert_eq!(saved["kl-coef"].as_float(), Some(0.0));
    // At β = 0 the reference model never runs, so no KL is reported.
    assert!(rows
        .iter()
        .all(|r| r.get("objective/kl").is_none() && r.get("kl/k1").is_none()));
    assert!(rows.iter().all(|r| r["kl/coef"].as_f64() == Some(0.0)));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("reference (not loaded: β is 0)"), "{e}");
}

#[test]
fn ppo_help_lists_each_algorithms_defaults() {
    let o = prefer().args(["ppo", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{help}");
    // One line per option holds its default for each algorithm where they differ.
    let line = |flag: &str| {
        let start = help
            .find(&format!("\n      {flag} "))
            .unwrap_or_else(|| panic!("no {flag} in {help}"));
        let rest = &help[start..];
        let end = rest.find("\n  -").unwrap_or(rest.len());
        rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")
    };
    assert!(
        line("--temperature").contains("[default: ppo 0.7, grpo 1, rloo 1]"),
        "{}",
        line("--temperature")
    );
    assert!(
        line("--kl-coef").contains("[default: ppo 0.05, grpo 0, rloo 0.05]"),
        "{}",
        line("--kl-coef")
    );
    assert!(line("--rollouts-per-prompt").contains("[default: ppo 1, grpo 8, rloo 2]"));
    assert!(line("--no-eos-trick").contains("[default: ppo false, grpo true, rloo true]"));
    assert!(
        line("--clip").contains("[default: 0.2]"),
        "{}",
        line("--clip")
    );
    assert!(line("--lr").contains("[default: 1e-6]"), "{}", line("--lr"));
    // The rollout engine's options, as `prefer generate` has them, with PPO's own defaults.
    assert!(
        line("--max-batch").contains("[default: the iteration's sequences, at most 256]"),
        "{}",
        line("--max-batch")
    );
    assert!(
        line("--kv-memory").contains("e.g. 512M or 8G [default: what the batch can use]"),
        "{}",
        line("--kv-memory")
    );
}

#[test]
fn a_prompt_too_long_for_the_context_is_named_by_its_line_when_the_prompts_are_read() {
    use prefer::cmd::init::{run_init, InitOptions};
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let opts = InitOptions {
        seed: 0,
        scalar_head: false,
        dtype: prefer::model::weights::SaveDtype::F32,
        layers: None,
        init_std: None,
        vocab_size: None,
        overwrite: false,
    };
    run_init("tiny", &base, &opts).unwrap();
    let context = prefer::model::weights::load_checkpoint(&base)
        .unwrap()
        .0
        .max_position_embeddings;
    // Line 3 renders (Tulu template, one byte a token, BOS first) to exactly the context.
    let long = "x".repeat(context - 1 - "<|user|>\n".len() - "\n<|assistant|>\n".len());
    let prompts = dir.path().join("prompts.jsonl");
    let line = |p: &str| serde_json::json!({"prompt": p, "answer": 1}).to_string() + "\n";
    std::fs::write(&prompts, line("1") + &line("2") + &line(&long) + &line("4")).unwrap();
    let want = format!(
        "prompts.jsonl:3: prompt of {context} tokens leaves no room to generate: the model's context is {context} tokens"
    );
    let o = prefer()
        .args([
            "ppo",
            "--device",
            "cpu",
            "--algo",
            "grpo",
            "--reward",
            "math-answer",
        ])
        .args([
            "--prompt-batch-size",
            "2",
            "--rollouts-per-prompt",
            "2",
            "--minibatch-size",
            "4",
        ])
        .args(["--max-new-tokens", "4", "--max-steps", "3"])
        .arg("--policy")
        .arg(&base)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains(&want), "{e}");
    assert!(!e.contains("iteration"), "found before any iteration: {e}");
    assert!(!dir.path().join("run/metrics.jsonl").exists());
    // The same file for generate, and one token less fits.
    let o = prefer()
        .args(["generate", "--device", "cpu", "--max-new-tokens", "2"])
        .arg("--model")
        .arg(&base)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(dir.path().join("gen.jsonl"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains(&want), "{e}");
    let shorter = &long[1..];
    std::fs::write(&prompts, line(shorter)).unwrap();
    let o = prefer()
        .args([
            "generate",
            "--device",
            "cpu",
            "--max-new-tokens",
            "5",
            "--temperature",
            "0",
        ])
        .arg("--model")
        .arg(&base)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(dir.path().join("gen.jsonl"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    // It generates until the context is full: one token, though five were asked for, and says so.
    assert!(
        e.contains(&format!("note: 1 of 1 prompts leave less than --max-new-tokens 5 of the model's context of {context} tokens (the first: ")),
        "{e}"
    );
    assert!(
        e.contains(&format!("prompts.jsonl:1, {} tokens)", context - 1)),
        "{e}"
    );
    let out: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("gen.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(out["completion_ids"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(out["finish_reason"], "length");
}

#[test]
fn a_ppo_config_file_is_read_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, "algo = \"grpo\"\nrollouts-per-prompt = 1\n").unwrap();
    let o = prefer()
        .args([
            "ppo",
            "--policy",
            "p",
            "--prompts",
            "x",
            "--out",
            "o",
            "--reward-model",
            "r",
        ])
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("--rollouts-per-prompt 2 or more"),
        "the file's algo and rollouts: {e}"
    );
    // A flag wins over the file: with 4 rollouts the options pass, and the missing policy is next.
    let o = prefer()
        .args(["ppo", "--policy", "p", "--prompts", "x", "--out"])
        .arg(dir.path().join("o"))
        .args([
            "--reward-model",
            "r",
            "--rollouts-per-prompt",
            "4",
            "--minibatch-size",
            "4",
        ])
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("p/config.json") || e.contains("reading p"),
        "{e}"
    );
    std::fs::write(&cfg, "algoo = \"grpo\"\n").unwrap();
    let o = prefer()
        .args(["ppo", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("not a valid run config") && e.contains("algoo"),
        "{e}"
    );
}

#[test]
fn ctrl_c_during_ppo_saves_exits_130_and_the_resume_ends_bitwise_equal() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let (base, rm, prompts) = setup(dir.path());
    let args = |out: &str| ppo_args(&base, &rm, &prompts, &dir.path().join(out), "12", "12");
    let o = prefer().args(args("straight")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let child = prefer()
        .args(args("run"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let out = signal_after_rows(child, &dir.path().join("run/metrics.jsonl"), 2, "INT");
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{e}");
    assert!(
        e.contains("interrupted by SIGINT at iteration ") && e.contains("/12; checkpoint saved"),
        "{e}"
    );
    let o = prefer()
        .args(["ppo", "--resume"])
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |d: &str| std::fs::read(dir.path().join(d).join("model.safetensors")).unwrap();
    assert!(
        read("straight") == read("run"),
        "the resumed policy differs"
    );
}
