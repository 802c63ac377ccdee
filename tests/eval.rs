//! `prefer eval --task gsm8k` and `prefer eval-rm` on RewardBench's format, as a user runs them:
//! the scorers on answers whose right result is known, and Best-of-N end to end on tiny models on
//! the CPU and the software GPU.

mod common;
use common::{path_arg as s, prefer_output as prefer};

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Output;

fn ok(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

fn gsm8k_rows(path: &Path) {
    write_lines(
        path,
        &[
            json!({"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}),
            json!({"question": "What is 10 - 2?", "answer": "#### 8"}),
            json!({"question": "What do 1,000 pens at $2 cost?", "answer": "#### 2,000"}),
            json!({"question": "How far below zero?", "answer": "#### -3"}),
        ],
    );
}

#[test]
fn gsm8k_scores_given_responses_as_the_harness_does() {
    let dir = tempfile::tempdir().unwrap();
    let (data, resp, out) = (
        dir.path().join("gsm.jsonl"),
        dir.path().join("resp.jsonl"),
        dir.path().join("out"),
    );
    gsm8k_rows(&data);
    write_lines(
        &resp,
        &[
            json!({"response": "3 + 4 = 7. So the answer is 7."}),
            json!({"response": "The answer is 9"}),
            json!({"response": "So the answer is $2,000."}),
            json!({"response": "It is -3 degrees."}),
        ],
    );
    let got = ok(&prefer(&[
        "eval",
        "--task",
        "gsm8k",
        "--data",
        s(&data),
        "--responses",
        s(&resp),
        "--out",
        s(&out),
    ]));
    assert_eq!(got["accuracy"], 0.75);
    assert_eq!(got["correct"], 3);
    assert_eq!(got["rows"], 4);
    let [lo, hi] = [
        got["accuracy_ci95"][0].as_f64().unwrap(),
        got["accuracy_ci95"][1].as_f64().unwrap(),
    ];
    assert!(lo < 0.75 && 0.75 < hi, "{lo} {hi}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary, got);
    let lines: Vec<Value> = std::fs::read_to_string(out.join("completions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[2]["completions"][0]["extracted"], "2000");
    assert_eq!(lines[1]["completions"][0]["correct"], false);
    assert_eq!(lines[3]["gold"], "-3");

    // K answers a row: majority vote; with rewards, Best-of-N beside a random one and pass@N.
    write_lines(
        &resp,
        &[
            json!({"response": ["is 7", "is 6", "is 7", "none"], "rewards": [0.1, 0.9, 0.2, 0.0]}),
            json!({"response": ["is 9", "is 8", "is 9", "is 1"], "rewards": [0.0, 1.0, 0.0, 0.0]}),
            json!({"response": ["2000", "3", "4", "5"], "rewards": [0.0, 0.0, 0.0, 1.0]}),
            json!({"response": ["-3", "-3", "3", "3"], "rewards": [0.5, 0.5, 0.9, 0.1]}),
        ],
    );
    let vote = ok(&prefer(&[
        "eval",
        "--task",
        "gsm8k",
        "--data",
        s(&data),
        "--responses",
        s(&resp),
    ]));
    // 7 (two votes), 9 (two votes), 2000 (the earliest of four singles), -3 (the earliest of two ties).
    assert_eq!(
        (vote["accuracy"].clone(), vote["n"].clone()),
        (json!(0.75), json!(4))
    );
    let best = ok(&prefer(&[
        "eval",
        "--task",
        "gsm8k",
        "--data",
        s(&data),
        "--responses",
        s(&resp),
        "--best-of",
        "4",
    ]));
    // The RM picks 6 (wrong), 8 (right), 5 (wrong), 3 (wrong); the first answers: 7, 9, 2000, -3.
    assert_eq!(best["accuracy"], 0.25);
    assert_eq!(best["random_accuracy"], 0.75);
    assert_eq!(best["oracle_accuracy"], 1.0);
    assert_eq!(best["best_of"], 4);
}

#[test]
fn gsm8k_bad_input_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (data, resp) = (dir.path().join("gsm.jsonl"), dir.path().join("resp.jsonl"));
    write_lines(&data, &[json!({"question": "q", "answer": "4"})]);
    write_lines(&resp, &[json!({"response": "4"})]);
    let out = prefer(&[
        "eval",
        "--task",
        "gsm8k",
        "--data",
        s(&data),
        "--responses",
        s(&resp),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("gsm.jsonl:1") && err.contains("#### N"),
        "{err}"
    );
    write_lines(
        &data,
        &[
            json!({"question": "q", "answer": "#### 4"}),
            json!({"answer": "#### 4"}),
        ],
    );
    let out = prefer(&[
        "eval",
        "--task",
        "gsm8k",
        "--data",
        s(&data),
        "--responses",
        s(&resp),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gsm.jsonl:2") && err.contains("no \"question\""),
        "{err}"
    );
    gsm8k_rows(&data);
    let out = prefer(&[
        "eval",
        "--task",
        "gsm8k",
        "--data",
        s(&data),
        "--responses",
        s(&resp),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 responses for 4 rows"), "{err}");
    write_lines(&resp, &vec![json!({"response": ["1", "2"]}); 4]);
    let out = prefer(&[
        "eval",
        "--task",
        "gsm8k",
        "--data",
        s(&data),
        "--responses",
        s(&resp),
        "--best-of",
        "2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"rewards\""), "{err}");
    // --out: never a folder of the user's, nor a file; an earlier evaluation's folder is fine.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("summary.json"), "my own notes").unwrap();
    std::fs::write(mine.join("paper.tex"), "x").unwrap();
    write_lines(&resp, &vec![json!({"response": "4"}); 4]);
    let args = [
        "eval",
        "--task",
        "gsm8k",
        "--data",
        s(&data),
        "--responses",
        s(&resp),
        "--out",
    ];
    let out = prefer(&[&args[..], &[s(&mine)]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("holds files an evaluation did not write"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("summary.json")).unwrap(),
        "my own notes"
    );
    let out = prefer(&[&args[..], &[s(&data)]].concat());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a file"));
    let again = dir.path().join("again");
    for _ in 0..2 {
        let out = prefer(&[&args[..], &[s(&again)]].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = prefer(&["eval", "--task", "gsm8k", "--data", s(&data)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give --model"), "{err}");
}

fn best_of_4_on_tiny(device: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, extra) in [("policy", None), ("rm", Some("--scalar-head"))] {
        let mut args = vec!["init", "--preset", "tiny", "--out"];
        let path = d.join(name);
        args.push(s(&path));
        args.extend(extra);
        let out = prefer(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let data = d.join("gsm.jsonl");
    gsm8k_rows(&data);
    let out_dir = d.join("out");
    let got = ok(&prefer(&[
        "eval",
        "--task",
        "gsm8k",
        "--data",
        s(&data),
        "--model",
        s(&d.join("policy")),
        "--best-of",
        "4",
        "--reward-model",
        s(&d.join("rm")),
        "--shots",
        "2",
        "--max-new-tokens",
        "8",
        "--device",
        device,
        "--out",
        s(&out_dir),
    ]));
    assert_eq!(
        (got["rows"].clone(), got["best_of"].clone()),
        (json!(4), json!(4))
    );
    assert_eq!(got["shots"], 2);
    assert_eq!(got["generation"]["temperature"], 1.0);
    for key in ["accuracy", "random_accuracy", "oracle_accuracy"] {
        let v = got[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }
    let lines: Vec<Value> = std::fs::read_to_string(out_dir.join("completions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for l in &lines {
        let c = l["completions"].as_array().unwrap();
        assert_eq!(c.len(), 4);
        assert!(c
            .iter()
            .all(|x| x["reward"].as_f64().is_some_and(f64::is_finite)));
    }
    // Scoring what was written, with its rewards, gives the same figures.
    let resp = d.join("resp.jsonl");
    let again: Vec<Value> = lines
        .iter()
        .map(|l| {
            let c = l["completions"].as_array().unwrap();
            json!({
                "response": c.iter().map(|x| x["response"].clone()).collect::<Vec<_>>(),
                "rewards": c.iter().map(|x| x["reward"].clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    write_lines(&resp, &again);
    let rescored = ok(&prefer(&[
        "eval",
        "--task",
        "gsm8k",
        "--data",
        s(&data),
        "--responses",
        s(&resp),
        "--best-of",
        "4",
    ]));
    for key in ["accuracy", "random_accuracy", "oracle_accuracy"] {
        assert_eq!(rescored[key], got[key], "{key}");
    }
}

#[test]
fn gsm8k_best_of_4_runs_end_to_end_on_tiny_on_the_cpu() {
    best_of_4_on_tiny("cpu");
}

#[test]
fn gsm8k_best_of_4_runs_end_to_end_on_tiny_on_the_software_gpu() {
    if !common::emu_available() {
        return;
    }
    best_of_4_on_tiny("emu");
}

#[test]
fn eval_rm_reports_rewardbench_sections_on_its_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rm = d.join("rm");
    assert!(
        prefer(&["init", "--preset", "tiny", "--out", s(&rm), "--scalar-head"])
            .status
            .success()
    );
    // Each pair twice, the second time swapped: exactly one of the two is right unless they tie,
    // so every subset's accuracy is 1/2 and every score too, whatever the untrained model says.
    let subsets = [
        "alpacaeval-easy",
        "llmbar-natural",
        "donotanswer",
        "math-prm",
        "hep-go",
        "shp",
        "mine",
    ];
    let mut lines = Vec::new();
    for (i, sub) in subsets.iter().enumerate() {
        let (a, b) = (format!("a fine answer number {i}"), format!("no {}", i * 7));
        lines.push(
            json!({"prompt": format!("question {i}"), "chosen": a, "rejected": b, "subset": sub}),
        );
        lines.push(
            json!({"prompt": format!("question {i}"), "chosen": b, "rejected": a, "subset": sub}),
        );
    }
    let data = d.join("rb.jsonl");
    write_lines(&data, &lines);
    let json_out = d.join("report.json");
    let got = ok(&prefer(&[
        "eval-rm",
        "--model",
        s(&rm),
        "--data",
        s(&data),
        "--device",
        "cpu",
        "--json",
        s(&json_out),
    ]));
    assert_eq!(got["pairs"], 14);
    for sub in subsets {
        assert_eq!(got["subsets"][sub]["accuracy"], 0.5, "{sub}");
    }
    for section in ["Chat", "Chat Hard", "Safety", "Reasoning"] {
        assert_eq!(got["sections"][section], 0.5, "{section}");
    }
    assert_eq!(got["score"], 0.5);
    assert_eq!(got["prior_sets"], 0.5);
    assert_eq!(got["score_with_prior_sets"], 0.5);
    assert_eq!(got["unscored_subsets"], json!(["mine"]));
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    assert_eq!(written, got);
    // A file without subsets keeps the single accuracy.
    let plain: Vec<Value> = lines
        .iter()
        .map(|l| json!({"prompt": l["prompt"], "chosen": l["chosen"], "rejected": l["rejected"]}))
        .collect();
    write_lines(&data, &plain);
    let got = ok(&prefer(&[
        "eval-rm",
        "--model",
        s(&rm),
        "--data",
        s(&data),
        "--device",
        "cpu",
    ]));
    assert_eq!(got["accuracy"], 0.5);
    assert!(got.get("sections").is_none());
}

#[test]
fn winrate_counts_ties_as_half_and_judges_each_answer_against_its_reference() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rm = d.join("rm");
    assert!(
        prefer(&["init", "--preset", "tiny", "--out", s(&rm), "--scalar-head"])
            .status
            .success()
    );
    let policy = d.join("policy");
    assert!(prefer(&["init", "--preset", "tiny", "--out", s(&policy)])
        .status
        .success());
    let refs = [
        ("Say hi", "Hello there!"),
        ("Name a fruit", "An apple."),
        ("Count to 3", "1 2 3"),
    ];
    let data = d.join("alpaca_eval.jsonl");
    write_lines(
        &data,
        &refs
            .iter()
            .map(|(q, a)| json!({"instruction": q, "output": a, "generator": "gpt4_turbo"}))
            .collect::<Vec<_>>(),
    );
    // Answers equal to the references: every judgement a tie, so exactly one half, with or
    // without length control (AlpacaEval's model_outputs use "output").
    let same = d.join("same.jsonl");
    write_lines(
        &same,
        &refs
            .iter()
            .map(|(_, a)| json!({"output": a}))
            .collect::<Vec<_>>(),
    );
    let got = ok(&prefer(&[
        "eval",
        "--task",
        "winrate",
        "--data",
        s(&data),
        "--responses",
        s(&same),
        "--reward-model",
        s(&rm),
        "--device",
        "cpu",
    ]));
    assert_eq!(
        (got["win_rate"].clone(), got["ties"].clone()),
        (json!(0.5), json!(3))
    );
    assert!((got["length_controlled_win_rate"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    // Other answers: each win is the judge's reward above the reference's, as written out.
    let other = d.join("other.jsonl");
    write_lines(
        &other,
        &[
            json!({"response": "Hi!"}),
            json!({"response": "Banana"}),
            json!({"response": "one two three"}),
        ],
    );
    let out = d.join("out");
    let got = ok(&prefer(&[
        "eval",
        "--task",
        "winrate",
        "--data",
        s(&data),
        "--responses",
        s(&other),
        "--reward-model",
        s(&rm),
        "--device",
        "cpu",
        "--out",
        s(&out),
    ]));
    let lines: Vec<Value> = std::fs::read_to_string(out.join("completions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let wins: f64 = lines
        .iter()
        .map(|l| {
            let c = &l["completions"][0];
            let (r, rr) = (
                c["reward"].as_f64().unwrap(),
                c["reference_reward"].as_f64().unwrap(),
            );
            assert_eq!(
                c["win"].as_f64().unwrap(),
                if r > rr {
                    1.0
                } else if r == rr {
                    0.5
                } else {
                    0.0
                }
            );
            c["win"].as_f64().unwrap()
        })
        .sum();
    assert_eq!(got["win_rate"].as_f64().unwrap(), wins / 3.0);
    let lc = got["length_controlled_win_rate"].as_f64().unwrap();
    assert!(lc > 0.0 && lc < 1.0, "{lc}");
    // Best-of-N end to end on tiny: the judge picks among the policy's own samples.
    let got = ok(&prefer(&[
        "eval",
        "--task",
        "winrate",
        "--data",
        s(&data),
        "--model",
        s(&policy),
        "--best-of",
        "3",
        "--reward-model",
        s(&rm),
        "--device",
        "cpu",
        "--max-new-tokens",
        "12",
    ]));
    let (w, r, o) = (
        got["win_rate"].as_f64().unwrap(),
        got["random_win_rate"].as_f64().unwrap(),
        got["oracle_win_rate"].as_f64().unwrap(),
    );
    assert!(
        o >= w && o >= r,
        "the oracle is at least the pick and the first: {got}"
    );
    // The judge is required.
    let no_judge = prefer(&[
        "eval",
        "--task",
        "winrate",
        "--data",
        s(&data),
        "--responses",
        s(&same),
    ]);
    assert!(String::from_utf8_lossy(&no_judge.stderr).contains("give --reward-model"));
}

/// IFEval rows in google/IFEval's shape (every kwargs key present, most null, as its parquet).
fn ifeval_rows(path: &Path) {
    let kw = |set: Value| {
        let mut all = json!({"num_words": null, "relation": null, "keywords": null,
                             "num_highlights": null, "end_phrase": null});
        for (k, v) in set.as_object().unwrap() {
            all[k] = v.clone();
        }
        all
    };
    write_lines(
        path,
        &[
            json!({"key": 1, "prompt": "Describe a river in fewer than 40 words.",
                   "instruction_id_list": ["length_constraints:number_words"],
                   "kwargs": [kw(json!({"num_words": 40, "relation": "less than"}))]}),
            json!({"key": 2, "prompt": "Write about cats without commas, highlighting one part.",
                   "instruction_id_list": ["punctuation:no_comma", "detectable_format:number_highlighted_sections"],
                   "kwargs": [kw(json!({})), kw(json!({"num_highlights": 1}))]}),
            json!({"key": 3, "prompt": "Say hello and end with 'Bye.'",
                   "instruction_id_list": ["startend:end_checker"],
                   "kwargs": [kw(json!({"end_phrase": "Bye."}))]}),
        ],
    );
}

#[test]
fn ifeval_scores_given_responses_with_the_harness_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("ifeval.jsonl");
    ifeval_rows(&data);
    let resp = d.join("resp.jsonl");
    write_lines(
        &resp,
        &[
            json!({"response": "A river runs to the sea."}),
            // The comma fails strictly; without the first line it passes; the highlight passes.
            json!({"response": "Sure, here it is:\nCats *sleep* a lot"}),
            json!({"response": "Hello. Bye."}),
        ],
    );
    let got = ok(&prefer(&[
        "eval",
        "--task",
        "ifeval",
        "--data",
        s(&data),
        "--responses",
        s(&resp),
    ]));
    assert_eq!(got["rows"], 3);
    assert_eq!(got["instructions"], 4);
    assert_eq!(got["prompt_level_strict_acc"], 2.0 / 3.0);
    assert_eq!(got["inst_level_strict_acc"], 3.0 / 4.0);
    assert_eq!(got["prompt_level_loose_acc"], 1.0);
    assert_eq!(got["inst_level_loose_acc"], 1.0);
    // A bad row names the file, the line and what is wrong.
    let bad = d.join("bad.jsonl");
    write_lines(
        &bad,
        &[
            json!({"prompt": "x", "instruction_id_list": ["keywords:frequency"],
                 "kwargs": [{"keyword": "a", "relation": "at least"}]}),
        ],
    );
    let out = prefer(&[
        "eval",
        "--task",
        "ifeval",
        "--data",
        s(&bad),
        "--responses",
        s(&resp),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.jsonl:1") && err.contains("\"frequency\""),
        "{err}"
    );
}

#[test]
fn ifeval_best_of_2_runs_end_to_end_on_tiny_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, extra) in [("policy", None), ("rm", Some("--scalar-head"))] {
        let path = d.join(name);
        let mut args = vec!["init", "--preset", "tiny", "--out", s(&path)];
        args.extend(extra);
        ok_status(&prefer(&args));
    }
    let data = d.join("ifeval.jsonl");
    ifeval_rows(&data);
    let out_dir = d.join("out");
    let got = ok(&prefer(&[
        "eval",
        "--task",
        "ifeval",
        "--data",
        s(&data),
        "--model",
        s(&d.join("policy")),
        "--best-of",
        "2",
        "--reward-model",
        s(&d.join("rm")),
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
        "--out",
        s(&out_dir),
    ]));
    assert_eq!(
        (got["rows"].clone(), got["best_of"].clone()),
        (json!(3), json!(2))
    );
    for key in [
        "prompt_level_strict_acc",
        "inst_level_loose_acc",
        "random_prompt_level_strict_acc",
        "oracle_inst_level_strict_acc",
    ] {
        let v = got[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }
    // The oracle is at least as good as the random pick, on every figure.
    for key in ["prompt_level_strict_acc", "inst_level_strict_acc"] {
        assert!(got[format!("oracle_{key}")].as_f64() >= got[format!("random_{key}")].as_f64());
    }
    let lines = std::fs::read_to_string(out_dir.join("completions.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
    for l in lines.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let c = v["completions"].as_array().unwrap();
        assert_eq!(c.len(), 2);
        assert!(c
            .iter()
            .all(|x| x["strict"].is_array() && x["reward"].is_number()));
    }
}

fn ok_status(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn eval_rows(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("eval_seconds");
            v
        })
        .collect()
}

/// IFEval's four figures, as `prefer eval` names them (PPO's eval.jsonl prefixes `eval_ifeval_`).
const IFEVAL_FIGURES: [&str; 4] = [
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
];

/// The committed IFEval rows (tests/fixtures/ifeval/rows.jsonl).
fn ifeval_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ifeval/rows.jsonl")
}

/// In `d`: a tiny policy with large random weights (which answers with varied text; a small init
/// answers blank lines, which follow nothing, so every figure would be zero), a reward model, and
/// `n` prompts; the prompts' path.
fn ppo_ifeval_setup(d: &Path, n: usize) -> PathBuf {
    let init: [(&str, &[&str]); 2] = [
        ("policy", &["--init-std", "0.5", "--seed", "3"]),
        ("rm", &["--scalar-head"]),
    ];
    for (name, extra) in init {
        let path = d.join(name);
        let mut args = vec!["init", "--preset", "tiny", "--out", s(&path)];
        args.extend(extra);
        ok_status(&prefer(&args));
    }
    let prompts = d.join("prompts.jsonl");
    write_lines(
        &prompts,
        &(0..n)
            .map(|i| json!({"prompt": format!("Tell me about the number {i}.")}))
            .collect::<Vec<_>>(),
    );
    prompts
}

/// `prefer ppo --eval-task ifeval --eval-every 2`: eval.jsonl has the four scores before training,
/// at iteration 2 and after the last; the last row is what `prefer eval` gives the saved policy;
/// a run stopped at iteration 2 and resumed logs the same rows as one that was not stopped.
#[test]
fn ppo_scores_ifeval_while_it_trains_as_prefer_eval_scores_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prompts = ppo_ifeval_setup(d, 8);
    let rows = ifeval_fixture();
    let (policy, rm) = (d.join("policy"), d.join("rm"));
    let ppo = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "ppo",
            "--device",
            "cpu",
            "--policy",
            s(&policy),
            "--reward-model",
            s(&rm),
            "--prompts",
            s(&prompts),
            "--out",
            s(out),
            "--prompt-batch-size",
            "4",
            "--rollouts-per-prompt",
            "2",
            "--minibatch-size",
            "8",
            "--max-new-tokens",
            "6",
            "--lr",
            "3e-3",
            "--temperature",
            "1.0",
            "--max-steps",
            "4",
            "--eval-task",
            "ifeval",
            "--eval-data",
            s(&rows),
            "--eval-limit",
            "24",
            "--eval-every",
            "2",
            "--eval-max-new-tokens",
            "12",
        ];
        args.extend(extra);
        prefer(&args)
    };
    let full = d.join("full");
    ok_status(&ppo(&full, &[]));
    let got = eval_rows(&full);
    let steps: Vec<u64> = got.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 2, 4]);
    for r in &got {
        assert_eq!(r["eval_rows"], 24);
        for key in IFEVAL_FIGURES {
            let v = r[format!("eval_ifeval_{key}")].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} {v}");
        }
    }
    assert!(
        got.iter()
            .any(|r| r["eval_ifeval_inst_level_loose_acc"].as_f64() > Some(0.0)),
        "{got:?}"
    );
    assert!(full.join("curves.png").is_file());
    // The trained policy, saved and scored by `prefer eval`, gets the last row's figures.
    let alone = ok(&prefer(&[
        "eval",
        "--task",
        "ifeval",
        "--data",
        s(&rows),
        "--limit",
        "24",
        "--model",
        s(&full),
        "--max-new-tokens",
        "12",
        "--device",
        "cpu",
    ]));
    for key in IFEVAL_FIGURES {
        assert_eq!(got[2][format!("eval_ifeval_{key}")], alone[key], "{key}");
    }
    // Stopped at iteration 2 and resumed: the same rows.
    let part = d.join("part");
    let stopped = ppo(&part, &["--stop-after", "2"]);
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    assert_eq!(eval_rows(&part).len(), 2);
    ok_status(&prefer(&["ppo", "--resume", s(&part)]));
    assert_eq!(eval_rows(&part), got);
    // --eval-task needs its rows; rows that are not IFEval's stop the run before training.
    let out = prefer(&[
        "ppo",
        "--device",
        "cpu",
        "--policy",
        s(&policy),
        "--reward-model",
        s(&rm),
        "--prompts",
        s(&prompts),
        "--out",
        s(&d.join("bad")),
        "--prompt-batch-size",
        "4",
        "--rollouts-per-prompt",
        "2",
        "--minibatch-size",
        "8",
        "--eval-task",
        "ifeval",
        "--eval-data",
        s(&prompts),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("prompts.jsonl:1") && err.contains("instruction_id_list"),
        "{err}"
    );
    assert!(!d.join("bad").join("metrics.jsonl").exists());
}

/// 50 answers in every format models write (tests/fixtures/gsm8k), scored as lm-evaluation-harness
/// 0.4.13's gsm8k task scores them (its own RegexFilter and exact_match, run by
/// tests/reference/check_gsm8k.py into reference_verdicts.jsonl).
#[test]
fn gsm8k_verdicts_equal_lm_evaluation_harness_on_the_cross_check_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gsm8k");
    let data = dir.join("cross_check.jsonl");
    let out = tempfile::tempdir().unwrap();
    let got = ok(&prefer(&[
        "eval",
        "--task",
        "gsm8k",
        "--data",
        s(&data),
        "--responses",
        s(&data),
        "--out",
        s(out.path()),
    ]));
    let read = |p: &Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let mine = read(&out.path().join("completions.jsonl"));
    let reference = read(&dir.join("reference_verdicts.jsonl"));
    assert_eq!(mine.len(), 50);
    assert_eq!(reference.len(), mine.len());
    for (m, r) in mine.iter().zip(&reference) {
        let c = &m["completions"][0];
        assert_eq!(c["correct"], r["correct"], "line {}: {c}", r["line"]);
        assert_eq!(c["extracted"], r["normalised"], "line {}: {c}", r["line"]);
        assert_eq!(m["gold"], r["gold"], "line {}", r["line"]);
    }
    assert_eq!(got["correct"], 31);
}

/// The same on the software GPU: the evaluation runs on the CUDA engine (bf16 weights, CUDA
/// graphs) during training, and the last row equals `prefer eval --device emu` on the result.
#[test]
fn ppo_scores_ifeval_while_it_trains_on_the_software_gpu() {
    if !common::emu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prompts = ppo_ifeval_setup(d, 4);
    let rows = ifeval_fixture();
    let run = d.join("run");
    ok_status(&prefer(&[
        "ppo",
        "--device",
        "emu",
        "--policy",
        s(&d.join("policy")),
        "--reward-model",
        s(&d.join("rm")),
        "--prompts",
        s(&prompts),
        "--out",
        s(&run),
        "--prompt-batch-size",
        "4",
        "--rollouts-per-prompt",
        "2",
        "--minibatch-size",
        "8",
        "--max-new-tokens",
        "4",
        "--lr",
        "3e-3",
        "--max-steps",
        "1",
        "--eval-task",
        "ifeval",
        "--eval-data",
        s(&rows),
        "--eval-limit",
        "8",
        "--eval-max-new-tokens",
        "8",
    ]));
    let got = eval_rows(&run);
    assert_eq!(got.len(), 2);
    assert!(
        got[1]["eval_ifeval_inst_level_loose_acc"].as_f64() > Some(0.0),
        "{got:?}"
    );
    let alone = ok(&prefer(&[
        "eval",
        "--task",
        "ifeval",
        "--data",
        s(&rows),
        "--limit",
        "8",
        "--model",
        s(&run),
        "--max-new-tokens",
        "8",
        "--device",
        "emu",
    ]));
    for key in IFEVAL_FIGURES {
        assert_eq!(got[1][format!("eval_ifeval_{key}")], alone[key], "{key}");
    }
}

/// Best-of-N on IFEval: the oracle takes each figure's best answer on its own (a loose-only
/// winner counts for the loose figures); and the options that would be ignored are refused.
#[test]
fn ifeval_oracle_is_per_figure_and_ignored_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("rows.jsonl");
    write_lines(
        &data,
        &[json!({"key": 1, "prompt": "p",
                 "instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
                 "kwargs": [{}, {}]})],
    );
    let resp = d.join("resp.jsonl");
    // A: no comma, not quoted (strict and loose [T, F]); B: strict [F, F], loose [T, T].
    write_lines(
        &resp,
        &[
            json!({"response": ["no commas here", "Sure, here:\n\"quoted\""],
                 "rewards": [1.0, 0.0]}),
        ],
    );
    let got = ok(&prefer(&[
        "eval",
        "--task",
        "ifeval",
        "--data",
        s(&data),
        "--responses",
        s(&resp),
        "--best-of",
        "2",
    ]));
    let want = [
        ("prompt_level_strict_acc", 0.0, 0.0),
        ("inst_level_strict_acc", 0.5, 0.5),
        ("prompt_level_loose_acc", 0.0, 1.0),
        ("inst_level_loose_acc", 0.5, 1.0),
    ];
    for (key, picked, oracle) in want {
        assert_eq!(got[key], picked, "{key}");
        assert_eq!(got[format!("random_{key}")], picked, "random_{key}");
        assert_eq!(got[format!("oracle_{key}")], oracle, "oracle_{key}");
    }
    let refused = |args: &[&str], words: &[&str]| {
        let out = prefer(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        for w in words {
            assert!(err.contains(w), "{args:?}: {err}");
        }
    };
    // Two answers a line, no --best-of: not silently the first.
    refused(
        &[
            "eval",
            "--task",
            "ifeval",
            "--data",
            s(&data),
            "--responses",
            s(&resp),
        ],
        &["one answer per row", "--best-of"],
    );
    refused(
        &[
            "eval",
            "--task",
            "ifeval",
            "--data",
            s(&data),
            "--responses",
            s(&resp),
            "--shots",
            "2",
        ],
        &["--shots", "gsm8k"],
    );
    refused(
        &[
            "ppo",
            "--policy",
            "p",
            "--reward-model",
            "r",
            "--prompts",
            "x",
            "--out",
            "o",
            "--eval-limit",
            "5",
        ],
        &["--eval-limit needs --eval-task"],
    );
    refused(
        &[
            "ppo",
            "--policy",
            "p",
            "--reward-model",
            "r",
            "--prompts",
            "x",
            "--out",
            "o",
            "--eval-task",
            "ifeval",
            "--eval-data",
            s(&data),
            "--eval-shots",
            "2",
        ],
        &["--eval-shots", "ifeval"],
    );
}
