//! Regression tests for problems a review found: each names the behaviour it pins down.

use prefer::cmd::init::{run_init, InitOptions};
use prefer::data::chat_template::{ChatTemplate, Message};
use prefer::data::synthetic::synthetic_preferences;
use prefer::model::init::init_params;
use prefer::model::weights::{load_checkpoint, save_checkpoint, SaveDtype};
use prefer::model::{Batch, LlamaConfig, ParamLayout};
use prefer::train::{run_training, TrainArgs, TrainerKind};
use std::path::Path;

fn untied_tiny(dir: &Path, scalar_head: bool) {
    let mut cfg = LlamaConfig::preset("tiny").unwrap();
    cfg.tie_word_embeddings = false;
    cfg.scalar_head = scalar_head;
    let params = init_params(&cfg, &ParamLayout::new(&cfg), 3);
    let tok = prefer::data::tokenizer::byte_tokenizer_json();
    save_checkpoint(
        dir,
        &cfg,
        &params,
        SaveDtype::F32,
        &[("tokenizer.json", tok.as_bytes())],
    )
    .unwrap();
}

fn args(root: &Path, model: &Path, out: &str) -> TrainArgs {
    TrainArgs {
        model: Some(model.to_path_buf()),
        data: Some(root.join("d.jsonl")),
        batch_size: Some(2),
        grad_accum: Some(4),
        ref_cache_dir: Some(root.join("cache")),
        run: prefer::train::RunArgs {
            out: Some(root.join(out)),
            epochs: Some(1),
            lr: Some(1e-3),
            ..prefer::train::RunArgs::default()
        },
        ..Default::default()
    }
}

#[test]
fn reward_model_from_an_untied_base_drops_the_lm_head() {
    let dir = tempfile::tempdir().unwrap();
    untied_tiny(&dir.path().join("base"), false);
    std::fs::write(dir.path().join("d.jsonl"), synthetic_preferences(10, 1)).unwrap();
    run_training(
        args(dir.path(), &dir.path().join("base"), "rm"),
        TrainerKind::RewardModel,
    )
    .unwrap();
    let (cfg, _) = load_checkpoint(&dir.path().join("rm")).unwrap();
    assert!(cfg.scalar_head && !cfg.tie_word_embeddings && !cfg.has_lm_head());
}

#[test]
fn dpo_from_an_untied_reward_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    untied_tiny(&dir.path().join("rm"), true);
    std::fs::write(dir.path().join("d.jsonl"), synthetic_preferences(4, 1)).unwrap();
    let err = format!(
        "{:#}",
        run_training(
            args(dir.path(), &dir.path().join("rm"), "dpo"),
            TrainerKind::Dpo
        )
        .unwrap_err()
    );
    assert!(err.contains("no LM head"), "{err}");
}

#[test]
fn epochs_count_micro_batches_not_rounded_up_steps() {
    // 10 pairs in batches of 2 are 5 micro-batches; with 4 per step, one epoch is a step of 4 and
    // a step of 1: every pair exactly once.
    let dir = tempfile::tempdir().unwrap();
    let opts = InitOptions {
        seed: 0,
        scalar_head: false,
        dtype: SaveDtype::F32,
        layers: None,
        init_std: None,
        vocab_size: None,
        overwrite: false,
    };
    run_init("tiny", &dir.path().join("base"), &opts).unwrap();
    std::fs::write(dir.path().join("d.jsonl"), synthetic_preferences(10, 1)).unwrap();
    let summary = run_training(
        args(dir.path(), &dir.path().join("base"), "rm"),
        TrainerKind::RewardModel,
    )
    .unwrap();
    assert_eq!(summary.steps, 2);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("rm/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let pairs: u64 = rows.iter().map(|r| r["pairs"].as_u64().unwrap()).sum();
    assert_eq!(
        (rows[0]["pairs"].as_u64(), rows[1]["pairs"].as_u64(), pairs),
        (Some(8), Some(2), 10)
    );
}

#[test]
fn special_ids_outside_the_vocabulary_and_nan_beta_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "pad_token_id": 50});
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = format!(
        "{:#}",
        LlamaConfig::from_hf_json(&dir.path().join("config.json")).unwrap_err()
    );
    assert!(
        err.contains("pad_token_id 50 is outside the vocabulary of 10"),
        "{err}"
    );

    let a = TrainArgs {
        model: Some("m".into()),
        data: Some("d".into()),
        beta: Some(f32::NAN),
        run: prefer::train::RunArgs {
            out: Some("o".into()),
            ..prefer::train::RunArgs::default()
        },
        ..Default::default()
    };
    let err = format!("{:#}", a.resolve(TrainerKind::Dpo).unwrap_err());
    assert!(err.contains("--beta"), "{err}");
}

