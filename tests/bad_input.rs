//! No input crashes the process (issue #17): sizes from input are checked before anything is
//! allocated, every option is range-checked by name (from a flag or from `--config`), and a NaN
//! anywhere (weights, config numerics, logits, attention scores) is an error, never a silent
//! result. Each test drives the real `prefer` binary, except the oracle's attention.

use prefer::data::tokenizer::byte_tokenizer_json;
use prefer::model::init::init_params;
use prefer::model::weights::{save_checkpoint, SaveDtype};
use prefer::model::{LlamaConfig, ParamLayout};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

mod common;
use common::{prefer_output as prefer, stderr_text as stderr};

/// A failed run whose last stderr line is an `error:` holding every one of `words`, and no panic.
#[track_caller]
fn assert_refused(o: &Output, words: &[&str]) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected a refusal, got success:\n{e}");
    assert!(
        !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
        "a panic:\n{e}"
    );
    assert_eq!(
        o.status.code(),
        Some(if e.contains("For more information") {
            2
        } else {
            1
        }),
        "{e}"
    );
    for w in words {
        assert!(e.contains(w), "{w:?} missing from:\n{e}");
    }
}

/// The tiny model (1 layer) in `dir`, with `edit` applied to its config and weights first.
fn checkpoint(dir: &Path, edit: impl FnOnce(&mut LlamaConfig, &mut Vec<f32>)) {
    let mut cfg = LlamaConfig {
        num_hidden_layers: 1,
        ..LlamaConfig::preset("tiny").unwrap()
    };
    let layout = ParamLayout::new(&cfg);
    let mut params = init_params(&cfg, &layout, 0);
    edit(&mut cfg, &mut params);
    let tok = byte_tokenizer_json();
    save_checkpoint(
        dir,
        &cfg,
        &params,
        SaveDtype::F32,
        &[("tokenizer.json", tok.as_bytes())],
    )
    .unwrap();
}

/// `dir/config.json` with `field` set to `value`.
fn set_config(dir: &Path, field: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v[field] = value;
    std::fs::write(&path, v.to_string()).unwrap();
}

struct Files {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        checkpoint(&root.join("base"), |_, _| {});
        std::fs::write(
            root.join("prefs.jsonl"),
            "{\"prompt\": \"hi\", \"chosen\": \"kind\", \"rejected\": \"rude\"}\n".repeat(4),
        )
        .unwrap();
        std::fs::write(root.join("prompts.jsonl"), "{\"prompt\": \"hello\"}\n").unwrap();
        Files { _dir: dir, root }
    }
    /// The path of `name` in the test's folder (leaked: a test's few paths live as long as it).
    fn p(&self, name: &str) -> &'static str {
        Box::leak(self.root.join(name).display().to_string().into_boxed_str())
    }
}

// ---- sizes from input -------------------------------------------------------------------------

#[test]
fn huge_config_sizes_are_refused_naming_config_json_and_the_field() {
    let f = Files::new();
    let m = f.root.join("big");
    for (field, value) in [
        ("vocab_size", 1u64 << 40),
        ("num_hidden_layers", 1 << 20),
        ("hidden_size", 1 << 30),
        ("num_attention_heads", 1 << 20),
        ("max_position_embeddings", 1 << 40),
    ] {
        checkpoint(&m, |_, _| {});
        set_config(&m, field, value.into());
        let o = prefer(&[
            "logprobs",
            "--device",
            "cpu",
            "--model",
            f.p("big"),
            "--input",
            f.p("prompts.jsonl"),
            "--out",
            f.p("lp.jsonl"),
        ]);
        assert_refused(&o, &["config.json", field, "out of range"]);
    }
    // In bounds, but more parameters than this machine can hold: refused by size, before the
    // buffer is allocated (4M vocabulary x 65536 wide = 1 TiB of f32).
    checkpoint(&m, |_, _| {});
    set_config(&m, "vocab_size", (1u64 << 22).into());
    set_config(&m, "hidden_size", 65536.into());
    set_config(&m, "head_dim", 16.into());
    let o = prefer(&[
        "logprobs",
        "--device",
        "cpu",
        "--model",
        f.p("big"),
        "--input",
        f.p("prompts.jsonl"),
        "--out",
        f.p("lp.jsonl"),
    ]);
    assert_refused(
        &o,
        &[
            "parameters (f32) needs 1.0 TiB",
            "is available",
            "vocab_size",
        ],
    );
}

