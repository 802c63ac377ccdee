//! A reward model with another tokenizer (and chat template) than the policy scores the text of
//! each prompt and completion, tokenised its own way, in `prefer generate --reward-model` and in
//! `prefer ppo`: the same score as the reward model gives that text directly, not the score of the
//! policy's token ids read as its own.

use std::path::{Path, PathBuf};
use std::process::Command;

fn prefer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prefer"))
}

/// The reward model's chat template: unlike the policy's Tulu format.
const RM_TEMPLATE: &str = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";

/// The conversation as the reward model's template renders it (with the generation prompt: the
/// completion's text follows).
fn rm_text(user: &str, completion: &str, ended_with_eos: bool) -> String {
    format!(
        "<user>{user}</user><assistant>{completion}{}",
        if ended_with_eos { "</s>" } else { "" }
    )
}

/// A tiny policy with the byte tokenizer, and a reward model whose byte tokenizer has the same
/// 259 ids in another order (so the vocabulary sizes match, and the policy's ids mean other bytes
/// to it), with its own chat template.
fn models(root: &Path) -> (PathBuf, PathBuf) {
    use prefer::cmd::init::{run_init, InitOptions};
    let init = |dir: &Path, seed, scalar_head| {
        let opts = InitOptions {
            seed,
            scalar_head,
            dtype: prefer::model::weights::SaveDtype::F32,
            layers: None,
            init_std: Some(0.2),
            vocab_size: None,
            overwrite: false,
        };
        run_init("tiny", dir, &opts).unwrap();
    };
    let (policy, rm) = (root.join("policy"), root.join("rm"));
    init(&policy, 0, false);
    init(&rm, 1, true);
    let mut tok: serde_json::Value =
        serde_json::from_str(&prefer::data::tokenizer::byte_tokenizer_json()).unwrap();
    for id in tok["model"]["vocab"].as_object_mut().unwrap().values_mut() {
        *id = (255 - id.as_u64().unwrap()).into();
    }
    std::fs::write(rm.join("tokenizer.json"), tok.to_string()).unwrap();
    std::fs::write(rm.join("chat_template.jinja"), RM_TEMPLATE).unwrap();
    (policy, rm)
}

