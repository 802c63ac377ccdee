//! What a user must never lose: files in a folder given to `prefer demo --out`, and a run stopped
//! with Ctrl-C (exit 130, a message that says where to go on, and a resume that ends bitwise
//! equal to an uninterrupted run).

use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::signal_after_rows;

fn prefer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prefer"))
}

#[test]
fn demo_refuses_a_folder_holding_user_files_and_leaves_them_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("keep");
    std::fs::create_dir(&keep).unwrap();
    std::fs::write(keep.join("a.txt"), b"x\n").unwrap();
    let out = prefer()
        .args(["demo", "--device", "cpu", "--out", keep.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not empty and is not a previous demo's folder"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(keep.join("a.txt")).unwrap(), b"x\n");
    assert_eq!(std::fs::read_dir(&keep).unwrap().count(), 1);
}

#[test]
fn a_second_demo_replaces_only_what_the_first_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    // What a previous demo leaves, plus a file of the user's.
    std::fs::create_dir_all(out.join("rm/checkpoint")).unwrap();
    std::fs::write(out.join(".prefer-demo"), "").unwrap();
    std::fs::write(out.join("rm/stale.txt"), "old").unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let o = prefer()
        .args(["demo", "--device", "cpu", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    assert!(!out.join("rm/stale.txt").exists());
    assert!(out.join("dpo/model.safetensors").is_file());
}

fn dpo_args(root: &Path, out: &str) -> Vec<String> {
    [
        "dpo",
        "--device",
        "cpu",
        "--model",
        root.join("base").to_str().unwrap(),
        "--data",
        root.join("train.jsonl").to_str().unwrap(),
        "--out",
        root.join(out).to_str().unwrap(),
        "--lr",
        "1e-3",
        "--batch-size",
        "8",
        "--epochs",
        "3",
        "--save-every",
        "1000",
        "--ref-cache-dir",
        root.join("cache").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn ctrl_c_saves_says_so_exits_130_and_resumes_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    base_and_data(root, 256);

    let straight = prefer().args(dpo_args(root, "straight")).output().unwrap();
    assert!(
        straight.status.success(),
        "{}",
        String::from_utf8_lossy(&straight.stderr)
    );

    let child = prefer()
        .args(dpo_args(root, "run"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Interrupt once a few steps are done.
    let out = signal_after_rows(child, &root.join("run/metrics.jsonl"), 3, "INT");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGINT at step "),
        "{stderr}"
    );
    assert!(stderr.contains("/24; checkpoint saved in "), "{stderr}"); // 256 pairs, 3 epochs, 32 a step
    assert!(
        stderr.contains(&format!(
            "continue with prefer dpo --resume {}",
            root.join("run").display()
        )),
        "{stderr}"
    );
    assert!(
        !root.join("run/model.safetensors").exists(),
        "an interrupted run writes no final model"
    );

    let resumed = prefer()
        .args(["dpo", "--resume"])
        .arg(root.join("run"))
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let weights = |out: &str| std::fs::read(root.join(out).join("model.safetensors")).unwrap();
    assert!(
        weights("straight") == weights("run"),
        "the resumed run's weights differ from the uninterrupted run's"
    );
}

/// A short DPO run started from `cwd` with paths relative to it.
fn relative_run(root: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    prefer()
        .current_dir(root)
        .args([
            "dpo",
            "--device",
            "cpu",
            "--model",
            "base",
            "--data",
            "train.jsonl",
        ])
        .args([
            "--eval-data",
            "train.jsonl",
            "--out",
            out,
            "--batch-size",
            "8",
        ])
        .args([
            "--grad-accum",
            "1",
            "--epochs",
            "1",
            "--ref-cache-dir",
            "cache",
        ])
        .args(extra)
        .output()
        .unwrap()
}

/// `root/base`: a tiny model; `root/train.jsonl`: `pairs` synthetic pairs (none when 0).
fn base_and_data(root: &Path, pairs: usize) {
    let init = prefer()
        .args(["init", "--preset", "tiny", "--out"])
        .arg(root.join("base"))
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr_of(&init));
    if pairs > 0 {
        std::fs::write(
            root.join("train.jsonl"),
            prefer::data::synthetic::synthetic_preferences(pairs, 4),
        )
        .unwrap();
    }
}

/// The command's stderr holds `needle` (shown in full when it does not).
fn assert_stderr_has(o: &std::process::Output, needle: &str) {
    let e = stderr_of(o);
    assert!(e.contains(needle), "no {needle:?} in:\n{e}");
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn resume_works_from_anywhere_and_refuses_what_it_cannot_honour() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    base_and_data(root, 32);

    // Stopped after one of four steps, then resumed from another directory.
    let o = relative_run(root, "run", &["--stop-after", "1"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let elsewhere = tempfile::tempdir().unwrap();
    let resume = |extra: &[&str], cmd: &str| {
        prefer()
            .current_dir(elsewhere.path())
            .args([cmd, "--resume"])
            .arg(root.join("run"))
            .args(extra)
            .output()
            .unwrap()
    };
    // A changed option is refused, not silently applied.
    let o = resume(&["--lr", "0.5"], "dpo");
    assert!(!o.status.success());
    assert_stderr_has(
        &o,
        "drop --lr (only --device, --bucket-mb, --shard, --ref-cache-dir may change)",
    );
    // The other trainer is told what the run is.
    let o = resume(&[], "rm");
    assert_stderr_has(&o, "is a DPO run: continue it with prefer dpo --resume");
    let o = resume(&[], "dpo");
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(root.join("run/model.safetensors").is_file());
    // The summary keeps the evaluation made before training, in the run's first part; a random
    // policy equals its reference, so every held-out margin is 0: all ties, counted as wrong.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("run/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["initial_eval_accuracy"], 0.0, "{summary}");
    assert_eq!(summary["initial_eval_ties"], 1.0, "{summary}");
    assert!(
        summary["final_eval_ties"].as_f64().unwrap() < 1.0,
        "{summary}"
    );

    // A finished run says so and changes nothing.
    let evals = std::fs::read(root.join("run/eval.jsonl")).unwrap();
    let o = resume(&[], "dpo");
    assert!(o.status.success());
    assert_stderr_has(&o, "is finished (step 4");
    assert_eq!(std::fs::read(root.join("run/eval.jsonl")).unwrap(), evals);

    // run.toml without a checkpoint.
    std::fs::create_dir(root.join("fresh")).unwrap();
    std::fs::copy(root.join("run/run.toml"), root.join("fresh/run.toml")).unwrap();
    let o = prefer()
        .arg("dpo")
        .arg("--resume")
        .arg(root.join("fresh"))
        .output()
        .unwrap();
    assert_stderr_has(&o, "has run.toml but no checkpoint yet");
}

#[test]
fn options_that_would_do_nothing_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let o = relative_run(root, "a", &["--max-steps", "0"]);
    assert_stderr_has(&o, "--max-steps 0 would train nothing");
    let o = prefer()
        .current_dir(root)
        .args([
            "rm",
            "--model",
            "m",
            "--data",
            "d",
            "--out",
            "o",
            "--label-smoothing",
            "0.1",
        ])
        .output()
        .unwrap();
    assert_stderr_has(&o, "are DPO options");
    // Negative values reach the validation and its message instead of clap's "unknown flag".
    let o = relative_run(root, "b", &["--lr", "-1"]);
    assert_stderr_has(&o, "--lr -1 is out of range: give a number in [0, 1e38]");
}

#[test]
fn data_files_a_user_might_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    base_and_data(root, 0);
    // A byte-order mark before the first line is skipped; one pair reads "1 pair".
    std::fs::write(
        root.join("bom.jsonl"),
        "\u{feff}{\"prompt\": \"hi\", \"chosen\": \"yes\", \"rejected\": \"no\"}\n",
    )
    .unwrap();
    let o = prefer()
        .current_dir(root)
        .args([
            "dpo",
            "--device",
            "cpu",
            "--model",
            "base",
            "--data",
            "bom.jsonl",
        ])
        .args([
            "--out",
            "bom-run",
            "--max-steps",
            "1",
            "--ref-cache-dir",
            "cache",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_stderr_has(&o, "bom.jsonl: 1 pair (0 bad lines skipped");
    // A folder as --data.
    let o = prefer()
        .current_dir(root)
        .args(["dpo", "--model", "base", "--data", "base", "--out", "x"])
        .output()
        .unwrap();
    assert_stderr_has(
        &o,
        "base is a folder with no parquet files; give a JSONL file",
    );
    // Nothing fits: the message counts the dropped pairs and names the way out.
    let o = prefer()
        .current_dir(root)
        .args([
            "dpo",
            "--model",
            "base",
            "--data",
            "bom.jsonl",
            "--out",
            "y",
        ])
        .args(["--max-len", "3", "--max-prompt-len", "2"])
        .output()
        .unwrap();
    let e = stderr_of(&o);
    assert!(
        e.contains("no usable pairs (1 too long for --max-len 3"),
        "{e}"
    );
    assert!(e.contains("--overflow truncate keeps them"), "{e}");
    // A config.json of another architecture.
    let cfg = std::fs::read_to_string(root.join("base/config.json")).unwrap();
    std::fs::create_dir(root.join("gpt2")).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(root.join("base").join(f), root.join("gpt2").join(f)).unwrap();
    }
    std::fs::write(
        root.join("gpt2/config.json"),
        cfg.replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt2\""),
    )
    .unwrap();
    let o = prefer()
        .current_dir(root)
        .args([
            "dpo",
            "--model",
            "gpt2",
            "--data",
            "bom.jsonl",
            "--out",
            "z",
        ])
        .output()
        .unwrap();
    assert_stderr_has(&o, "model_type \"gpt2\" is not a Llama model");
}

#[test]
fn commands_share_their_flags_and_name_what_they_accept() {
    let o = prefer().args(["bench", "foo"]).output().unwrap();
    assert_stderr_has(
        &o,
        "unknown benchmark \"foo\" (kernels, train, dpo, generate, ppo)",
    );
    let o = prefer().args(["eval-rm", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("--device"), "{help}");
    let o = prefer()
        .args([
            "eval-rm",
            "--model",
            "m",
            "--data",
            "d",
            "--batch-size",
            "0",
        ])
        .output()
        .unwrap();
    assert_stderr_has(
        &o,
        "--batch-size 0 is out of range: give a whole number from 1 to 65536",
    );
    let o = prefer().args(["dpo", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(!help.contains("[`"), "no rustdoc links in help: {help}");
    let o = prefer().args(["bench", "--help"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&o.stdout).contains("DESIGN.md"));
}

#[test]
fn help_shows_each_trainers_defaults_marks_required_options_and_only_what_applies() {
    let help = |args: &[&str]| {
        let o = prefer().args(args).output().unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let rm = help(&["rm", "--help"]);
    let dpo = help(&["dpo", "--help"]);
    // The paper's learning rates, one per trainer.
    assert!(
        rm.contains("reached after the warm-up, then shaped by --decay [default: 1e-5]"),
        "{rm}"
    );
    assert!(
        dpo.contains("reached after the warm-up, then shaped by --decay [default: 5e-7]"),
        "{dpo}"
    );
    assert!(
        dpo.contains("[default: 3]")
            && rm.contains(
                "Passes over the training data, when --max-steps is not given [default: 1]"
            )
    );
    for h in [&rm, &dpo] {
        assert!(h.contains("--model <MODEL>\n          The starting checkpoint (an HF Llama folder) [required unless --resume or --config gives it]"), "{h}");
        assert!(!h.contains("--stop-after"), "{h}");
        assert_eq!(h.matches("[default: auto]").count(), 1, "{h}");
    }
    for dpo_only in [
        "--loss",
        "--beta",
        "--label-smoothing",
        "--simpo-gamma",
        "--ref-cache-dir",
    ] {
        assert!(!rm.contains(dpo_only), "rm --help shows {dpo_only}");
        assert!(dpo.contains(dpo_only), "dpo --help lacks {dpo_only}");
    }
    assert!(dpo.contains("DPO: β [default: 0.1]"), "{dpo}");
    // The shared run options in each trainer's words: steps offline, iterations in RL.
    let ppo = help(&["ppo", "--help"]);
    for h in [&rm, &dpo] {
        assert!(!h.contains("ppo:") && !h.contains("iteration"), "{h}");
    }
    assert!(
        ppo.contains("Write a resumable checkpoint every N iterations")
            && ppo.contains("Passes over the prompts"),
        "{ppo}"
    );
    let init = help(&["init", "--help"]);
    assert!(
        init.contains("tiny, llama-134m or llama-1b [required]"),
        "{init}"
    );
    assert!(
        init.contains("Seed of the random weights [default: 0]"),
        "{init}"
    );
}

#[test]
fn logs_metrics_and_configs_read_as_users_expect() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    base_and_data(root, 32);
    // stderr is a pipe here, not a terminal: plain progress lines every --log-every steps.
    let o = relative_run(root, "run", &["--log-every", "2"]);
    let e = stderr_of(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("step 2/4: loss "), "{e}");
    assert!(e.contains("step 4/4: loss "), "{e}");
    assert!(!e.contains("step 1/4: loss "), "{e}");
    // TRL's metric names beside the short ones.
    let first = std::fs::read_to_string(root.join("run/metrics.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    // One numbering for both logs: steps done. Evaluation before training is step 0.
    assert_eq!(row["step"], 1, "{row}");
    let evals = std::fs::read_to_string(root.join("run/eval.jsonl")).unwrap();
    let steps: Vec<u64> = evals
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![0, 4]);
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "learning_rate",
        "loss",
    ] {
        assert!(row.get(key).is_some(), "no {key} in {row}");
    }
    // A plot of the run (title, legend and axis labels are checked by eye; see the README).
    let png = std::fs::metadata(root.join("run/curves.png")).unwrap();
    assert!(png.len() > 5_000, "curves.png is {} bytes", png.len());
    // f32 fields in their shortest form.
    let cfg = std::fs::read_to_string(root.join("run/config.json")).unwrap();
    assert!(cfg.contains("\"initializer_range\": 0.02"), "{cfg}");
    assert!(!cfg.contains("0.0199999"), "{cfg}");
}

#[test]
fn check_bench_and_info_say_the_same_thing_without_a_gpu() {
    let info = prefer()
        .args(["info"])
        .env_remove("PREFER_DEVICE")
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    let Some(reason) = info
        .lines()
        .find_map(|l| l.strip_prefix("gpu: not usable: "))
    else {
        eprintln!("skipped: a GPU is usable here, so there is no no-GPU message to compare");
        return;
    };
    assert!(reason.contains("--device emu"), "{reason}");
    for args in [&["check"][..], &["bench", "kernels"], &["bench", "train"]] {
        let o = prefer()
            .args(args)
            .env_remove("PREFER_DEVICE")
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert_eq!(
            String::from_utf8_lossy(&o.stderr).trim(),
            format!("error: {reason}"),
            "prefer {args:?}"
        );
    }
}

#[test]
fn the_134m_preset_is_named_for_its_parameter_count() {
    use prefer::model::{LlamaConfig, ParamLayout};
    let millions = |name: &str| {
        (ParamLayout::new(&LlamaConfig::preset(name).unwrap()).len as f64 / 1e6).round() as usize
    };
    assert_eq!(millions("llama-134m"), 134);
    // DESIGN.md's name for T2 still works, for the same model.
    assert_eq!(millions("llama-124m"), 134);
}