#[test]
fn an_8m_character_prompt_is_refused_before_tokenising_naming_file_and_line() {
    let f = Files::new();
    let long = "x".repeat(8 << 20);
    std::fs::write(
        f.root.join("long.jsonl"),
        format!("{{\"prompt\": \"hi\"}}\n{{\"prompt\": \"{long}\"}}\n"),
    )
    .unwrap();
    let start = Instant::now();
    let o = prefer(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        f.p("base"),
        "--prompts",
        f.p("long.jsonl"),
        "--out",
        f.p("g.jsonl"),
    ]);
    assert_refused(
        &o,
        &["long.jsonl:2", "8388608 bytes", "context of 2048 tokens"],
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    std::fs::write(
        f.root.join("long_lp.jsonl"),
        format!("{{\"text\": \"{long}\"}}\n"),
    )
    .unwrap();
    let o = prefer(&[
        "logprobs",
        "--device",
        "cpu",
        "--model",
        f.p("base"),
        "--input",
        f.p("long_lp.jsonl"),
        "--out",
        f.p("lp.jsonl"),
    ]);
    assert_refused(
        &o,
        &["long_lp.jsonl:1", "longer than the model's context of 2048"],
    );
}

#[test]
fn max_new_tokens_past_the_context_ends_at_the_context_and_u64_max_is_refused() {
    let f = Files::new();
    // tiny's context is 2048 tokens: a completion of a 1000-token prompt ends at it, and the
    // cache is sized for that, not for ten million tokens.
    checkpoint(&f.root.join("short"), |c, _| c.max_position_embeddings = 64);
    let o = prefer(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        f.p("short"),
        "--prompts",
        f.p("prompts.jsonl"),
        "--out",
        f.p("g.jsonl"),
        "--max-new-tokens",
        "10000000",
        "--temperature",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(f.root.join("g.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let n = line["completion_ids"].as_array().unwrap().len();
    // "hello" in the Tulu template: BOS + "<|user|>\nhello\n<|assistant|>\n".
    let prompt = 1 + "<|user|>\nhello\n<|assistant|>\n".len();
    if line["finish_reason"] == "length" {
        assert_eq!(n, 64 - prompt, "{line}");
    } else {
        assert_eq!(line["finish_reason"], "eos", "{line}");
        assert!(n <= 64 - prompt);
    }
    for v in ["18446744073709551615", "-1"] {
        let o = prefer(&[
            "generate",
            "--device",
            "cpu",
            "--model",
            f.p("base"),
            "--prompts",
            f.p("prompts.jsonl"),
            "--out",
            f.p("g.jsonl"),
            "--max-new-tokens",
            v,
        ]);
        assert_refused(&o, &["--max-new-tokens"]);
    }
    let o = prefer(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        f.p("base"),
        "--prompts",
        f.p("prompts.jsonl"),
        "--out",
        f.p("g.jsonl"),
        "--max-new-tokens",
        "100000000",
    ]);
    assert_refused(
        &o,
        &[
            "--max-new-tokens 100000000 is out of range",
            "1 to 16777216",
        ],
    );
}

#[test]
fn a_kv_memory_past_the_machine_is_refused_naming_the_sizes() {
    let f = Files::new();
    let o = prefer(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        f.p("base"),
        "--prompts",
        f.p("prompts.jsonl"),
        "--out",
        f.p("g.jsonl"),
        "--kv-memory",
        "1000000G",
    ]);
    assert_refused(
        &o,
        &["--kv-memory 1000000G needs 976.6 TiB", "is available"],
    );
    assert!(!f.root.join("g.jsonl").exists());
}

#[test]
fn a_50_mb_jsonl_line_is_dropped_as_too_long_in_well_under_a_few_seconds() {
    let f = Files::new();
    let huge = "word ".repeat(10 << 20); // 50 MiB
    let mut data = std::fs::read_to_string(f.root.join("prefs.jsonl")).unwrap();
    data.push_str(&format!(
        "{{\"prompt\": \"hi\", \"chosen\": \"{huge}\", \"rejected\": \"no\"}}\n"
    ));
    std::fs::write(f.root.join("big.jsonl"), data).unwrap();
    let start = Instant::now();
    let o = prefer(&[
        "rm",
        "--device",
        "cpu",
        "--model",
        f.p("base"),
        "--data",
        f.p("big.jsonl"),
        "--out",
        f.p("rm"),
        "--batch-size",
        "4",
        "--grad-accum",
        "1",
        "--max-steps",
        "1",
    ]);
    let took = start.elapsed();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("4 pairs (0 bad lines skipped, 1 dropped as too long"),
        "{}",
        stderr(&o)
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_50_mb_reply_is_truncated_from_its_first_kilobytes_with_the_tokens_the_whole_text_gives() {
    use prefer::data::chat_template::ChatTemplate;
    use prefer::data::preference::{load_preferences, DataOptions, Encoder, Overflow};
    use prefer::data::tokenizer::TextTokenizer;
    let dir = tempfile::tempdir().unwrap();
    let cfg = LlamaConfig::preset("tiny").unwrap();
    let tokenizer = TextTokenizer::from_json(&byte_tokenizer_json()).unwrap();
    let template = ChatTemplate::for_model(dir.path()).unwrap();
    let enc = Encoder {
        tokenizer: &tokenizer,
        template: &template,
        cfg: &cfg,
    };
    let reply = "word ".repeat(10 << 20);
    let path = dir.path().join("big.jsonl");
    std::fs::write(
        &path,
        serde_json::json!({"prompt": "hi", "chosen": reply, "rejected": "no"}).to_string(),
    )
    .unwrap();
    let opts = DataOptions {
        max_prompt_len: 16,
        max_len: 64,
        overflow: Overflow::Truncate,
        skip_bad: false,
        chat_template: true,
    };
    let start = Instant::now();
    let (pairs, report) = load_preferences(&path, &enc, &opts).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!((report.pairs, report.truncated), (1, 1));
    // The byte tokenizer gives one token per byte: the reply keeps its first bytes.
    let p = &pairs[0];
    let room = 64 - p.prompt.len();
    let want: Vec<u32> = reply.bytes().take(room).map(u32::from).collect();
    assert_eq!(p.chosen, want);
    assert_eq!(p.max_len(), 64);
}

// ---- option values ----------------------------------------------------------------------------

#[test]
fn bad_training_options_are_refused_by_name_and_range_from_flags_and_config() {
    let f = Files::new();
    let base = |extra: &[&str]| {
        let mut a = vec![
            "dpo",
            "--device",
            "cpu",
            "--model",
            f.p("base"),
            "--data",
            f.p("prefs.jsonl"),
            "--out",
            f.p("run"),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = base(extra);
        prefer(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert_refused(&run(&["--epochs", "-1"]), &["--epochs", "-1 is negative"]);
    assert_refused(
        &run(&["--grad-accum", "18446744073709551615"]),
        &["--grad-accum", "too large"],
    );
    assert_refused(
        &run(&["--grad-accum", "9223372036854775807"]),
        &[
            "--grad-accum 9223372036854775807 is out of range",
            "1 to 65536",
        ],
    );
    assert_refused(
        &run(&["--epochs", "4611686018427387904"]),
        &[
            "--epochs 4611686018427387904 is out of range",
            "1 to 1000000",
        ],
    );
    assert_refused(
        &run(&["--lr", "NaN"]),
        &["--lr NaN is not a finite number", "[0, 1e38]"],
    );
    assert_refused(
        &run(&["--beta", "inf"]),
        &["--beta inf is not a finite number"],
    );
    assert_refused(
        &run(&["--save-every", "0"]),
        &["--save-every 0 is out of range"],
    );
    let cfg = f.root.join("run.toml");
    for (toml, words) in [
        (
            "epochs = 0\n",
            &["--epochs 0 is out of range", "1 to 1000000"][..],
        ),
        ("lr = nan\n", &["--lr NaN is not a finite number"]),
        ("batch-size = -3\n", &["run.toml", "batch-size"]),
        (
            "warmup-ratio = 1.5\n",
            &["--warmup-ratio 1.5 is out of range", "[0, 1)"],
        ),
    ] {
        std::fs::write(&cfg, toml).unwrap();
        assert_refused(&run(&["--config", cfg.to_str().unwrap()]), words);
    }
    assert!(!f.root.join("run").exists(), "a refused run left a folder");
}

#[test]
fn bad_ppo_options_are_refused_by_name_and_range_from_flags_and_config() {
    let f = Files::new();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "ppo",
            "--device",
            "cpu",
            "--policy",
            f.p("base"),
            "--reward-model",
            f.p("base"),
            "--prompts",
            f.p("prompts.jsonl"),
            "--out",
            f.p("ppo"),
        ];
        a.extend(extra);
        prefer(&a)
    };
    assert_refused(
        &run(&["--value-clip", "-0.5"]),
        &["--value-clip -0.5 is out of range", "(0, 1e6]"],
    );
    assert_refused(
        &run(&["--value-clip", "NaN"]),
        &["--value-clip NaN is not a finite number"],
    );
    assert_refused(
        &run(&["--value-coef", "nan"]),
        &["--value-coef NaN is not a finite number"],
    );
    assert_refused(
        &run(&["--gamma", "NaN"]),
        &["--gamma NaN is not a finite number", "[0, 1]"],
    );
    assert_refused(&run(&["--lam", "1.5"]), &["--lam 1.5 is out of range"]);
    assert_refused(
        &run(&["--eos-penalty=-inf"]),
        &["--eos-penalty -inf is not a finite number"],
    );
    assert_refused(
        &run(&["--grad-accum", "18446744073709551615"]),
        &["--grad-accum", "too large"],
    );
    assert_refused(
        &run(&["--max-new-tokens", "-1"]),
        &["--max-new-tokens", "negative"],
    );
    assert_refused(
        &run(&["--epochs", "9223372036854775807"]),
        &["--epochs 9223372036854775807 is out of range"],
    );
    // The rollout engine's options, as `prefer generate` takes them.
    assert_refused(
        &run(&["--max-batch", "0"]),
        &["--max-batch 0 is out of range", "1 to 65536"],
    );
    assert_refused(
        &run(&["--rollouts-per-prompt", "4", "--max-batch", "3"]),
        &["--max-batch 3 must hold a prompt's 4 rollouts"],
    );
    assert_refused(
        &run(&["--kv-memory", "1000000G"]),
        &["--kv-memory 1000000G needs 976.6 TiB", "is available"],
    );
    assert_refused(
        &run(&["--kv-memory", "lots"]),
        &["--kv-memory lots: expected a size such as 512M or 8G"],
    );
    assert!(!f.root.join("ppo").exists(), "a refused run left a folder");
    let cfg = f.root.join("ppo.toml");
    std::fs::write(&cfg, "value-coef = nan\n").unwrap();
    assert_refused(
        &run(&["--config", cfg.to_str().unwrap()]),
        &["--value-coef NaN is not a finite number"],
    );
    std::fs::write(&cfg, "temperature = -1.0\n").unwrap();
    assert_refused(
        &run(&["--config", cfg.to_str().unwrap()]),
        &["--temperature -1 is out of range"],
    );
}

#[test]
fn bad_generate_and_other_command_options_are_refused_by_name() {
    let f = Files::new();
    let gen = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--device",
            "cpu",
            "--model",
            f.p("base"),
            "--prompts",
            f.p("prompts.jsonl"),
            "--out",
            f.p("g.jsonl"),
        ];
        a.extend(extra);
        prefer(&a)
    };
    assert_refused(
        &gen(&["--temperature", "NaN"]),
        &["--temperature NaN is not a finite number"],
    );
    assert_refused(
        &gen(&["--top-p", "2"]),
        &["--top-p 2 is out of range", "(0, 1]"],
    );
    assert_refused(&gen(&["--n", "0"]), &["--n 0 is out of range"]);
    assert_refused(&gen(&["--max-batch", "-4"]), &["--max-batch", "negative"]);
    assert_refused(&gen(&["--seed", "-1"]), &["--seed", "-1 is negative"]);
    let o = prefer(&[
        "eval-rm",
        "--device",
        "cpu",
        "--model",
        f.p("base"),
        "--data",
        f.p("prefs.jsonl"),
        "--batch-size",
        "0",
    ]);
    assert_refused(&o, &["--batch-size 0 is out of range"]);
    let o = prefer(&[
        "init",
        "--preset",
        "tiny",
        "--out",
        f.p("i"),
        "--layers",
        "100000",
    ]);
    assert_refused(
        &o,
        &["--layers", "num_hidden_layers 100000 is out of range"],
    );
    let o = prefer(&[
        "init",
        "--preset",
        "tiny",
        "--out",
        f.p("i"),
        "--layers",
        "-2",
    ]);
    assert_refused(&o, &["--layers", "negative"]);
}

// ---- NaN is an error --------------------------------------------------------------------------

#[test]
fn a_nan_weight_is_refused_at_load_naming_the_tensor() {
    let f = Files::new();
    checkpoint(&f.root.join("nan"), |_, p| {
        let at = p.len() - 3;
        p[at] = f32::NAN;
    });
    let layout = ParamLayout::new(&LlamaConfig {
        num_hidden_layers: 1,
        ..LlamaConfig::preset("tiny").unwrap()
    });
    let last = layout.slots.last().unwrap().name.clone();
    for cmd in [
        vec![
            "logprobs",
            "--input",
            f.p("prompts.jsonl"),
            "--out",
            f.p("lp.jsonl"),
        ],
        vec![
            "generate",
            "--prompts",
            f.p("prompts.jsonl"),
            "--out",
            f.p("g.jsonl"),
        ],
    ] {
        let mut a = cmd.clone();
        a.extend(["--device", "cpu", "--model", f.p("nan")]);
        let o = prefer(&a);
        assert_refused(&o, &[&format!("tensor {last}"), "non-finite weight (NaN"]);
    }
}

#[test]
fn rms_norm_eps_minus_one_and_other_bad_config_floats_are_refused() {
    let f = Files::new();
    let m = f.root.join("eps");
    for (field, value, words) in [
        (
            "rms_norm_eps",
            serde_json::json!(-1.0),
            "rms_norm_eps -1 is out of range",
        ),
        (
            "rms_norm_eps",
            serde_json::json!(0.0),
            "rms_norm_eps 0 is out of range",
        ),
        (
            "rope_theta",
            serde_json::json!(-5.0),
            "rope_theta -5 is out of range",
        ),
        (
            "rms_norm_eps",
            serde_json::json!(1e39),
            "rms_norm_eps inf is out of range",
        ),
    ] {
        checkpoint(&m, |_, _| {});
        set_config(&m, field, value);
        let o = prefer(&[
            "generate",
            "--device",
            "cpu",
            "--model",
            f.p("eps"),
            "--prompts",
            f.p("prompts.jsonl"),
            "--out",
            f.p("g.jsonl"),
        ]);
        assert_refused(&o, &["config.json", words]);
    }
}

#[test]
fn non_finite_logits_are_an_error_naming_the_prompt_and_position_never_null_logprobs() {
    let f = Files::new();
    // Finite weights whose forward overflows: the MLP's up-projection gives ±inf, and the next
    // RMSNorm turns inf · 0 into NaN.
    checkpoint(&f.root.join("inf"), |c, p| {
        let l = ParamLayout::new(c);
        p[l.layers[0].up_proj.clone()].fill(3e38);
    });
    let o = prefer(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        f.p("inf"),
        "--prompts",
        f.p("prompts.jsonl"),
        "--out",
        f.p("g.jsonl"),
        "--temperature",
        "0",
    ]);
    assert_refused(&o, &["logits are not finite", "prompt 0", "position 0"]);
    assert!(!f.root.join("g.jsonl").exists());
    std::fs::write(
        f.root.join("ids.jsonl"),
        "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [4, 5]}\n",
    )
    .unwrap();
    let o = prefer(&[
        "logprobs",
        "--device",
        "cpu",
        "--model",
        f.p("inf"),
        "--input",
        f.p("ids.jsonl"),
        "--out",
        f.p("lp.jsonl"),
    ]);
    assert_refused(
        &o,
        &["ids.jsonl:1", "log-prob of token 1 is NaN", "not finite"],
    );
}

