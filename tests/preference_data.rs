//! Preference JSONL in its three shapes, chat templates, truncation, and bad input.

use prefer::data::chat_template::{ChatTemplate, Message};
use prefer::data::preference::{load_preferences, DataOptions, Encoder, Overflow};
use prefer::data::tokenizer::{byte_tokenizer_json, TextTokenizer};
use prefer::model::LlamaConfig;
use std::path::PathBuf;

fn fixture() -> (TextTokenizer, LlamaConfig) {
    (
        TextTokenizer::from_json(&byte_tokenizer_json()).unwrap(),
        LlamaConfig::preset("tiny").unwrap(),
    )
}

fn write(lines: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prefs.jsonl");
    std::fs::write(&path, lines).unwrap();
    (dir, path)
}

fn bytes(s: &str) -> Vec<u32> {
    s.bytes().map(u32::from).collect()
}

#[test]
fn three_shapes_give_the_same_pair() {
    let (tok, cfg) = fixture();
    let tulu = ChatTemplate::Tulu {
        eos_token: "</s>".into(),
    };
    let enc = Encoder {
        tokenizer: &tok,
        template: &tulu,
        cfg: &cfg,
    };
    // The Tulu prompt: BOS, "<|user|>\nHi\n<|assistant|>\n"; the response: its bytes, then EOS.
    let prompt: Vec<u32> = [vec![256], bytes("<|user|>\nHi\n<|assistant|>\n")].concat();
    let ids = |v: &[u32]| serde_json::to_string(v).unwrap();
    let pretokenised = format!(
        r#"{{"prompt_ids": {}, "chosen_ids": {}, "rejected_ids": {}}}"#,
        ids(&prompt),
        ids(&[bytes("Yes"), vec![257]].concat()),
        ids(&[bytes("No"), vec![257]].concat())
    );
    let lines = format!(
        "{}\n{}\n{pretokenised}\n{}\n",
        r#"{"prompt": "Hi", "chosen": "Yes", "rejected": "No", "margin": 2}"#,
        r#"{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}], "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No"}]}"#,
        r#"{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Yes"}], "rejected": [{"role": "assistant", "content": "No"}]}"#,
    );
    let (_d, path) = write(&lines);
    // A string prompt is one user turn under --chat-template.
    let templated = DataOptions {
        chat_template: true,
        ..DataOptions::default()
    };
    let (pairs, report) = load_preferences(&path, &enc, &templated).unwrap();
    assert_eq!(report.pairs, 4);
    for p in &pairs {
        assert_eq!(p.prompt, prompt);
        assert_eq!(p.chosen, [bytes("Yes"), vec![257]].concat());
        assert_eq!(p.rejected, [bytes("No"), vec![257]].concat());
    }
    assert_eq!(
        (
            pairs[0].margin,
            pairs[1].margin,
            pairs[0].line,
            pairs[2].line
        ),
        (Some(2.0), None, 1, 3)
    );
}

#[test]
fn the_models_own_jinja_template_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'].strip() }}\n{% endfor %}{% if add_generation_prompt %}[ASSISTANT] {% endif %}";
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        serde_json::json!({"chat_template": template, "bos_token": "<s>", "eos_token": "</s>"})
            .to_string(),
    )
    .unwrap();
    let t = ChatTemplate::for_model(dir.path()).unwrap();
    let msgs = [Message {
        role: "user".into(),
        content: "  Hello ".into(),
    }];
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "<s>[USER] Hello\n[ASSISTANT] "
    );
    // Without a template: the Tulu format.
    let none = tempfile::tempdir().unwrap();
    let tulu = ChatTemplate::for_model(none.path()).unwrap();
    assert_eq!(
        tulu.render(&msgs, true).unwrap(),
        "<|user|>\n  Hello \n<|assistant|>\n"
    );
}

