//! `prefer eval --task gsm8k`: a policy's accuracy on GSM8K, generated on the rollout engine or
//! scored from completions that already exist (`--responses`), with majority vote over sampled
//! answers (`--n`) and Best-of-N by a reward model (`--best-of`).

use super::generate::{best_index, complete, GenerateArgs};
use super::Device;
use crate::data::chat_template::Message;
use crate::data::jsonl::read_jsonl;
use crate::data::prompts::Prompt;
use crate::eval::gsm8k;
use crate::output::{refuse_output_that_is_an_input, AtomicFile};
use crate::train::bounds::whole_number;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// Grade-school maths: 8-shot chain of thought, the last number against GSM8K's "#### N".
    Gsm8k,
    /// Win rate against reference answers (AlpacaEval's {"instruction", "output"}), judged by
    /// --reward-model; ties count one half; also length-controlled, as AlpacaEval 2.
    Winrate,
}

#[derive(clap::Args, Clone, Debug)]
pub struct EvalArgs {
    /// The benchmark.
    #[arg(long, value_enum)]
    pub task: Task,
    /// The benchmark's rows (JSONL or parquet). gsm8k: {"question": ..., "answer": "... #### N"},
    /// as openai/gsm8k's test split; winrate: {"instruction": ..., "output": the reference
    /// answer}, as AlpacaEval's set.
    #[arg(long)]
    pub data: PathBuf,
    /// The policy: an HF Llama folder with an LM head (not needed with --responses).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Score completions that already exist, with no model: one JSON line per row of --data, in
    /// order, with "response" (a string, or a list of K strings for the majority vote; with
    /// "rewards", a list of K numbers, Best-of-N picks among them).
    #[arg(long)]
    pub responses: Option<PathBuf>,
    /// Few-shot exemplars before each question (the built-in eight are Wei et al.'s, as the Tulu
    /// evaluation uses).
    #[arg(long, default_value_t = 8, value_parser = whole_number, allow_negative_numbers = true)]
    pub shots: usize,
    /// Exemplars from this JSONL ({"question", "answer"}, the answer ending "So the answer is N.")
    /// instead of the built-in ones.
    #[arg(long)]
    pub fewshot: Option<PathBuf>,
    /// Only the first N rows.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub limit: Option<usize>,
    /// Sampled answers per question, scored by majority vote (1: one answer, greedy by default).
    #[arg(long, default_value_t = 1, value_parser = whole_number, allow_negative_numbers = true)]
    pub n: usize,
    /// Best-of-N: sample N answers and score the one --reward-model rates highest, beside a random
    /// one and the oracle (any of the N right: pass@N).
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub best_of: Option<usize>,
    /// The reward model that picks Best-of-N's answer; for winrate, also the judge.
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
    /// Sampling temperature [default: 0 (greedy) for one answer, 1 for --n or --best-of].
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Most new tokens per answer (open-instruct: 512).
    #[arg(long, default_value_t = 512, value_parser = whole_number, allow_negative_numbers = true)]
    pub max_new_tokens: usize,
    /// Put the few-shot prompt in one user turn of the model's chat template, followed by
    /// "Answer:" (open-instruct's chat format); answers then end at EOS. Without it the prompt is
    /// plain text and an answer ends at "Question:" or a blank line.
    #[arg(long)]
    pub chat_template: bool,
    /// Write completions.jsonl (every answer, what was extracted, whether it is right) and
    /// summary.json here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0, value_parser = crate::train::bounds::seed, allow_negative_numbers = true)]
    pub seed: u64,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 64, value_parser = whole_number, allow_negative_numbers = true)]
    pub max_batch: usize,
    /// cpu, cuda, emu (the software GPU) or auto.
    #[arg(long, value_enum, env = "PREFER_DEVICE", default_value_t = Device::Auto)]
    pub device: Device,
}

/// One GSM8K row: where it came from, the question and the normalised gold answer.
struct Row {
    line: usize,
    question: String,
    gold: String,
}

fn read_rows(path: &Path, limit: Option<usize>) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for rec in read_jsonl::<Map<String, Value>>(path)? {
        if limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
        let at = format!("{}:{}", path.display(), rec.line);
        let text = |key: &str| match rec.value.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(anyhow!("{at}: \"{key}\" is not a string")),
            None => Err(anyhow!(
                "{at}: no \"{key}\" (gsm8k rows have \"question\" and \"answer\")"
            )),
        };
        let question = text("question")?;
        let gold = gsm8k::gold(&text("answer")?).with_context(|| at.clone())?;
        rows.push(Row {
            line: rec.line,
            question,
            gold,
        });
    }
    if rows.is_empty() {
        bail!("{}: no rows to evaluate", path.display());
    }
    Ok(rows)
}

