//! `prefer eval --task gsm8k`: accuracy on GSM8K with few-shot chain-of-thought prompts, of one
//! answer, a majority vote over sampled answers (`--n`), or Best-of-N's pick.

use super::{answers, engine_prompt, pct, read_rows, text_field, write_out, EvalArgs, Sampling};
use crate::cmd::generate::best_index;
use crate::data::chat_template::Message;
use crate::data::jsonl::read_jsonl;
use crate::eval::gsm8k;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// One GSM8K row: the question and the normalised gold answer.
pub(super) struct Row {
    pub question: String,
    pub gold: String,
}

pub(super) fn read(args: &EvalArgs) -> Result<Vec<(usize, Row)>> {
    read_rows(&args.data, args.limit, |row, at| {
        let needs = "gsm8k rows have \"question\" and \"answer\"";
        Ok(Row {
            question: text_field(row, "question", at, needs)?,
            gold: gsm8k::gold(&text_field(row, "answer", at, needs)?)
                .with_context(|| at.to_string())?,
        })
    })
}

fn exemplars(args: &EvalArgs) -> Result<Vec<gsm8k::Exemplar>> {
    let ex = match &args.fewshot {
        None => gsm8k::default_exemplars(),
        Some(path) => read_jsonl::<gsm8k::Exemplar>(path)?
            .into_iter()
            .map(|r| r.value)
            .collect(),
    };
    if args.shots > ex.len() {
        bail!(
            "--shots {} asks for more exemplars than there are ({})",
            args.shots,
            ex.len()
        );
    }
    Ok(ex)
}

pub(super) fn run(args: &EvalArgs, k: usize) -> Result<Value> {
    let rows = read(args)?;
    let prefix = gsm8k::fewshot_prefix(&exemplars(args)?, args.shots);
    let chat = args.chat_template;
    let how = Sampling {
        stop: if chat {
            Vec::new()
        } else {
            vec!["Question:".into(), "\n\n".into()]
        },
        // With --reward-model every answer gets its reward (Best-of-N picks by it).
        rewards: args.reward_model.is_some(),
    };
    let got = answers(args, rows.len(), k, how, |enc| {
        rows.iter()
            .map(|(line, row)| {
                let text = if chat {
                    let turn = [Message {
                        role: "user".into(),
                        content: gsm8k::chat_turn(&prefix, &row.question),
                    }];
                    let rendered = enc.template.render(&turn, true)?;
                    let sep = if rendered.ends_with(['\n', ' ']) {
                        ""
                    } else {
                        " "
                    };
                    format!("{rendered}{sep}Answer:")
                } else {
                    gsm8k::prompt(&prefix, &row.question)
                };
                let mut ids = enc.tokenizer.encode(&text, false)?;
                if let Some(bos) = enc.cfg.bos_token_id {
                    if ids.first() != Some(&bos) {
                        ids.insert(0, bos);
                    }
                }
                engine_prompt(enc, ids, &args.data, *line, ": use fewer --shots")
            })
            .collect()
    })?;
    let mut summary = score(args, &rows, &got.answers, got.rewards.as_deref());
    if let Some(g) = got.generation {
        summary["shots"] = json!(args.shots);
        summary["generation"] = g;
    }
    eprintln!("{}", table(&summary));
    let lines: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, (line, row))| {
            let each: Vec<Value> = got.answers[i]
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    let mut v = json!({
                        "response": a,
                        "extracted": gsm8k::normalise(&gsm8k::extract(a)),
                        "correct": gsm8k::is_correct(a, &row.gold),
                    });
                    if let Some(r) = &got.rewards {
                        v["reward"] = json!(r[i][j]);
                    }
                    v
                })
                .collect();
            json!({
                "line": line, "question": row.question, "gold": row.gold,
                "majority": gsm8k::majority(&got.answers[i]), "completions": each,
            })
        })
        .collect();
    write_out(args.out.as_deref(), &lines, &summary)?;
    Ok(summary)
}

/// The figures: accuracy (of the one answer, the majority vote, or Best-of-N's pick) with its
/// standard error and 95% interval; with Best-of-N also a random answer's accuracy and pass@N.
pub(super) fn score(
    args: &EvalArgs,
    rows: &[(usize, Row)],
    answers: &[Vec<String>],
    rewards: Option<&[Vec<f32>]>,
) -> Value {
    let n = rows.len();
    let right = |i: usize, a: &str| gsm8k::is_correct(a, &rows[i].1.gold);
    let mut summary = json!({"task": "gsm8k", "rows": n});
    let picked: Vec<bool> = match (args.best_of, rewards) {
        (Some(_), Some(r)) => {
            let random = (0..n).filter(|&i| right(i, &answers[i][0])).count();
            let oracle = (0..n)
                .filter(|&i| answers[i].iter().any(|a| right(i, a)))
                .count();
            summary["best_of"] = json!(answers[0].len());
            summary["random_accuracy"] = json!(random as f64 / n as f64);
            summary["oracle_accuracy"] = json!(oracle as f64 / n as f64);
            (0..n)
                .map(|i| right(i, &answers[i][best_index(&r[i])]))
                .collect()
        }
        _ => {
            summary["n"] = json!(answers[0].len());
            (0..n)
                .map(|i| gsm8k::majority(&answers[i]) == rows[i].1.gold)
                .collect()
        }
    };
    let correct = picked.iter().filter(|&&c| c).count();
    let (stderr, ci) = gsm8k::interval(correct, n);
    summary["accuracy"] = json!(correct as f64 / n as f64);
    summary["accuracy_stderr"] = json!(stderr);
    summary["accuracy_ci95"] = json!(ci);
    summary["correct"] = json!(correct);
    summary
}

fn table(s: &Value) -> String {
    let shots = match s["shots"].as_u64() {
        Some(k) => format!("{k}-shot"),
        None => "given responses".into(),
    };
    let mut t = format!(
        "gsm8k, {} questions, {shots}\n  accuracy                {}  (95% interval {} to {}, stderr {})\n",
        s["rows"],
        pct(&s["accuracy"]),
        pct(&s["accuracy_ci95"][0]),
        pct(&s["accuracy_ci95"][1]),
        pct(&s["accuracy_stderr"]),
    );
    if s.get("best_of").is_some() {
        t.push_str(&format!(
            "  best of {} by the RM   {}\n  a random one           {}\n  oracle (pass@{})       {}\n",
            s["best_of"],
            pct(&s["accuracy"]),
            pct(&s["random_accuracy"]),
            s["best_of"],
            pct(&s["oracle_accuracy"])
        ));
    } else if s["n"].as_u64().is_some_and(|n| n > 1) {
        t.push_str(&format!(
            "  (majority vote of {} sampled answers)\n",
            s["n"]
        ));
    }
    t
}
