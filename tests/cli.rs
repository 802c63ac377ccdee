//! The binary end to end: init, info and logprobs, and their errors on bad input.

use std::path::Path;
use std::process::Command;

fn prefer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_prefer"))
        .args(args)
        .output()
        .expect("runs")
}

/// `prefer logprobs --model M --input I --out O` plus `extra` flags.
fn logprobs(model: &Path, input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "logprobs",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    prefer(&args)
}

fn init_tiny(dir: &Path, extra: &[&str]) {
    let mut args = vec!["init", "--preset", "tiny", "--out", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = prefer(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn info_reports_kernels_and_gpu() {
    let out = prefer(&["info"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("prefer "), "{text}");
    assert!(text.contains("kernels:") && text.contains("gpu:"), "{text}");
}

#[test]
fn logprobs_from_ids_and_text_agree() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    init_tiny(&model, &["--seed", "3"]);
    // "Hi!" through the byte tokenizer is BOS then the bytes 72, 105, 33.
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"input_ids\": [256, 72, 105, 33]}\n\n{\"text\": \"Hi!\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let run = logprobs(&model, &input, &out, &["--device", "cpu"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = read_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["logprobs"].as_array().unwrap().len(), 3);
    assert_eq!(lines[0], lines[1]);
    for lp in lines[0]["logprobs"].as_array().unwrap() {
        let lp = lp.as_f64().unwrap();
        assert!(lp < 0.0 && lp > -20.0, "{lp}");
    }
    assert!(lines[0].get("reward").is_none());
}

#[test]
fn reward_model_writes_rewards() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("rm");
    init_tiny(&model, &["--scalar-head"]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForSequenceClassification");
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"input_ids\": [256, 1, 2]}\n{\"input_ids\": [256, 1, 2, 3, 4]}\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let run = logprobs(&model, &input, &out, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = read_lines(&out);
    let (r0, r1) = (
        lines[0]["reward"].as_f64().unwrap(),
        lines[1]["reward"].as_f64().unwrap(),
    );
    assert!(r0.is_finite() && r1.is_finite() && r0 != r1);
}

#[test]
fn malformed_jsonl_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    init_tiny(&model, &[]);
    let input = dir.path().join("bad.jsonl");
    std::fs::write(&input, "{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, 2\n").unwrap();
    let run = logprobs(&model, &input, &dir.path().join("o.jsonl"), &[]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("bad.jsonl:2:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_lines_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    init_tiny(&model, &[]);
    for (line, expect) in [
        (
            "{\"input_ids\": [1, 99999]}",
            "token id 99999 is outside the vocabulary of 259",
        ),
        ("{\"input_ids\": [-1]}", "token id -1"),
        ("{\"input_ids\": []}", "the sequence is empty"),
        ("{\"prompt\": \"x\"}", "unknown field `prompt`"),
        ("{}", "expected exactly one of"),
    ] {
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, format!("{line}\n")).unwrap();
        let run = logprobs(&model, &input, &dir.path().join("o.jsonl"), &[]);
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && err.contains(expect) && err.contains("in.jsonl:1"),
            "{line}: {err}"
        );
    }
}

#[test]
fn missing_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = logprobs(dir.path(), Path::new("x.jsonl"), Path::new("y.jsonl"), &[]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && err.contains("config.json"),
        "{err}"
    );
}

/// `bench train --plan-only` on any machine: Tulu 2 13B's shape with the optimiser state split over
/// 8 ranks keeps 6 bytes a parameter whole and 12 split (13.0B parameters: 90.9 GiB of state
/// against 218 GiB unsharded), and `--world-size` without `--plan-only` is refused.
#[test]
fn plan_only_prints_one_ranks_bytes_under_shard_optimizer() {
    let plan = |extra: &[&str]| {
        let mut args = vec!["bench", "train", "--plan-only", "--preset", "llama-2-13b"];
        args.extend(["--recompute", "--batch", "1", "--seq", "2048"]);
        args.extend_from_slice(extra);
        let out = prefer(&args);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let gib = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap();
            line.split_whitespace()
                .rev()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        };
        (text.clone(), gib("master weights"), gib("total"))
    };
    let (whole, master, total) = plan(&[]);
    let (text, master8, total8) = plan(&["--world-size", "8", "--shard", "optimizer"]);
    assert!(text.contains("one rank of 8 (--shard optimizer)"), "{text}");
    assert!((master - 48.49).abs() < 0.01, "{whole}");
    assert!((master8 - master / 8.0).abs() < 0.01, "{text}");
    // Masters and both moments: 12 bytes a parameter, 7/8 of them gone.
    assert!(
        (total - total8 - 3.0 * master * 7.0 / 8.0).abs() < 0.05,
        "{whole}\n{text}"
    );
    // --shard full splits the weights and gradients too: Tulu 2 13B fits 40 GiB a rank of 8.
    let (text, master_full, total_full) = plan(&["--world-size", "8", "--shard", "full"]);
    assert!(text.contains("one rank of 8 (--shard full)"), "{text}");
    assert!(text.contains("gathered units"), "{text}");
    assert!((master_full - master / 8.0).abs() < 0.01, "{text}");
    assert!(total_full <= 40.0, "{text}");
    let refused = prefer(&["bench", "train", "--world-size", "2"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("describe a plan (--plan-only)"));
}

/// `bench ppo --plan-only`: a PPO iteration with four 13B models (policy, value, reference, reward
/// model) fully sharded over 16 ranks fits 70 GiB a rank; the rollouts' phase holds the whole
/// policy, gathered (the hybrid engine). Without --plan-only it is refused.
#[test]
fn ppo_plan_with_four_13b_models_over_16_fully_sharded_ranks() {
    let out = prefer(&[
        "bench",
        "ppo",
        "--plan-only",
        "--preset",
        "llama-2-13b",
        "--world-size",
        "16",
        "--shard",
        "full",
        "--recompute",
        "--batch",
        "8",
        "--prompt-len",
        "128",
        "--new",
        "256",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let total: f64 = text
        .lines()
        .find(|l| l.trim_start().starts_with("total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(total <= 70.0 && total > 30.0, "{text}");
    assert!(text.contains("rollouts: the policy's whole copy"), "{text}");
    let refused = prefer(&["bench", "ppo"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("add --plan-only"));
}