#[test]
fn string_prompts_are_read_raw_as_trl_reads_them() {
    let (tok, cfg) = fixture();
    let tulu = ChatTemplate::Tulu {
        eos_token: "</s>".into(),
    };
    let enc = Encoder {
        tokenizer: &tok,
        template: &tulu,
        cfg: &cfg,
    };
    // TRL 1.x: tokenizer(prompt) and tokenizer(prompt + response + eos_token), BOS from the
    // tokenizer's post-processor; a response that already ends with the EOS text keeps one.
    let (_d, path) = write(concat!(
        r#"{"prompt": "Hi", "chosen": " Yes", "rejected": "No</s>"}"#,
        "
"
    ));
    let (pairs, _) = load_preferences(&path, &enc, &DataOptions::default()).unwrap();
    assert_eq!(pairs[0].prompt, [vec![256], bytes("Hi")].concat());
    assert_eq!(pairs[0].chosen, [bytes(" Yes"), vec![257]].concat());
    assert_eq!(pairs[0].rejected, [bytes("No"), vec![257]].concat());

    // A tokenizer that adds no BOS (no post-processor) gets none, as in TRL, even though the
    // model's config names a BOS id.
    let mut json: serde_json::Value = serde_json::from_str(&byte_tokenizer_json()).unwrap();
    json["post_processor"] = serde_json::Value::Null;
    let bare = TextTokenizer::from_json(&json.to_string()).unwrap();
    assert_eq!(cfg.bos_token_id, Some(256));
    let enc = Encoder {
        tokenizer: &bare,
        template: &tulu,
        cfg: &cfg,
    };
    let (pairs, _) = load_preferences(&path, &enc, &DataOptions::default()).unwrap();
    assert_eq!(pairs[0].prompt, bytes("Hi"));
    assert_eq!(pairs[0].chosen, [bytes(" Yes"), vec![257]].concat());

    // An EOS name the tokenizer does not know is not spelt out as text: config.json's id ends
    // the responses instead.
    let unknown = ChatTemplate::Tulu {
        eos_token: "<|end|>".into(),
    };
    let enc = Encoder {
        tokenizer: &tok,
        template: &unknown,
        cfg: &cfg,
    };
    let (pairs, _) = load_preferences(&path, &enc, &DataOptions::default()).unwrap();
    assert_eq!(pairs[0].chosen, [bytes(" Yes"), vec![257]].concat());
}

#[test]
fn long_pairs_are_dropped_or_truncated_and_counted() {
    let (tok, cfg) = fixture();
    let tulu = ChatTemplate::Tulu {
        eos_token: "</s>".into(),
    };
    let enc = Encoder {
        tokenizer: &tok,
        template: &tulu,
        cfg: &cfg,
    };
    let long = "x".repeat(100);
    let lines = format!(
        "{}\n{}\n",
        r#"{"prompt": "Hi", "chosen": "Yes", "rejected": "No"}"#,
        serde_json::json!({"prompt": long, "chosen": long, "rejected": "no"})
    );
    let (_d, path) = write(&lines);
    let mut opts = DataOptions {
        max_prompt_len: 64,
        max_len: 96,
        overflow: Overflow::Drop,
        skip_bad: false,
        chat_template: true,
    };
    let (pairs, report) = load_preferences(&path, &enc, &opts).unwrap();
    assert_eq!(
        (pairs.len(), report.dropped_too_long, report.truncated),
        (1, 1, 0)
    );
    opts.overflow = Overflow::Truncate;
    let (pairs, report) = load_preferences(&path, &enc, &opts).unwrap();
    assert_eq!(
        (pairs.len(), report.dropped_too_long, report.truncated),
        (2, 0, 1)
    );
    let p = &pairs[1];
    assert_eq!(p.prompt.len(), 64);
    assert_eq!(p.prompt[0], 256, "BOS survives truncation");
    assert_eq!(
        &p.prompt[p.prompt.len() - 14..],
        bytes("<|assistant|>\n").as_slice(),
        "the prompt keeps its end"
    );
    assert_eq!(p.max_len(), 96);
}

#[test]
fn trls_implicit_prompt_is_the_shared_prefix_as_plain_text() {
    let (tok, cfg) = fixture();
    let tulu = ChatTemplate::Tulu {
        eos_token: "</s>".into(),
    };
    let enc = Encoder {
        tokenizer: &tok,
        template: &tulu,
        cfg: &cfg,
    };
    // As TRL's extract_prompt: the prefix stops before the space, which stays with the replies;
    // no chat template is applied to plain text. "é" checks the split keeps characters whole.
    let (_d, path) = write(
        "\u{feff}{\"chosen\": \"Q: 2+2? A: 4\", \"rejected\": \"Q: 2+2? A: 5\"}\n{\"chosen\": \"caf\u{e9}!\", \"rejected\": \"caf\u{e8}?\"}\n",
    );
    let (pairs, report) = load_preferences(&path, &enc, &DataOptions::default()).unwrap();
    assert_eq!(report.pairs, 2);
    assert_eq!(pairs[0].prompt, [vec![256], bytes("Q: 2+2? A:")].concat());
    assert_eq!(pairs[0].chosen, [bytes(" 4"), vec![257]].concat());
    assert_eq!(pairs[0].rejected, [bytes(" 5"), vec![257]].concat());
    assert_eq!(pairs[1].prompt, [vec![256], bytes("caf")].concat());
    assert_eq!(pairs[1].chosen, [bytes("\u{e9}!"), vec![257]].concat());
}

