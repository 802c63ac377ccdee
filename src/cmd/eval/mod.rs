//! `prefer eval --task gsm8k|ifeval|winrate`: a policy judged on a benchmark, its answers
//! generated on the rollout engine (batched, KV cache, CUDA graphs on a GPU) or read from
//! completions that already exist (`--responses`), with Best-of-N by a reward model
//! (`--best-of`). What the tasks share lives here: the options, reading rows and responses,
//! sampling answers, and the `--out` folder. Each task's prompts, scoring and table are in its
//! own file.

mod gsm8k;
mod ifeval;
mod winrate;

use super::generate::{complete, GenerateArgs};
use super::Device;
use crate::data::jsonl::read_jsonl;
use crate::data::preference::Encoder;
use crate::data::prompts::Prompt;
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
    /// Instruction following (IFEval): 25 kinds of verifiable instruction, scored strict and
    /// loose, at prompt and instruction level, as lm-evaluation-harness.
    Ifeval,
    /// Win rate against reference answers (AlpacaEval's {"instruction", "output"}), judged by
    /// --reward-model; ties count one half; also length-controlled, as AlpacaEval 2.
    Winrate,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Gsm8k => "gsm8k",
            Task::Ifeval => "ifeval",
            Task::Winrate => "winrate",
        }
    }

    /// Most new tokens per answer when --max-new-tokens is not given.
    fn default_max_new_tokens(self) -> usize {
        match self {
            Task::Gsm8k => 512,
            Task::Ifeval => 1280,
            Task::Winrate => 512,
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct EvalArgs {
    /// The benchmark.
    #[arg(long, value_enum)]
    pub task: Task,
    /// The benchmark's rows (JSONL, or parquet: a file, a folder or a glob of shards).
    /// gsm8k: {"question", "answer": "... #### N"}, as openai/gsm8k's test split;
    /// ifeval: {"key", "prompt", "instruction_id_list", "kwargs"}, as google/IFEval;
    /// winrate: {"instruction", "output": the reference answer}, as AlpacaEval's set.
    #[arg(long)]
    pub data: PathBuf,
    /// The policy: an HF Llama folder with an LM head (not needed with --responses).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Score completions that already exist, with no model: one JSON line per row of --data, in
    /// order, with "response" (a string, or a list of K strings for gsm8k's majority vote; with
    /// "rewards", a list of K numbers, Best-of-N picks among them).
    #[arg(long)]
    pub responses: Option<PathBuf>,
    /// gsm8k: few-shot exemplars before each question (the built-in eight are Wei et al.'s, as
    /// the Tulu evaluation uses).
    #[arg(long, default_value_t = 8, value_parser = whole_number, allow_negative_numbers = true)]
    pub shots: usize,
    /// gsm8k: exemplars from this JSONL ({"question", "answer"}, the answer ending "So the answer
    /// is N.") instead of the built-in ones.
    #[arg(long)]
    pub fewshot: Option<PathBuf>,
    /// Only the first N rows.
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub limit: Option<usize>,
    /// gsm8k: sampled answers per question, scored by majority vote (1: one answer, greedy by
    /// default).
    #[arg(long, default_value_t = 1, value_parser = whole_number, allow_negative_numbers = true)]
    pub n: usize,
    /// Best-of-N: sample N answers and score the one --reward-model rates highest, beside a random
    /// one and the oracle (the best of the N by the task's own metric: pass@N).
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub best_of: Option<usize>,
    /// The reward model that picks Best-of-N's answer; for winrate, also the judge.
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
    /// Sampling temperature [default: 0 (greedy) for one answer, 1 for --n or --best-of].
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Most new tokens per answer [default: gsm8k 512 (open-instruct), ifeval 1280
    /// (lm-evaluation-harness), winrate 512].
    #[arg(long, value_parser = whole_number, allow_negative_numbers = true)]
    pub max_new_tokens: Option<usize>,
    /// gsm8k: put the few-shot prompt in one user turn of the model's chat template, followed by
    /// "Answer:" (open-instruct's chat format); answers then end at EOS. Without it the prompt is
    /// plain text and an answer ends at "Question:" or a blank line. (ifeval and winrate always
    /// use the chat template, when the model has one.)
    #[arg(long)]
    pub chat_template: bool,
    /// Write completions.jsonl (every answer with its score) and summary.json here.
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

impl EvalArgs {
    fn max_new_tokens(&self) -> usize {
        self.max_new_tokens
            .unwrap_or_else(|| self.task.default_max_new_tokens())
    }
}

/// How many answers each row gets, and the checks on the options.
fn answers_per_row(args: &EvalArgs) -> Result<usize> {
    use crate::train::bounds::{check_all, Bound::*, FloatRange as R};
    check_all(&[
        Int("--n", args.n, 1..=4096),
        Int("--max-new-tokens", args.max_new_tokens(), 1..=1 << 20),
        Int("--max-batch", args.max_batch, 1..=65_536),
        Int("--shots", args.shots, 0..=64),
    ])?;
    if args.task != Task::Gsm8k && args.n != 1 {
        bail!(
            "--n {} is gsm8k's majority vote; {} scores one answer per prompt (or Best-of-N's pick: --best-of)",
            args.n,
            args.task.name()
        );
    }
    if args.task != Task::Gsm8k && (args.fewshot.is_some() || args.chat_template || args.shots != 8)
    {
        bail!(
            "--shots, --fewshot and --chat-template shape gsm8k's few-shot prompt; {} prompts are one user turn of the chat template",
            args.task.name()
        );
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
        for name in OUT_FILES {
            refuse_output_that_is_an_input(
                ("--out", &out.join(name)),
                &[
                    ("--data", Some(args.data.as_path())),
                    ("--responses", args.responses.as_deref()),
                ],
            )?;
        }
        refuse_a_folder_eval_did_not_write(out)?;
    }
    match args.task {
        Task::Gsm8k => gsm8k::run(&args, k),
        Task::Ifeval => ifeval::run(&args, k),
        Task::Winrate => winrate::run(&args, k),
    }
}

/// Every row of `path` (up to --limit), each parsed by `parse` from its JSON object; `at` names
/// the file and line for errors.
fn read_rows<T>(
    path: &Path,
    limit: Option<usize>,
    parse: impl Fn(&Map<String, Value>, &str) -> Result<T>,
) -> Result<Vec<(usize, T)>> {
    let mut rows = Vec::new();
    for rec in read_jsonl::<Map<String, Value>>(path)? {
        if limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
        let at = format!("{}:{}", path.display(), rec.line);
        rows.push((rec.line, parse(&rec.value, &at)?));
    }
    if rows.is_empty() {
        bail!("{}: no rows to evaluate", path.display());
    }
    Ok(rows)
}

/// A string field of a row, or an error naming the file, line and the fields the task needs.
fn text_field(row: &Map<String, Value>, key: &str, at: &str, needs: &str) -> Result<String> {
    match row.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => bail!("{at}: \"{key}\" is not a string"),
        None => bail!("{at}: no \"{key}\" ({needs})"),
    }
}

/// Each row's answers, and their rewards (by the reward model, or from --responses) when there
/// are any; with the generation's speed when the answers were generated.
struct Answers {
    answers: Vec<Vec<String>>,
    rewards: Option<Vec<Vec<f32>>>,
    generation: Option<Value>,
}

/// Each row's answers (and their rewards, for Best-of-N) from a --responses file.
fn read_responses(path: &Path, rows: usize) -> Result<Answers> {
    let recs = read_jsonl::<Map<String, Value>>(path)?;
    if recs.len() < rows {
        bail!(
            "{}: {} responses for {rows} rows of --data (one line per row, in order)",
            path.display(),
            recs.len()
        );
    }
    let mut answers = Vec::with_capacity(rows);
    let mut rewards = Vec::with_capacity(rows);
    for rec in recs.into_iter().take(rows) {
        let at = format!("{}:{}", path.display(), rec.line);
        // "response", or "output" as AlpacaEval's model_outputs.json has it.
        let these = match rec
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
            Some(_) => bail!("{at}: \"response\" must be a string or a non-empty list of strings"),
            None => bail!("{at}: no \"response\" (or \"output\")"),
        };
        let r = match rec.value.get("rewards") {
            None => None,
            Some(v) => {
                let r: Vec<f32> = serde_json::from_value(v.clone())
                    .map_err(|e| anyhow!("{at}: \"rewards\" must be a list of numbers: {e}"))?;
                if r.len() != these.len() {
                    bail!("{at}: {} rewards for {} responses", r.len(), these.len());
                }
                Some(r)
            }
        };
        answers.push(these);
        rewards.push(r);
    }
    Ok(Answers {
        answers,
        rewards: rewards.into_iter().collect(),
        generation: None,
    })
}

/// How a task asks the engine for answers.
struct Sampling {
    /// Strings that end an answer (besides EOS).
    stop: Vec<String>,
    /// Whether --reward-model scores every answer (Best-of-N).
    rewards: bool,
}

/// Each row's answers: read from --responses, or `k` per row generated by --model from the
/// prompts `make_prompts` builds.
fn answers(
    args: &EvalArgs,
    rows: usize,
    k: usize,
    how: Sampling,
    make_prompts: impl FnOnce(&Encoder) -> Result<Vec<Prompt>>,
) -> Result<Answers> {
    crate::signals::install();
    let got = match (&args.responses, &args.model) {
        (Some(_), Some(_)) => bail!("--responses scores existing answers: drop --model"),
        (Some(path), None) => {
            if how.rewards {
                bail!("--responses are scored as they are, with their own \"rewards\" for --best-of: drop --reward-model");
            }
            let read = read_responses(path, rows)?;
            if args.best_of.is_some() && read.rewards.is_none() {
                bail!(
                    "{}: --best-of needs \"rewards\" on every line (or generate with --model and --reward-model)",
                    path.display()
                );
            }
            read
        }
        (None, Some(model)) => sample(args, model, k, how, make_prompts)?,
        (None, None) => {
            bail!("give --model to generate answers, or --responses to score existing ones")
        }
    };
    match args.best_of {
        Some(n) if got.answers.iter().any(|a| a.len() != n) => {
            bail!("--best-of {n} needs that many answers for every row")
        }
        None if args.task != Task::Gsm8k && got.answers.iter().any(|a| a.len() > 1) => bail!(
            "{} scores one answer per row: give one \"response\" a line, or --best-of K with K of them and their \"rewards\"",
            args.task.name()
        ),
        _ => {}
    }
    Ok(got)
}

/// `k` answers per prompt from the policy on the rollout engine.
fn sample(
    args: &EvalArgs,
    model: &Path,
    k: usize,
    how: Sampling,
    make_prompts: impl FnOnce(&Encoder) -> Result<Vec<Prompt>>,
) -> Result<Answers> {
    let temperature = args.temperature.unwrap_or(if k > 1 { 1.0 } else { 0.0 });
    if k > 1 && temperature == 0.0 {
        bail!("{k} answers per prompt at --temperature 0 would all be the same: sample (--temperature > 0)");
    }
    let gen = GenerateArgs {
        model: model.to_path_buf(),
        prompts: args.data.clone(),
        out: PathBuf::new(),
        n: k,
        temperature,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: args.max_new_tokens(),
        stop: how.stop,
        seed: args.seed,
        max_batch: args.max_batch,
        kv_memory: None,
        reward_model: if how.rewards {
            args.reward_model.clone()
        } else {
            None
        },
        best_of: None,
        device: args.device,
    };
    let (_, done) = complete(&gen, make_prompts)?;
    Ok(Answers {
        answers: done.texts.chunks(k).map(<[String]>::to_vec).collect(),
        rewards: done
            .rewards
            .as_ref()
            .map(|r| r.chunks(k).map(<[f32]>::to_vec).collect()),
        generation: Some(json!({
            "generated_tokens": done.stats.generated_tokens,
            "seconds": done.seconds,
            "tokens_per_s": done.stats.generated_tokens as f64 / done.seconds.max(1e-9),
            "temperature": temperature,
        })),
    })
}

/// A prompt for the engine: `ids`, refused when it leaves no room in the model's context
/// (`hint` says what to do about it).
fn engine_prompt(
    enc: &Encoder,
    ids: Vec<u32>,
    data: &Path,
    line: usize,
    hint: &str,
) -> Result<Prompt> {
    if ids.len() >= enc.cfg.max_position_embeddings {
        bail!(
            "{}:{line}: the prompt is {} tokens, the model's context {}{hint}",
            data.display(),
            ids.len(),
            enc.cfg.max_position_embeddings
        );
    }
    Ok(Prompt {
        ids,
        fields: Map::new(),
        line,
    })
}

/// A share as a percentage for the tables, or "-" when absent.
fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{:6.2}%", 100.0 * x))
        .unwrap_or_else(|| "      -".into())
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

/// Writes `--out`'s completions.jsonl (one line per row) and summary.json, each atomically.
fn write_out(out: Option<&Path>, lines: &[Value], summary: &Value) -> Result<()> {
    let Some(out) = out else {
        return Ok(());
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::signals::check(|| format!("{} was not written", out.display()))?;
    let mut w = AtomicFile::create(&out.join("completions.jsonl"))?;
    for line in lines {
        writeln!(w, "{line}")?;
    }
    w.commit()?;
    let mut w = AtomicFile::create(&out.join("summary.json"))?;
    writeln!(w, "{}", serde_json::to_string_pretty(summary)?)?;
    w.commit()
}