/// One row's answers, and their rewards for Best-of-N when given.
type Answers = (Vec<String>, Option<Vec<f32>>);

/// Each row's answers (and their rewards, for Best-of-N) from a --responses file.
fn read_responses(path: &Path, rows: usize) -> Result<Vec<Answers>> {
    let recs = read_jsonl::<Map<String, Value>>(path)?;
    if recs.len() < rows {
        bail!(
            "{}: {} responses for {rows} rows of --data (one line per row, in order)",
            path.display(),
            recs.len()
        );
    }
    recs.into_iter()
        .take(rows)
        .map(|rec| {
            let at = format!("{}:{}", path.display(), rec.line);
            // "response", or "output" as AlpacaEval's model_outputs.json has it.
            let answers = match rec
                .value
                .get("response")
                .or_else(|| rec.value.get("output"))
            {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(a)) if !a.is_empty() => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| anyhow!("{at}: \"response\" holds a non-string"))
                    })
                    .collect::<Result<_>>()?,
                Some(_) => {
                    bail!("{at}: \"response\" must be a string or a non-empty list of strings")
                }
                None => bail!("{at}: no \"response\" (or \"output\")"),
            };
            let rewards = match rec.value.get("rewards") {
                None => None,
                Some(v) => {
                    let r: Vec<f32> = serde_json::from_value(v.clone())
                        .map_err(|e| anyhow!("{at}: \"rewards\" must be a list of numbers: {e}"))?;
                    if r.len() != answers.len() {
                        bail!("{at}: {} rewards for {} responses", r.len(), answers.len());
                    }
                    Some(r)
                }
            };
            Ok((answers, rewards))
        })
        .collect()
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

/// How many answers each row gets, and the checks on the options.
fn answers_per_row(args: &EvalArgs) -> Result<usize> {
    use crate::train::bounds::{check_all, Bound::*, FloatRange as R};
    check_all(&[
        Int("--n", args.n, 1..=4096),
        Int("--max-new-tokens", args.max_new_tokens, 1..=1 << 20),
        Int("--max-batch", args.max_batch, 1..=65_536),
        Int("--shots", args.shots, 0..=64),
    ])?;
    if args.task == Task::Winrate && args.n != 1 {
        bail!("--n {} is gsm8k's majority vote; winrate judges one answer per instruction (or Best-of-N's pick: --best-of)", args.n);
    }
    if let Some(t) = args.temperature {
        check_all(&[Float("--temperature", t, R::closed(0.0, 100.0))])?;
    }
    match args.best_of {
        Some(k) => {
            crate::train::bounds::check_int("--best-of", k, 1..=4096)?;
            if args.n != 1 {
                bail!("--best-of {k} scores one answer per question, picked by the reward model; drop --n {}", args.n);
            }
            if args.reward_model.is_none() && args.responses.is_none() {
                bail!("--best-of {k} picks by a reward model: give --reward-model");
            }
            Ok(k)
        }
        None => Ok(args.n),
    }
}

pub fn run_eval(args: EvalArgs) -> Result<Value> {
    let k = answers_per_row(&args)?;
    if let Some(out) = &args.out {
        for name in ["completions.jsonl", "summary.json"] {
            let file = out.join(name);
            refuse_output_that_is_an_input(
                ("--out", &file),
                &[
                    ("--data", Some(args.data.as_path())),
                    ("--responses", args.responses.as_deref()),
                ],
            )?;
        }
    }
    if args.task == Task::Winrate {
        return run_winrate(&args, k);
    }
    let rows = read_rows(&args.data, args.limit)?;
    if let Some(out) = &args.out {
        refuse_a_folder_eval_did_not_write(out)?;
    }
    crate::signals::install();
    let (answers, rewards, generated) = match &args.responses {
        Some(path) => {
            if args.model.is_some() {
                bail!("--responses scores existing answers: drop --model");
            }
            let read = read_responses(path, rows.len())?;
            let rewards: Option<Vec<Vec<f32>>> = read.iter().map(|(_, r)| r.clone()).collect();
            if args.best_of.is_some() && rewards.is_none() {
                bail!(
                    "{}: --best-of needs \"rewards\" on every line (or generate with --model and --reward-model)",
                    path.display()
                );
            }
            (read.into_iter().map(|(a, _)| a).collect(), rewards, None)
        }
        None => {
            let Some(model) = &args.model else {
                bail!("give --model to generate answers, or --responses to score existing ones");
            };
            generate(&args, model, &rows, k)?
        }
    };
    let summary = score(&args, &rows, &answers, rewards.as_deref(), generated)?;
    if let Some(out) = &args.out {
        write_out(out, &rows, &answers, rewards.as_deref(), &summary)?;
    }
    Ok(summary)
}