#[test]
fn bad_lines_name_file_and_line() {
    let (tok, cfg) = fixture();
    let tulu = ChatTemplate::Tulu {
        eos_token: "</s>".into(),
    };
    let enc = Encoder {
        tokenizer: &tok,
        template: &tulu,
        cfg: &cfg,
    };
    let good = r#"{"prompt": "Hi", "chosen": "Yes", "rejected": "No"}"#;
    for (bad, expect) in [
        (r#"{"prompt": "Hi", "chosen": "Yes""#, "not valid JSON"),
        (
            r#"{"prompt": "Hi", "chosen": "Yes"}"#,
            "missing field \"rejected\"",
        ),
        (
            r#"{"prompt": "Hi", "chosen": "  ", "rejected": "No"}"#,
            "empty chosen response",
        ),
        (
            r#"{"prompt_ids": [1], "chosen_ids": [], "rejected_ids": [2]}"#,
            "empty chosen response",
        ),
        (
            r#"{"prompt_ids": [1], "chosen_ids": [999], "rejected_ids": [2]}"#,
            "outside the model's vocabulary",
        ),
        (
            r#"{"chosen": "a", "rejected": [{"role": "user", "content": "x"}]}"#,
            "both be strings or both be message lists",
        ),
        (r#"[1, 2]"#, "expected a JSON object"),
        (
            r#"{"chosen": "yes", "rejected": "no"}"#,
            "share no prompt prefix",
        ),
        (
            r#"{"chosen": "Q: A", "rejected": "Q: AB"}"#,
            "empty chosen response",
        ),
    ] {
        let (_d, path) = write(&format!("{good}\n\n{bad}\n{good}\n"));
        let err = format!(
            "{:#}",
            load_preferences(&path, &enc, &DataOptions::default()).unwrap_err()
        );
        assert!(
            err.contains("prefs.jsonl:3:") && err.contains(expect),
            "{bad}: {err}"
        );
        let skip = DataOptions {
            skip_bad: true,
            ..DataOptions::default()
        };
        let (pairs, report) = load_preferences(&path, &enc, &skip).unwrap();
        assert_eq!((pairs.len(), report.bad_lines), (2, 1), "{bad}");
        assert!(
            report.to_string().contains("skipped")
                && report.first_bad[0].contains("prefs.jsonl:3:")
        );
    }
}

#[test]
fn trainer_refuses_a_tokenizer_that_does_not_fit_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let opts = prefer::cmd::init::InitOptions {
        seed: 0,
        scalar_head: false,
        dtype: prefer::model::weights::SaveDtype::F32,
        layers: None,
        init_std: None,
        vocab_size: None,
        overwrite: false,
    };
    prefer::cmd::init::run_init("tiny", &base, &opts).unwrap();
    // A model whose vocabulary (200) is smaller than the tokenizer's 259 ids; its own special ids
    // fit its vocabulary, so only the tokenizer is wrong.
    let mut c = LlamaConfig::preset("tiny").unwrap();
    c.vocab_size = 200;
    (c.bos_token_id, c.eos_token_id, c.pad_token_id) = (Some(1), Some(2), Some(3));
    let layout = prefer::model::ParamLayout::new(&c);
    prefer::model::weights::save_checkpoint(
        &base,
        &c,
        &vec![0.0; layout.len],
        prefer::model::weights::SaveDtype::F32,
        &[("tokenizer.json", byte_tokenizer_json().as_bytes())],
    )
    .unwrap();
    std::fs::write(
        dir.path().join("d.jsonl"),
        prefer::data::synthetic::synthetic_preferences(4, 0),
    )
    .unwrap();
    let args = prefer::train::TrainArgs {
        model: Some(base),
        data: Some(dir.path().join("d.jsonl")),
        run: prefer::train::RunArgs {
            out: Some(dir.path().join("out")),
            ..prefer::train::RunArgs::default()
        },
        ..Default::default()
    };
    let err = format!(
        "{:#}",
        prefer::train::run_training(args, prefer::train::TrainerKind::RewardModel).unwrap_err()
    );
    assert!(
        err.contains("259 tokens") && err.contains("vocab_size is 200"),
        "{err}"
    );
}