/// The reward model's score of each line of `lines` ({"text"} or {"input_ids"}), by
/// `prefer logprobs`.
fn rewards(rm: &Path, lines: &[serde_json::Value], dir: &Path) -> Vec<f64> {
    let (input, out) = (dir.join("score_in.jsonl"), dir.join("score_out.jsonl"));
    let text: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    std::fs::write(&input, text).unwrap();
    let o = prefer()
        .args(["logprobs", "--device", "cpu", "--model"])
        .arg(rm)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reward"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// The policy's ids of a one-turn prompt (Tulu format, byte tokens, BOS first).
fn policy_prompt_ids(user: &str) -> Vec<u64> {
    let mut ids = vec![256];
    ids.extend(
        format!("<|user|>\n{user}\n<|assistant|>\n")
            .bytes()
            .map(u64::from),
    );
    ids
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Each completion's score against the reward model's own score of its text, and of the policy's
/// ids: equal to the first (within f32 noise), unlike the second.
fn check_scores(
    rm: &Path,
    dir: &Path,
    users: &[&str],
    rows: &[(usize, String, Vec<u64>, bool, f64)],
) {
    let by_text: Vec<serde_json::Value> = rows
        .iter()
        .map(|(p, text, _, eos, _)| serde_json::json!({"text": rm_text(users[*p], text, *eos)}))
        .collect();
    let by_ids: Vec<serde_json::Value> = rows
        .iter()
        .map(|(p, _, ids, _, _)| {
            let mut all = policy_prompt_ids(users[*p]);
            all.extend(ids);
            serde_json::json!({ "input_ids": all })
        })
        .collect();
    let (want, ids_path) = (rewards(rm, &by_text, dir), rewards(rm, &by_ids, dir));
    let mut apart = 0;
    for (((.., got), want), ids_path) in rows.iter().zip(&want).zip(&ids_path) {
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "score {got} vs the reward model's own score of the text {want}"
        );
        if (got - ids_path).abs() > 1e-3 {
            apart += 1;
        }
    }
    assert!(
        apart == rows.len(),
        "only {apart} of {} scores differ from the token-id path's",
        rows.len()
    );
}

#[test]
fn best_of_n_scores_the_text_with_the_reward_models_own_tokenizer_and_template() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, rm) = models(dir.path());
    let users = ["hello there", "what is 2+2?"];
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        serde_json::json!({"prompt": users[0]}).to_string()
            + "\n"
            + &serde_json::json!({"messages": [{"role": "user", "content": users[1]}]}).to_string()
            + "\n",
    )
    .unwrap();
    let out = dir.path().join("gen.jsonl");
    let o = prefer()
        .args([
            "generate",
            "--device",
            "cpu",
            "--n",
            "3",
            "--max-new-tokens",
            "8",
        ])
        .arg("--model")
        .arg(&policy)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(&out)
        .arg("--reward-model")
        .arg(&rm)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("has another tokenizer or chat template than the policy"),
        "{e}"
    );
    let rows: Vec<_> = jsonl(&out)
        .iter()
        .map(|l| {
            (
                l["prompt_index"].as_u64().unwrap() as usize,
                l["text"].as_str().unwrap().to_string(),
                serde_json::from_value::<Vec<u64>>(l["completion_ids"].clone()).unwrap(),
                l["finish_reason"] == "eos",
                l["reward"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 6);
    check_scores(&rm, dir.path(), &users, &rows);

    // With the policy's own tokenizer and template the ids pass through as before.
    let same = dir.path().join("rm_same");
    std::fs::create_dir(&same).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(rm.join(f), same.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(policy.join(f), same.join(f)).unwrap();
    }
    let o = prefer()
        .args([
            "generate",
            "--device",
            "cpu",
            "--n",
            "3",
            "--max-new-tokens",
            "8",
        ])
        .arg("--model")
        .arg(&policy)
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(&out)
        .arg("--reward-model")
        .arg(&same)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !e.contains("another tokenizer"),
        "{e}"
    );
    let lines = jsonl(&out);
    let by_ids: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| {
            let mut all = policy_prompt_ids(users[l["prompt_index"].as_u64().unwrap() as usize]);
            all.extend(serde_json::from_value::<Vec<u64>>(l["completion_ids"].clone()).unwrap());
            serde_json::json!({ "input_ids": all })
        })
        .collect();
    for (l, want) in lines.iter().zip(rewards(&same, &by_ids, dir.path())) {
        let got = l["reward"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
}

#[test]
fn ppo_scores_the_text_with_the_reward_models_tokenizer_and_keeps_the_value_model_on_the_policys() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, rm) = models(dir.path());
    let users = ["hello there", "be kind", "what is 2+2?"];
    let prompts = dir.path().join("prompts.jsonl");
    let text: String = users
        .iter()
        .map(|u| serde_json::json!({ "prompt": u }).to_string() + "\n")
        .collect();
    std::fs::write(&prompts, text).unwrap();
    let run = |algo: &str, out: &Path| {
        prefer()
            .args(["ppo", "--device", "cpu", "--algo", algo])
            .args(["--prompt-batch-size", "3", "--rollouts-per-prompt", "2"])
            .args([
                "--minibatch-size",
                "6",
                "--max-new-tokens",
                "8",
                "--max-steps",
                "1",
            ])
            .arg("--policy")
            .arg(&policy)
            .arg("--reward-model")
            .arg(&rm)
            .arg("--prompts")
            .arg(&prompts)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let out = dir.path().join("rloo");
    let o = run("rloo", &out);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("has another tokenizer or chat template than the policy"),
        "{e}"
    );
    let rows: Vec<_> = jsonl(&out.join("rollouts.jsonl"))
        .iter()
        .map(|l| {
            (
                l["prompt_index"].as_u64().unwrap() as usize,
                l["text"].as_str().unwrap().to_string(),
                serde_json::from_value::<Vec<u64>>(l["completion_ids"].clone()).unwrap(),
                l["finish_reason"] == "eos",
                l["score"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 6);
    check_scores(&rm, dir.path(), &users, &rows);

    // PPO's value model starts from the reward model, but it must read the policy's tokens.
    let o = run("ppo", &dir.path().join("ppo"));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("a value model reads the policy's own tokens") && e.contains("--value-model"),
        "{e}"
    );
}
