//! `prefer eval --task winrate`: each instruction's answer (or Best-of-N's pick) against the
//! reference answer, judged by the reward model; the win rate with ties at one half, and its
//! length-controlled form.

use super::{answers, engine_prompt, pct, read_rows, text_field, write_out, EvalArgs, Sampling};
use crate::cmd::generate::best_index;
use crate::data::chat_template::Message;
use crate::eval::winrate::{length_controlled, outcome};
use crate::train::objective::PairStats;
use anyhow::{bail, Result};
use serde_json::{json, Value};

/// One AlpacaEval-style row: the instruction and the reference answer.
struct Instruction {
    instruction: String,
    reference: String,
}

pub(super) fn run(args: &EvalArgs, k: usize) -> Result<Value> {
    let Some(judge) = &args.reward_model else {
        bail!("--task winrate judges answers with a reward model: give --reward-model");
    };
    let rows = read_rows(&args.data, args.limit, |row, at| {
        let needs = "winrate rows have \"instruction\" and \"output\", the reference answer";
        Ok(Instruction {
            instruction: text_field(row, "instruction", at, needs)?,
            reference: text_field(row, "output", at, needs)?,
        })
    })?;
    // The judge scores every answer below, so the engine need not.
    let how = Sampling {
        stop: Vec::new(),
        rewards: false,
    };
    let got = answers(args, rows.len(), k, how, |enc| {
        rows.iter()
            .map(|(line, row)| {
                let turn = [Message {
                    role: "user".into(),
                    content: row.instruction.clone(),
                }];
                engine_prompt(enc, enc.prompt_ids(&turn)?, &args.data, *line, "")
            })
            .collect()
    })?;
    let answers = &got.answers;
    // Every answer against its reference: one pair each, the answer as "chosen".
    let lines: Vec<String> = rows
        .iter()
        .zip(answers)
        .flat_map(|((_, r), a)| {
            a.iter().map(move |x| {
                json!({"prompt": r.instruction, "chosen": x, "rejected": r.reference}).to_string()
            })
        })
        .collect();
    let judged =
        crate::train::eval_rm::score_each_pair(judge, lines, &args.data, args.device, true)?;
    let mut at = 0;
    let mut per_row = Vec::with_capacity(rows.len());
    for a in answers {
        per_row.push(&judged[at..at + a.len()]);
        at += a.len();
    }
    let margin = |s: &PairStats| s.chosen_reward_sum - s.rejected_reward_sum;
    let n = rows.len();
    let picked: Vec<usize> = per_row
        .iter()
        .map(|r| match args.best_of {
            Some(_) => {
                let rewards: Vec<f32> = r.iter().map(|s| s.chosen_reward_sum as f32).collect();
                best_index(&rewards)
            }
            None => 0,
        })
        .collect();
    let margins: Vec<f64> = (0..n).map(|i| margin(&per_row[i][picked[i]])).collect();
    let chars = |s: &str| s.chars().count();
    let diffs: Vec<f64> = (0..n)
        .map(|i| chars(&answers[i][picked[i]]) as f64 - chars(&rows[i].1.reference) as f64)
        .collect();
    let wins: Vec<f64> = margins.iter().map(|&m| outcome(m)).collect();
    let win_rate = wins.iter().sum::<f64>() / n as f64;
    let stderr = if n > 1 {
        (wins.iter().map(|w| (w - win_rate).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
            / (n as f64).sqrt()
    } else {
        f64::NAN
    };
    let count = |f: fn(f64) -> bool| margins.iter().filter(|&&m| f(m)).count();
    let mean_len = |lens: Vec<usize>| lens.iter().sum::<usize>() as f64 / n as f64;
    let mut summary = json!({
        "task": "winrate", "rows": n,
        "win_rate": win_rate, "win_rate_stderr": stderr,
        "length_controlled_win_rate": length_controlled(&margins, &diffs),
        "wins": count(|m| m > 0.0), "ties": count(|m| m == 0.0), "losses": count(|m| m < 0.0),
        "avg_length": mean_len((0..n).map(|i| chars(&answers[i][picked[i]])).collect()),
        "reference_avg_length": mean_len(rows.iter().map(|r| chars(&r.1.reference)).collect()),
    });
    if let Some(kk) = args.best_of {
        let first = (0..n).map(|i| outcome(margin(&per_row[i][0]))).sum::<f64>() / n as f64;
        // The best outcome among the N: a win if any wins, else a tie if any ties.
        let oracle = (0..n)
            .map(|i| {
                per_row[i]
                    .iter()
                    .map(|s| outcome(margin(s)))
                    .fold(0.0, f64::max)
            })
            .sum::<f64>()
            / n as f64;
        summary["best_of"] = json!(kk);
        summary["random_win_rate"] = json!(first);
        summary["oracle_win_rate"] = json!(oracle);
    }
    if let Some(g) = got.generation {
        summary["generation"] = g;
    }
    eprintln!(
        "winrate, {n} instructions, judged by {}\n  win rate                {}  (stderr {}; {} wins, {} ties, {} losses)\n  length-controlled       {}\n  mean length             {:.0} characters (references {:.0})",
        judge.display(),
        pct(&summary["win_rate"]),
        pct(&summary["win_rate_stderr"]),
        summary["wins"],
        summary["ties"],
        summary["losses"],
        pct(&summary["length_controlled_win_rate"]),
        summary["avg_length"].as_f64().unwrap_or(0.0),
        summary["reference_avg_length"].as_f64().unwrap_or(0.0),
    );
    let lines: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, (line, row))| {
            let each: Vec<Value> = answers[i]
                .iter()
                .zip(per_row[i])
                .map(|(a, s)| {
                    json!({"output": a, "reward": s.chosen_reward_sum,
                           "reference_reward": s.rejected_reward_sum, "win": outcome(margin(s))})
                })
                .collect();
            json!({"line": line, "instruction": row.instruction,
                   "reference": row.reference, "picked": picked[i], "completions": each})
        })
        .collect();
    write_out(args.out.as_deref(), &lines, &summary)?;
    Ok(summary)
}