#[test]
fn non_finite_logits_are_an_error_on_the_cuda_engine_too() {
    if !common::emu_available() {
        return;
    }
    let f = Files::new();
    checkpoint(&f.root.join("inf"), |c, p| {
        let l = ParamLayout::new(c);
        p[l.layers[0].up_proj.clone()].fill(3e38);
    });
    let o = prefer(&[
        "generate",
        "--device",
        "emu",
        "--model",
        f.p("inf"),
        "--prompts",
        f.p("prompts.jsonl"),
        "--out",
        f.p("g.jsonl"),
        "--temperature",
        "0",
        "--max-new-tokens",
        "2",
    ]);
    assert_refused(&o, &["logits are not finite", "prompt 0", "position 0"]);
    std::fs::write(f.root.join("ids.jsonl"), "{\"input_ids\": [1, 2, 3]}\n").unwrap();
    let o = prefer(&[
        "logprobs",
        "--device",
        "emu",
        "--model",
        f.p("inf"),
        "--input",
        f.p("ids.jsonl"),
        "--out",
        f.p("lp.jsonl"),
    ]);
    assert_refused(&o, &["ids.jsonl:1", "is NaN", "not finite"]);
}

#[test]
fn the_cpu_oracles_attention_propagates_nan_as_pytorch_does() {
    use prefer::ops::cpu::{attention_forward, AttentionShape};
    let s = AttentionShape {
        batch: 1,
        seq: 3,
        heads: 1,
        kv_heads: 1,
        head_dim: 2,
    };
    let q = vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    let mut k = vec![0.1, -0.2, 0.3, 0.1, -0.5, 0.2];
    let v = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    // Key 1 is NaN: rows 1 and 2 see it and must be NaN; row 0 does not and stays finite.
    k[2] = f32::NAN;
    let (mut out, mut lse) = (vec![0.0; 6], vec![0.0; 3]);
    attention_forward(&mut out, &mut lse, &q, &k, &v, &[true; 3], s);
    assert_eq!(&out[..2], &[1.0, 2.0], "row 0 attends only to key 0");
    assert!(out[2..].iter().all(|x| x.is_nan()), "{out:?}");
    assert!(
        lse[1].is_nan() && lse[2].is_nan() && lse[0].is_finite(),
        "{lse:?}"
    );
    // A fully masked row (a pad in front of a left-padded sequence) still gives zeros, lse −∞.
    k[2] = 0.3;
    attention_forward(&mut out, &mut lse, &q, &k, &v, &[false, true, true], s);
    assert_eq!(&out[..2], &[0.0, 0.0]);
    assert_eq!(lse[0], f32::NEG_INFINITY);
    assert!(out[2..].iter().all(|x| x.is_finite()));
}
