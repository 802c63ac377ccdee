//! The offline trainers on the CPU, tiny preset, the built-in synthetic task: they learn, step 0
//! has the known loss, resuming is bitwise exact, and run configs merge as documented.

use prefer::cmd::init::{run_init, InitOptions};
use prefer::data::synthetic::synthetic_preferences;
use prefer::model::weights::SaveDtype;
use prefer::train::TrainerArgs;
use prefer::train::{run_training, TrainArgs, TrainerKind};
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn setup(train_pairs: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let opts = InitOptions {
        seed: 11,
        scalar_head: false,
        dtype: SaveDtype::F32,
        layers: None,
        init_std: None,
        vocab_size: None,
        overwrite: false,
    };
    run_init("tiny", &root.join("base"), &opts).unwrap();
    std::fs::write(
        root.join("train.jsonl"),
        synthetic_preferences(train_pairs, 5),
    )
    .unwrap();
    // Held out: another seed, so new combinations of topics and words.
    std::fs::write(root.join("eval.jsonl"), synthetic_preferences(128, 99)).unwrap();
    Setup { _dir: dir, root }
}

fn args(s: &Setup, out: &str, lr: f32) -> TrainArgs {
    TrainArgs {
        model: Some(s.root.join("base")),
        data: Some(s.root.join("train.jsonl")),
        eval_data: Some(s.root.join("eval.jsonl")),
        batch_size: Some(16),
        grad_accum: Some(1),
        ref_cache_dir: Some(s.root.join("cache")),
        run: prefer::train::RunArgs {
            out: Some(s.root.join(out)),
            lr: Some(lr),
            epochs: Some(2),
            warmup_ratio: Some(0.1),
            ..prefer::train::RunArgs::default()
        },
        ..Default::default()
    }
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn reward_model_learns_the_synthetic_task() {
    let s = setup(512);
    let t0 = Instant::now();
    let summary = run_training(args(&s, "rm", 3e-3), TrainerKind::RewardModel).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let acc = summary.final_eval_accuracy.unwrap();
    assert!(acc >= 0.9, "held-out pairwise accuracy {acc}");
    assert!(secs < 60.0, "took {secs:.1} s");
    // A new zero-initialised scalar head gives r = 0 for every sequence: loss ln 2 at step 0.
    let m = metrics(&s.root.join("rm"));
    assert!(
        (m[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-4,
        "{}",
        m[0]
    );
    // The saved reward model is a sequence classifier.
    let cfg = std::fs::read_to_string(s.root.join("rm/config.json")).unwrap();
    assert!(cfg.contains("LlamaForSequenceClassification"));
    let eval = prefer::train::evaluate_reward_model(
        &s.root.join("rm"),
        &s.root.join("eval.jsonl"),
        32,
        prefer::cmd::Device::Cpu,
        false,
    )
    .unwrap();
    assert!((eval.overall.accuracy() - acc).abs() < 1e-9);
    assert!(eval.subsets.is_none());
}

#[test]
fn dpo_learns_the_synthetic_task_and_reuses_its_reference() {
    let s = setup(512);
    let t0 = Instant::now();
    let summary = run_training(args(&s, "dpo", 2e-3), TrainerKind::Dpo).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let acc = summary.final_eval_accuracy.unwrap();
    assert!(acc >= 0.9, "held-out implicit-reward accuracy {acc}");
    assert!(secs < 60.0, "took {secs:.1} s");
    // Policy = reference at step 0: h = 0, sigmoid loss = −log σ(0) = ln 2.
    let m = metrics(&s.root.join("dpo"));
    assert!(
        (m[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-4,
        "{}",
        m[0]
    );
    for key in ["step", "loss", "accuracy", "margin", "lr", "tokens_per_s"] {
        assert!(m[3].get(key).is_some(), "metrics.jsonl lacks {key}");
    }
    assert!(s.root.join("dpo/curves.png").exists());
    // Reference log-probs were cached for train and eval, keyed by model and data; a second run
    // reads them rather than computing them again.
    let cached: Vec<_> = std::fs::read_dir(s.root.join("cache")).unwrap().collect();
    assert_eq!(cached.len(), 2);
    let mut again = args(&s, "dpo2", 2e-3);
    again.run.max_steps = Some(1);
    run_training(again, TrainerKind::Dpo).unwrap();
    assert_eq!(std::fs::read_dir(s.root.join("cache")).unwrap().count(), 2);
}

#[test]
fn resumed_run_ends_bitwise_identical() {
    let s = setup(96);
    let run = |out: &str, stop_after: Option<usize>, resume: bool| {
        let mut a = args(&s, out, 1e-3);
        a.grad_accum = Some(2); // 3 micro-batches per epoch: steps straddle epochs
        a.batch_size = Some(16);
        a.run.epochs = Some(3);
        a.run.save_every = Some(2);
        a.eval_every = Some(1);
        a.run.stop_after = stop_after;
        if resume {
            a = TrainArgs {
                run: prefer::train::RunArgs {
                    resume: Some(s.root.join(out)),
                    ..prefer::train::RunArgs::default()
                },
                ..Default::default()
            };
        }
        run_training(a, TrainerKind::Dpo).unwrap()
    };
    let straight = run("straight", None, false);
    let stopped = run("resumed", Some(5), false);
    assert!(stopped.stopped_early && !s.root.join("resumed/model.safetensors").exists());
    let resumed = run("resumed", None, true);
    assert_eq!(straight.steps, resumed.steps);
    let weights = |out: &str| std::fs::read(s.root.join(out).join("model.safetensors")).unwrap();
    assert!(
        weights("straight") == weights("resumed"),
        "resumed weights differ from the uninterrupted run's"
    );
    // The metrics of the steps after the checkpoint were rewritten, not duplicated.
    let (a, b) = (
        metrics(&s.root.join("straight")),
        metrics(&s.root.join("resumed")),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["loss"], y["loss"]);
    }
    // So were the held-out evaluations: one row per step, none lost at the checkpoint.
    let evals = |out: &str| std::fs::read_to_string(s.root.join(out).join("eval.jsonl")).unwrap();
    assert_eq!(evals("straight"), evals("resumed"));
}

#[test]
fn config_file_fills_what_flags_leave_unset() {
    let s = setup(32);
    let toml = format!(
        "model = {:?}\ndata = {:?}\nout = {:?}\nlr = 0.5\nmax-steps = 2\nbatch-size = 4\nbeta = 0.3\n",
        s.root.join("base"),
        s.root.join("train.jsonl"),
        s.root.join("from-file")
    );
    std::fs::write(s.root.join("run.toml"), toml).unwrap();
    let flags = TrainArgs {
        run: prefer::train::RunArgs {
            config: Some(s.root.join("run.toml")),
            lr: Some(1e-4),
            ..prefer::train::RunArgs::default()
        },
        ..Default::default()
    };
    let merged = flags.with_files().unwrap();
    let opts = merged.resolve(TrainerKind::Dpo).unwrap();
    assert_eq!(
        (
            opts.run.lr,
            opts.run.max_steps,
            opts.batch_size,
            opts.dpo.unwrap().config.beta
        ),
        (1e-4, Some(2), 4, 0.3)
    );
    assert_eq!(opts.grad_accum, 4, "unset everywhere: the default");
    std::fs::write(s.root.join("bad.toml"), "learning-rate = 3\n").unwrap();
    let bad = TrainArgs {
        run: prefer::train::RunArgs {
            config: Some(s.root.join("bad.toml")),
            ..prefer::train::RunArgs::default()
        },
        ..Default::default()
    };
    let err = format!("{:#}", bad.with_files().unwrap_err());
    assert!(
        err.contains("bad.toml") && err.contains("learning-rate"),
        "{err}"
    );
}

#[test]
fn a_loss_that_stops_being_finite_ends_the_run_naming_the_step() {
    // An absurd learning rate blows the weights up within a few steps. Metrics are read when the
    // loop logs (every 4 steps here), and the first non-finite loss read ends the run there.
    let s = setup(64);
    let mut a = args(&s, "nan", 1e30);
    a.eval_data = None;
    a.run.device = Some(prefer::cmd::Device::Cpu);
    a.run.max_grad_norm = Some(0.0);
    a.run.warmup_ratio = Some(0.0);
    a.run.log_every = Some(4);
    let err = run_training(a, TrainerKind::Dpo).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("(not finite)"), "{msg}");
    assert!(msg.starts_with("step "), "{msg}");
    // Nothing was saved before the blow-up (--save-every 500): the message names no checkpoint
    // folder that does not exist.
    assert!(msg.contains("no checkpoint was saved before it"), "{msg}");
    assert!(!s.root.join("nan/checkpoint").exists());
    // The rows before the bad step were written, each finite.
    let rows = metrics(&s.root.join("nan"));
    let bad_step: usize = msg["step ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rows.len(), bad_step - 1, "{msg}");
    assert!(rows.iter().all(|r| r["loss"].as_f64().unwrap().is_finite()));
}