/// Generates `k` answers per row on the rollout engine; their rewards with --reward-model.
#[allow(clippy::type_complexity)]
fn generate(
    args: &EvalArgs,
    model: &Path,
    rows: &[Row],
    k: usize,
) -> Result<(Vec<Vec<String>>, Option<Vec<Vec<f32>>>, Option<Value>)> {
    let exemplars = exemplars(args)?;
    let prefix = gsm8k::fewshot_prefix(&exemplars, args.shots);
    let temperature = args.temperature.unwrap_or(if k > 1 { 1.0 } else { 0.0 });
    if k > 1 && temperature == 0.0 {
        bail!("{k} answers per question at --temperature 0 would all be the same: sample (--temperature > 0)");
    }
    let gen = GenerateArgs {
        model: model.to_path_buf(),
        prompts: args.data.clone(),
        out: PathBuf::new(),
        n: k,
        temperature,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: args.max_new_tokens,
        stop: if args.chat_template {
            Vec::new()
        } else {
            vec!["Question:".into(), "\n\n".into()]
        },
        seed: args.seed,
        max_batch: args.max_batch,
        kv_memory: None,
        reward_model: args.reward_model.clone(),
        best_of: None,
        device: args.device,
    };
    let chat = args.chat_template;
    let (_, done) = complete(&gen, |enc| {
        rows.iter()
            .map(|row| {
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
                if ids.len() >= enc.cfg.max_position_embeddings {
                    bail!(
                        "{}:{}: the prompt is {} tokens, the model's context {}: use fewer --shots",
                        args.data.display(),
                        row.line,
                        ids.len(),
                        enc.cfg.max_position_embeddings
                    );
                }
                Ok(Prompt {
                    ids,
                    fields: Map::new(),
                    line: row.line,
                })
            })
            .collect()
    })?;
    let answers: Vec<Vec<String>> = done.texts.chunks(k).map(<[String]>::to_vec).collect();
    let rewards = done
        .rewards
        .as_ref()
        .map(|r| r.chunks(k).map(<[f32]>::to_vec).collect());
    let speed = json!({
        "generated_tokens": done.stats.generated_tokens,
        "seconds": done.seconds,
        "tokens_per_s": done.stats.generated_tokens as f64 / done.seconds.max(1e-9),
        "temperature": temperature,
    });
    Ok((answers, rewards, Some(speed)))
}

/// The figures: accuracy (of the one answer, the majority vote, or Best-of-N's pick) with its
/// standard error and 95% interval; with Best-of-N also a random answer's accuracy and pass@N.
fn score(
    args: &EvalArgs,
    rows: &[Row],
    answers: &[Vec<String>],
    rewards: Option<&[Vec<f32>]>,
    generated: Option<Value>,
) -> Result<Value> {
    let n = rows.len();
    let interval = |correct: usize| {
        let (stderr, ci) = gsm8k::interval(correct, n);
        (correct as f64 / n as f64, stderr, ci)
    };
    let right = |row: &Row, a: &str| gsm8k::is_correct(a, &row.gold);
    let mut summary = json!({"task": "gsm8k", "rows": n});
    if generated.is_some() {
        summary["shots"] = json!(args.shots);
    }
    let picked: Vec<bool> = match (args.best_of, rewards) {
        (Some(_), Some(r)) => {
            let random = (0..n).filter(|&i| right(&rows[i], &answers[i][0])).count();
            let oracle = (0..n)
                .filter(|&i| answers[i].iter().any(|a| right(&rows[i], a)))
                .count();
            summary["best_of"] = json!(answers[0].len());
            summary["random_accuracy"] = json!(random as f64 / n as f64);
            summary["oracle_accuracy"] = json!(oracle as f64 / n as f64);
            (0..n)
                .map(|i| right(&rows[i], &answers[i][best_index(&r[i])]))
                .collect()
        }
        _ => {
            summary["n"] = json!(answers[0].len());
            (0..n)
                .map(|i| gsm8k::majority(&answers[i]) == rows[i].gold)
                .collect()
        }
    };
    let correct = picked.iter().filter(|&&c| c).count();
    let (acc, stderr, ci) = interval(correct);
    summary["accuracy"] = json!(acc);
    summary["accuracy_stderr"] = json!(stderr);
    summary["accuracy_ci95"] = json!(ci);
    summary["correct"] = json!(correct);
    if let Some(g) = generated {
        summary["generation"] = g;
    }
    eprintln!("{}", table(&summary));
    Ok(summary)
}

