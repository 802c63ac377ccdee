//! prefer against numbers TRL produced: tests/reference/trl_parity.py ran TRL 1.16 (DPO with the
//! sigmoid loss, TRL's IPO, and a reward model) on the CPU in f32 on tests/fixtures/hf-tiny and
//! tests/fixtures/trl/prefs.jsonl, and wrote every step's loss, gradient norm, learning rate and
//! metrics, and a few final weights, to tests/fixtures/trl/parity.json. Here `prefer dpo` and
//! `prefer rm` run on the CPU with the same options (the fixture's "options", as flags) and must
//! agree step by step.
//!
//! Tolerance: 1e-4 relative (+ 1e-6 absolute, for values that are 0 at the first steps). Both
//! sides are f32 with different summation orders (prefer's matmul blocks, torch's kernels), which
//! leaves ~1e-6 relative per step that eight AdamW steps grow to ~1e-5; a real difference in the
//! recipe (the warm-up's first rate, the norm gains' weight decay, the averaging, the tokenisation
//! of the raw strings) moves these numbers by 1e-3 or more.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-6;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> Value {
    let path = root().join("tests/fixtures/trl/parity.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn close(what: &str, got: f64, want: f64) {
    let tol = RTOL * got.abs().max(want.abs()) + ATOL;
    assert!(
        (got - want).abs() <= tol,
        "{what}: prefer {got} vs TRL {want} (|diff| {:.3e} > tol {tol:.3e})",
        (got - want).abs()
    );
}

/// Runs the case's command with its options as flags; returns the run folder.
fn run_prefer(case: &Value, tmp: &Path) -> PathBuf {
    let name = case["name"].as_str().unwrap();
    let out = tmp.join(name);
    let fixtures = root().join("tests/fixtures");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prefer"));
    cmd.arg(case["command"].as_str().unwrap())
        .args(["--device", "cpu", "--log-every", "1", "--seed", "0"])
        .arg("--model")
        .arg(fixtures.join("hf-tiny"))
        .arg("--data")
        .arg(fixtures.join("trl/prefs.jsonl"))
        .arg("--out")
        .arg(&out);
    if case["command"] == "dpo" {
        cmd.arg("--ref-cache-dir").arg(tmp.join("cache"));
    }
    for (flag, value) in case["options"].as_object().unwrap() {
        let value = match value {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        cmd.arg(format!("--{flag}")).arg(value);
    }
    let result = cmd.output().unwrap();
    assert!(
        result.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

fn metrics(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Compares every step's `keys` (TRL's name, prefer's name).
fn compare_steps(case: &Value, rows: &[Value], keys: &[(&str, &str)]) {
    let name = case["name"].as_str().unwrap();
    let steps = case["steps"].as_array().unwrap();
    assert_eq!(rows.len(), steps.len(), "{name}: steps");
    for (i, (trl, ours)) in steps.iter().zip(rows).enumerate() {
        for (trl_key, our_key) in keys {
            let want = trl[*trl_key].as_f64().unwrap();
            let got = ours[*our_key]
                .as_f64()
                .unwrap_or_else(|| panic!("{name} step {}: no {our_key} in {ours}", i + 1));
            close(&format!("{name} step {} {our_key}", i + 1), got, want);
        }
    }
}

/// The recorded weights: the first values and the L2 norm of each named tensor.
fn compare_weights(case: &Value, out: &Path) {
    let name = case["name"].as_str().unwrap();
    let (cfg, params) = prefer::model::weights::load_checkpoint(out).unwrap();
    let layout = prefer::model::ParamLayout::new(&cfg);
    for (tensor, want) in case["final_weights"].as_object().unwrap() {
        let slot = layout.slot(tensor).unwrap_or_else(|| panic!("{tensor}"));
        let values = &params[slot.range.clone()];
        let l2 = values
            .iter()
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        close(
            &format!("{name} {tensor} L2"),
            l2,
            want["l2"].as_f64().unwrap(),
        );
        for (j, w) in want["first"].as_array().unwrap().iter().enumerate() {
            close(
                &format!("{name} {tensor}[{j}]"),
                values[j] as f64,
                w.as_f64().unwrap(),
            );
        }
    }
}

fn case(name: &str) -> Value {
    fixture()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
        .clone()
}

const SCHEDULE: [(&str, &str); 3] = [
    ("loss", "loss"),
    ("grad_norm", "grad_norm"),
    ("learning_rate", "learning_rate"),
];

#[test]
fn dpo_matches_trl_step_by_step() {
    let tmp = tempfile::tempdir().unwrap();
    let c = case("dpo-sigmoid");
    let out = run_prefer(&c, tmp.path());
    let rows = metrics(&out);
    let mut keys = SCHEDULE.to_vec();
    for k in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ] {
        keys.push((k, k));
    }
    compare_steps(&c, &rows, &keys);
    compare_weights(&c, &out);
    // The warm-up's first step has a rate of 0, as transformers': the second step starts from
    // the same weights, so it has the same loss.
    assert_eq!(rows[0]["learning_rate"].as_f64(), Some(0.0));
    assert_eq!(rows[0]["loss"], rows[1]["loss"]);
}

#[test]
fn trl_ipo_is_ipo_on_averaged_logprobs() {
    // TRL logs IPO's rewards from summed log-ratios while the loss averages them; prefer's
    // rewards follow the loss's means, so only the loss, norm and rate are compared per step,
    // and the weights that result.
    let tmp = tempfile::tempdir().unwrap();
    let c = case("trl-ipo");
    let out = run_prefer(&c, tmp.path());
    compare_steps(&c, &metrics(&out), &SCHEDULE);
    compare_weights(&c, &out);
}

#[test]
fn reward_model_matches_trl_step_by_step() {
    let tmp = tempfile::tempdir().unwrap();
    let c = case("reward-model");
    let out = run_prefer(&c, tmp.path());
    let mut keys = SCHEDULE.to_vec();
    keys.extend([("accuracy", "accuracy"), ("margin", "margin")]);
    compare_steps(&c, &metrics(&out), &keys);
    compare_weights(&c, &out);
}

fn prefer(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_prefer"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_options_that_differ_from_trl_say_so() {
    // prefer rm --help states the zero-initialised head and how TRL's differs.
    let (ok, help) = prefer(&["rm", "--help"]);
    assert!(ok, "{help}");
    assert!(
        help.contains("starts at zero") && help.contains("initializer_range"),
        "{help}"
    );
    assert!(help.contains("--chat-template"), "{help}");
    assert!(
        !help.contains("--average-logps"),
        "a DPO option in rm's help: {help}"
    );
    let (_, help) = prefer(&["dpo", "--help"]);
    assert!(
        help.contains("--average-logps") && help.contains("TRL's IPO"),
        "{help}"
    );
    // --average-logps is a DPO option, and SimPO is defined on averages.
    let (ok, err) = prefer(&["rm", "--average-logps"]);
    assert!(
        !ok && err.contains("--average-logps are DPO options"),
        "{err}"
    );
    let (ok, err) = prefer(&["dpo", "--loss", "simpo", "--average-logps", "false"]);
    assert!(
        !ok && err.contains("--loss simpo is defined on averaged log-probs"),
        "{err}"
    );
}