#[test]
fn chat_templates_render_with_transformers_whitespace_rules() {
    // allenai/tulu-2's template, whose block tags sit on their own lines; transformers renders it
    // with trim_blocks and lstrip_blocks. Expected strings from jinja2 with those settings.
    let tulu2 = "{% for message in messages %}\n{% if message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] }}\n{% elif message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";
    let t = ChatTemplate::Jinja {
        source: tulu2.into(),
        bos_token: "<s>".into(),
        eos_token: "</s>".into(),
    };
    let user = Message {
        role: "user".into(),
        content: "hi".into(),
    };
    let reply = Message {
        role: "assistant".into(),
        content: "yo".into(),
    };
    assert_eq!(
        t.render(std::slice::from_ref(&user), true).unwrap(),
        "<|user|>\nhi\n<|assistant|>\n"
    );
    assert_eq!(
        t.render(&[user, reply], false).unwrap(),
        "<|user|>\nhi\n<|assistant|>\nyo</s>\n"
    );
    // {% break %} needs loop controls, as transformers enables them.
    let brk = ChatTemplate::Jinja {
        source: "{% for m in messages %}{{ m['content'] }}{% break %}{% endfor %}".into(),
        bos_token: String::new(),
        eos_token: String::new(),
    };
    let two = [
        Message {
            role: "user".into(),
            content: "a".into(),
        },
        Message {
            role: "user".into(),
            content: "b".into(),
        },
    ];
    assert_eq!(brk.render(&two, false).unwrap(), "a");
}

#[test]
fn chat_template_jinja_file_wins_and_responses_end_with_the_tokenizers_eos() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "[{{ messages[0]['content'] }}]",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        serde_json::json!({"chat_template": "ignored", "eos_token": "<pad>"}).to_string(),
    )
    .unwrap();
    let t = ChatTemplate::for_model(dir.path()).unwrap();
    let msgs = [Message {
        role: "user".into(),
        content: "x".into(),
    }];
    assert_eq!(t.render(&msgs, true).unwrap(), "[x]");
    // The turn ends with the tokenizer's eos_token (here <pad> = 258), not config.json's 257.
    let tok = prefer::data::tokenizer::TextTokenizer::from_json(
        &prefer::data::tokenizer::byte_tokenizer_json(),
    )
    .unwrap();
    let cfg = LlamaConfig::preset("tiny").unwrap();
    let enc = prefer::data::preference::Encoder {
        tokenizer: &tok,
        template: &t,
        cfg: &cfg,
    };
    assert_eq!(enc.response_ids("ok").unwrap(), vec![111, 107, 258]);
}

#[test]
fn reward_position_follows_transformers_when_pad_is_eos() {
    // pad = eos = 257: transformers reads the last token that is not the pad id.
    let b = Batch::right_padded(&[vec![256, 5, 6, 257], vec![256, 9]], 257);
    assert_eq!(b.reward_position(0, 4, Some(257)), 2);
    assert_eq!(b.reward_position(1, 2, Some(257)), 4 + 1);
    assert_eq!(b.reward_position(0, 4, None), 3);
}

#[test]
fn a_save_interrupted_between_its_renames_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LlamaConfig::preset("tiny").unwrap();
    let params = init_params(&cfg, &ParamLayout::new(&cfg), 1);
    let ckpt = dir.path().join("checkpoint");
    save_checkpoint(&ckpt, &cfg, &params, SaveDtype::F32, &[]).unwrap();
    // The state a crash leaves after `rename(dir, dir.old)` and before `rename(tmp, dir)`.
    std::fs::rename(&ckpt, dir.path().join("checkpoint.old")).unwrap();
    let (_, loaded) = load_checkpoint(&ckpt).unwrap();
    assert_eq!(loaded, params);
}