fn table(s: &Value) -> String {
    let pct = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{:6.2}%", 100.0 * x))
            .unwrap_or_else(|| "      -".into())
    };
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

/// What `--out` holds after a run.
const OUT_FILES: [&str; 2] = ["completions.jsonl", "summary.json"];

/// `--out` must be absent, empty, or an earlier evaluation's folder (only [`OUT_FILES`] in it):
/// never a folder of the user's whose files these would replace.
fn refuse_a_folder_eval_did_not_write(out: &Path) -> Result<()> {
    use crate::output::{inspect_folder, FolderState};
    match inspect_folder(out)? {
        FolderState::Absent | FolderState::Empty => Ok(()),
        FolderState::Foreign(names) if names.iter().all(|n| OUT_FILES.contains(&n.as_str())) => {
            Ok(())
        }
        FolderState::NotAFolder => bail!("--out {} is a file; give a folder", out.display()),
        _ => bail!(
            "--out {} holds files an evaluation did not write; give a new or empty folder (an earlier evaluation's folder, with only {}, is replaced)",
            out.display(),
            OUT_FILES.join(" and ")
        ),
    }
}

fn write_out(
    out: &Path,
    rows: &[Row],
    answers: &[Vec<String>],
    rewards: Option<&[Vec<f32>]>,
    summary: &Value,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::signals::check(|| format!("{} was not written", out.display()))?;
    let mut w = AtomicFile::create(&out.join("completions.jsonl"))?;
    for (i, row) in rows.iter().enumerate() {
        let each: Vec<Value> = answers[i]
            .iter()
            .enumerate()
            .map(|(j, a)| {
                let mut v = json!({
                    "response": a,
                    "extracted": gsm8k::normalise(&gsm8k::extract(a)),
                    "correct": gsm8k::is_correct(a, &row.gold),
                });
                if let Some(r) = rewards {
                    v["reward"] = json!(r[i][j]);
                }
                v
            })
            .collect();
        let line = json!({
            "line": row.line, "question": row.question, "gold": row.gold,
            "majority": gsm8k::majority(&answers[i]), "completions": each,
        });
        writeln!(w, "{line}")?;
    }
    w.commit()?;
    let mut w = AtomicFile::create(&out.join("summary.json"))?;
    writeln!(w, "{}", serde_json::to_string_pretty(summary)?)?;
    w.commit()
}

/// One AlpacaEval-style row: the instruction and the reference answer.
struct Instruction {
    line: usize,
    instruction: String,
    reference: String,
}

fn read_instructions(path: &Path, limit: Option<usize>) -> Result<Vec<Instruction>> {
    let mut rows = Vec::new();
    for rec in read_jsonl::<Map<String, Value>>(path)? {
        if limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
        let at = format!("{}:{}", path.display(), rec.line);
        let text = |key: &str| {
            match rec.value.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(anyhow!("{at}: \"{key}\" is not a string")),
            None => Err(anyhow!(
                "{at}: no \"{key}\" (winrate rows have \"instruction\" and \"output\", the reference answer)"
            )),
        }
        };
        rows.push(Instruction {
            line: rec.line,
            instruction: text("instruction")?,
            reference: text("output")?,
        });
    }
    if rows.is_empty() {
        bail!("{}: no rows to evaluate", path.display());
    }
    Ok(rows)
}

