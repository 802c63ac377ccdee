//! `prefer eval --task ifeval`: IFEval's prompts, each one user turn of the policy's chat
//! template, answered greedily (lm-evaluation-harness: greedy, up to 1280 new tokens) and scored
//! by [`crate::eval::ifeval`]: prompt- and instruction-level accuracy, strict and loose.

use super::{answers, engine_prompt, pct, read_rows, write_out, EvalArgs, Sampling};
use crate::cmd::generate::best_index;
use crate::data::chat_template::Message;
use crate::eval::ifeval::{judge, read_row, scores, Prompt, Scores, Verdict};
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

/// One IFEval row: its key, the prompt and its instructions.
struct Row {
    key: Value,
    prompt: String,
    instructions: Prompt,
}

fn read(args: &EvalArgs) -> Result<Vec<(usize, Row)>> {
    read_rows(&args.data, args.limit, |row, at| {
        let (prompt, instructions) = read_row(row).with_context(|| at.to_string())?;
        Ok(Row {
            key: row.get("key").cloned().unwrap_or(Value::Null),
            prompt,
            instructions,
        })
    })
}

fn scores_json(s: &Scores, prefix: &str) -> Map<String, Value> {
    [
        ("prompt_level_strict_acc", s.prompt_level_strict_acc),
        ("inst_level_strict_acc", s.inst_level_strict_acc),
        ("prompt_level_loose_acc", s.prompt_level_loose_acc),
        ("inst_level_loose_acc", s.inst_level_loose_acc),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{prefix}{k}"), json!(v)))
    .collect()
}

/// The oracle's four figures: for each figure on its own, each prompt's best answer by that
/// figure (pass@N for the prompt-level ones).
fn oracle_scores(verdicts: &[Vec<Verdict>]) -> Scores {
    let followed = |b: &[bool]| b.iter().filter(|&&x| x).count();
    let prompts = verdicts.len() as f64;
    let insts = verdicts.iter().map(|v| v[0].strict.len()).sum::<usize>() as f64;
    let best = |pick: &dyn Fn(&Verdict) -> usize| {
        verdicts
            .iter()
            .map(|v| v.iter().map(pick).max().unwrap_or(0))
            .sum::<usize>() as f64
    };
    let all = |b: &[bool]| b.iter().all(|&x| x) as usize;
    Scores {
        prompt_level_strict_acc: best(&|v| all(&v.strict)) / prompts,
        inst_level_strict_acc: best(&|v| followed(&v.strict)) / insts,
        prompt_level_loose_acc: best(&|v| all(&v.loose)) / prompts,
        inst_level_loose_acc: best(&|v| followed(&v.loose)) / insts,
    }
}

pub(super) fn run(args: &EvalArgs, k: usize) -> Result<Value> {
    let rows = read(args)?;
    let how = Sampling {
        stop: Vec::new(),
        // With --reward-model every answer gets its reward (Best-of-N picks by it).
        rewards: args.reward_model.is_some(),
    };
    let got = answers(args, rows.len(), k, how, |enc| {
        rows.iter()
            .map(|(line, row)| {
                let turn = [Message {
                    role: "user".into(),
                    content: row.prompt.clone(),
                }];
                engine_prompt(enc, enc.prompt_ids(&turn)?, &args.data, *line, "")
            })
            .collect()
    })?;
    let verdicts: Vec<Vec<Verdict>> = rows
        .iter()
        .zip(&got.answers)
        .map(|((_, row), a)| a.iter().map(|x| judge(&row.instructions, x)).collect())
        .collect();
    let picked: Vec<usize> = match (&args.best_of, &got.rewards) {
        (Some(_), Some(r)) => r.iter().map(|r| best_index(r)).collect(),
        _ => vec![0; rows.len()],
    };
    let chosen: Vec<Verdict> = (0..rows.len())
        .map(|i| verdicts[i][picked[i]].clone())
        .collect();
    let mut summary = json!({"task": "ifeval", "rows": rows.len(),
        "instructions": chosen.iter().map(|v| v.strict.len()).sum::<usize>()});
    let main = scores(&chosen);
    summary
        .as_object_mut()
        .expect("an object")
        .extend(scores_json(&main, ""));
    if let Some(n) = args.best_of {
        let first: Vec<Verdict> = verdicts.iter().map(|v| v[0].clone()).collect();
        let map = summary.as_object_mut().expect("an object");
        map.insert("best_of".into(), json!(n));
        map.extend(scores_json(&scores(&first), "random_"));
        map.extend(scores_json(&oracle_scores(&verdicts), "oracle_"));
    }
    if let Some(g) = got.generation {
        summary["generation"] = g;
    }
    eprintln!("{}", table(&summary));
    let lines: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, (line, row))| {
            let each: Vec<Value> = got.answers[i]
                .iter()
                .zip(&verdicts[i])
                .enumerate()
                .map(|(j, (a, v))| {
                    let mut x = json!({"response": a, "strict": v.strict, "loose": v.loose,
                        "follow_all_instructions": v.strict.iter().all(|&b| b)});
                    if let Some(r) = &got.rewards {
                        x["reward"] = json!(r[i][j]);
                    }
                    x
                })
                .collect();
            json!({"line": line, "key": row.key, "prompt": row.prompt,
                   "instruction_id_list": row.instructions.ids, "picked": picked[i],
                   "completions": each})
        })
        .collect();
    write_out(args.out.as_deref(), &lines, &summary)?;
    Ok(summary)
}

fn table(s: &Value) -> String {
    let mut t = format!(
        "ifeval, {} prompts, {} instructions\n                 strict    loose\n  prompt level  {}  {}\n  instruction   {}  {}\n",
        s["rows"],
        s["instructions"],
        pct(&s["prompt_level_strict_acc"]),
        pct(&s["prompt_level_loose_acc"]),
        pct(&s["inst_level_strict_acc"]),
        pct(&s["inst_level_loose_acc"]),
    );
    if s.get("best_of").is_some() {
        t.push_str(&format!(
            "  (best of {} by the reward model; prompt level, strict: a random one {}, oracle {})\n",
            s["best_of"],
            pct(&s["random_prompt_level_strict_acc"]),
            pct(&s["oracle_prompt_level_strict_acc"]),
        ));
    }
    t
}