/// `--task winrate`: each instruction's answer (or Best-of-N's pick) against the reference,
/// judged by the reward model.
fn run_winrate(args: &EvalArgs, k: usize) -> Result<Value> {
    use crate::eval::winrate::{length_controlled, outcome};
    let Some(judge) = &args.reward_model else {
        bail!("--task winrate judges answers with a reward model: give --reward-model");
    };
    let rows = read_instructions(&args.data, args.limit)?;
    if let Some(out) = &args.out {
        refuse_a_folder_eval_did_not_write(out)?;
    }
    crate::signals::install();
    let (answers, generated) = match &args.responses {
        Some(path) => {
            if args.model.is_some() {
                bail!("--responses scores existing answers: drop --model");
            }
            let read = read_responses(path, rows.len())?;
            (read.into_iter().map(|(a, _)| a).collect::<Vec<_>>(), None)
        }
        None => {
            let Some(model) = &args.model else {
                bail!("give --model to generate answers, or --responses to judge existing ones");
            };
            generate_answers(args, model, &rows, k)?
        }
    };
    if args
        .best_of
        .is_some_and(|k| answers.iter().any(|a| a.len() != k))
    {
        bail!("--best-of needs the same number of answers for every instruction");
    }
    // Every answer against its reference: one pair each, the answer as "chosen".
    let lines: Vec<String> = rows
        .iter()
        .zip(&answers)
        .flat_map(|(r, a)| {
            a.iter().map(move |x| {
                json!({"prompt": r.instruction, "chosen": x, "rejected": r.reference}).to_string()
            })
        })
        .collect();
    let judged =
        crate::train::eval_rm::score_each_pair(judge, lines, &args.data, args.device, true)?;
    let mut at = 0;
    let mut per_row = Vec::with_capacity(rows.len());
    for a in &answers {
        per_row.push(&judged[at..at + a.len()]);
        at += a.len();
    }
    let margin =
        |s: &crate::train::objective::PairStats| s.chosen_reward_sum - s.rejected_reward_sum;
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
    let diffs: Vec<f64> = (0..n)
        .map(|i| {
            answers[i][picked[i]].chars().count() as f64 - rows[i].reference.chars().count() as f64
        })
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
        "avg_length": mean_len((0..n).map(|i| answers[i][picked[i]].chars().count()).collect()),
        "reference_avg_length": mean_len(rows.iter().map(|r| r.reference.chars().count()).collect()),
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
    if let Some(g) = generated {
        summary["generation"] = g;
    }
    let pct = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{:6.2}%", 100.0 * x))
            .unwrap_or_default()
    };
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
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        crate::signals::check(|| format!("{} was not written", out.display()))?;
        let mut w = AtomicFile::create(&out.join("completions.jsonl"))?;
        for (i, row) in rows.iter().enumerate() {
            let each: Vec<Value> = answers[i]
                .iter()
                .zip(per_row[i])
                .map(|(a, s)| {
                    json!({"output": a, "reward": s.chosen_reward_sum,
                           "reference_reward": s.rejected_reward_sum, "win": outcome(margin(s))})
                })
                .collect();
            let line = json!({"line": row.line, "instruction": row.instruction,
                              "reference": row.reference, "picked": picked[i], "completions": each});
            writeln!(w, "{line}")?;
        }
        w.commit()?;
        let mut w = AtomicFile::create(&out.join("summary.json"))?;
        writeln!(w, "{}", serde_json::to_string_pretty(&summary)?)?;
        w.commit()?;
    }
    Ok(summary)
}

/// `k` answers per instruction from the policy, each instruction one user turn of its chat
/// template; answers end at EOS.
fn generate_answers(
    args: &EvalArgs,
    model: &Path,
    rows: &[Instruction],
    k: usize,
) -> Result<(Vec<Vec<String>>, Option<Value>)> {
    let temperature = args.temperature.unwrap_or(if k > 1 { 1.0 } else { 0.0 });
    if k > 1 && temperature == 0.0 {
        bail!("{k} answers per instruction at --temperature 0 would all be the same: sample (--temperature > 0)");
    }
    let gen = GenerateArgs {
        model: model.to_path_buf(),
        prompts: args.data.clone(),
        out: PathBuf::new(),
        n: k,
        temperature,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: args.max_new_tokens,
        stop: Vec::new(),
        seed: args.seed,
        max_batch: args.max_batch,
        kv_memory: None,
        reward_model: None,
        best_of: None,
        device: args.device,
    };
    let (_, done) = complete(&gen, |enc| {
        rows.iter()
            .map(|row| {
                let turn = [Message {
                    role: "user".into(),
                    content: row.instruction.clone(),
                }];
                let ids = enc.prompt_ids(&turn)?;
                if ids.len() >= enc.cfg.max_position_embeddings {
                    bail!(
                        "{}:{}: the instruction is {} tokens, the model's context {}",
                        args.data.display(),
                        row.line,
                        ids.len(),
                        enc.cfg.max_position_embeddings
                    );
                }
                let mut fields = Map::new();
                fields.insert("prompt".into(), row.instruction.clone().into());
                Ok(Prompt {
                    ids,
                    fields,
                    line: row.line,
                })
            })
            .collect()
    })?;
    let answers = done.texts.chunks(k).map(<[String]>::to_vec).collect();
    let speed = json!({
        "generated_tokens": done.stats.generated_tokens,
        "seconds": done.seconds,
        "tokens_per_s": done.stats.generated_tokens as f64 / done.seconds.max(1e-9),
        "temperature": temperature,
    });
    Ok((answers, Some(speed)))
}
