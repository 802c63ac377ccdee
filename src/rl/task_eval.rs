//! `prefer ppo --eval-task gsm8k|ifeval --eval-data FILE --eval-every K`: the policy scored on a
//! benchmark during training, before the first iteration, every K iterations and after the last,
//! each a row of eval.jsonl and a panel of curves.png: the paper's "performance over training"
//! figure, without stopping the run to evaluate a saved checkpoint.
//!
//! The answers are greedy, on the same rollout engine as the rollouts (the policy's current
//! weights, no copy), with the prompts and scoring of `prefer eval --task ...`:
//! - gsm8k: the built-in 8-shot chain-of-thought prompt as plain text, answers ending at
//!   "Question:" or a blank line, scored by the harness's flexible extraction;
//! - ifeval: each prompt one user turn of the policy's chat template, the four IFEval scores.
//!
//! Each rank answers its share of the rows; the counts are summed over ranks.

use super::setup::{kv_request, Setup};
use crate::data::chat_template::{ChatTemplate, Message};
use crate::data::jsonl::read_jsonl;
use crate::dist::group::Group;
use crate::eval::{gsm8k, ifeval};
use crate::generate::kv_budget::block_bytes;
use crate::generate::stopping::StopStrings;
use crate::generate::{Engine, EngineOptions};
use crate::model::Llama;
use crate::ops::cpu::SamplingParams;
use crate::ops::Backend;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The benchmarks a run can be scored on while it trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalTask {
    /// GSM8K accuracy (rows {"question", "answer": "... #### N"}).
    Gsm8k,
    /// IFEval's four scores (rows {"prompt", "instruction_id_list", "kwargs"}).
    Ifeval,
}

impl EvalTask {
    /// Most new tokens per answer by default: open-instruct's 512 for GSM8K,
    /// lm-evaluation-harness's 1280 for IFEval.
    pub fn default_max_new_tokens(self) -> usize {
        match self {
            EvalTask::Gsm8k => 512,
            EvalTask::Ifeval => 1280,
        }
    }
}

/// The resolved options of a run's task evaluation.
#[derive(Clone, Debug)]
pub struct TaskEvalOptions {
    pub task: EvalTask,
    pub data: PathBuf,
    /// Every K iterations (0: before the first and after the last only).
    pub every: usize,
    pub limit: Option<usize>,
    /// gsm8k's few-shot exemplars (of the built-in eight).
    pub shots: usize,
    pub max_new_tokens: usize,
}

/// What each row is scored against.
enum Golds {
    Gsm8k(Vec<String>),
    Ifeval(Vec<ifeval::Prompt>),
}

/// A benchmark's rows, tokenised once for the run.
pub struct TaskEval {
    task: EvalTask,
    prompts: Vec<Vec<u32>>,
    golds: Golds,
    stop: Vec<String>,
    max_new_tokens: usize,
}

/// Each row's (file line, prompt text), and what each is scored against.
type Rows<T> = (Vec<(usize, String)>, Vec<T>);

/// The rows of `path` (up to `limit`), each turned into a prompt text and what it is scored
/// against; errors name the file and line.
fn read<T>(
    path: &Path,
    limit: Option<usize>,
    mut parse: impl FnMut(&Map<String, Value>) -> Result<(String, T)>,
) -> Result<Rows<T>> {
    let (mut texts, mut golds) = (Vec::new(), Vec::new());
    for rec in read_jsonl::<Map<String, Value>>(path)? {
        if limit.is_some_and(|n| texts.len() >= n) {
            break;
        }
        let (text, gold) =
            parse(&rec.value).with_context(|| format!("{}:{}", path.display(), rec.line))?;
        texts.push((rec.line, text));
        golds.push(gold);
    }
    if texts.is_empty() {
        bail!("--eval-data {}: no rows to evaluate", path.display());
    }
    Ok((texts, golds))
}

impl TaskEval {
    pub fn load(o: &TaskEvalOptions, s: &Setup) -> Result<TaskEval> {
        let tok = &s.tokenizer;
        let cfg = &s.policy_cfg;
        let with_bos = |mut ids: Vec<u32>| {
            if let Some(bos) = cfg.bos_token_id {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
            ids
        };
        let (prompts, golds, stop) = match o.task {
            EvalTask::Gsm8k => {
                let prefix = gsm8k::fewshot_prefix(&gsm8k::default_exemplars(), o.shots);
                let (texts, golds) = read(&o.data, o.limit, |row| {
                    let field = |k: &str| match row.get(k) {
                        Some(Value::String(s)) => Ok(s.clone()),
                        Some(_) => bail!("\"{k}\" is not a string"),
                        None => {
                            bail!("no \"{k}\" (gsm8k rows have \"question\" and \"answer\")")
                        }
                    };
                    Ok((
                        gsm8k::prompt(&prefix, &field("question")?),
                        gsm8k::gold(&field("answer")?)?,
                    ))
                })?;
                let ids = texts
                    .iter()
                    .map(|(line, t)| Ok((*line, with_bos(tok.encode(t, false)?))))
                    .collect::<Result<Vec<_>>>()?;
                (
                    ids,
                    Golds::Gsm8k(golds),
                    vec!["Question:".to_string(), "\n\n".to_string()],
                )
            }
            EvalTask::Ifeval => {
                let template = ChatTemplate::for_model(&s.opts.policy)?;
                let (texts, golds) = read(&o.data, o.limit, ifeval::read_row)?;
                let ids = texts
                    .iter()
                    .map(|(line, t)| {
                        let turn = [Message {
                            role: "user".into(),
                            content: t.clone(),
                        }];
                        let ids = tok.encode(&template.render(&turn, true)?, false)?;
                        Ok((*line, with_bos(ids)))
                    })
                    .collect::<Result<Vec<_>>>()?;
                (ids, Golds::Ifeval(golds), Vec::new())
            }
        };
        let context = cfg.max_position_embeddings;
        if let Some((line, p)) = prompts.iter().find(|(_, p)| p.len() >= context) {
            bail!(
                "--eval-data {}:{line}: the prompt is {} tokens, the policy's context {}{}",
                o.data.display(),
                p.len(),
                context,
                if o.task == EvalTask::Gsm8k {
                    " (fewer --eval-shots?)"
                } else {
                    ""
                }
            );
        }
        Ok(TaskEval {
            task: o.task,
            prompts: prompts.into_iter().map(|(_, p)| p).collect(),
            golds,
            stop,
            max_new_tokens: o.max_new_tokens,
        })
    }

    pub fn task(&self) -> EvalTask {
        self.task
    }

    /// The policy's greedy answers to this rank's share of the rows, scored and summed over the
    /// ranks: eval.jsonl's row (without "step").
    pub fn run<B: Backend>(
        &self,
        policy: &Llama<B>,
        s: &Setup,
        group: &Group,
    ) -> Result<Map<String, Value>> {
        let t0 = Instant::now();
        let (rank, ranks) = (group.rank(), group.size());
        let n = self.prompts.len();
        let (lo, hi) = (rank * n / ranks, (rank + 1) * n / ranks);
        let mine = &self.prompts[lo..hi];
        let texts = if mine.is_empty() {
            Vec::new()
        } else {
            self.answers(policy, s, mine, lo)?
        };
        let mut row = Map::new();
        match &self.golds {
            Golds::Gsm8k(golds) => {
                let correct = texts
                    .iter()
                    .zip(&golds[lo..hi])
                    .filter(|(t, g)| gsm8k::is_correct(t, g))
                    .count();
                let mut sums = [correct as f64];
                group.all_reduce_sum("gsm8k evaluation", &mut sums)?;
                row.insert("eval_gsm8k_accuracy".into(), json!(sums[0] / n as f64));
            }
            Golds::Ifeval(golds) => {
                let verdicts: Vec<ifeval::Verdict> = texts
                    .iter()
                    .zip(&golds[lo..hi])
                    .map(|(t, p)| ifeval::judge(p, t))
                    .collect();
                let all = |b: &[bool]| b.iter().all(|&x| x) as usize as f64;
                let count = |b: &[bool]| b.iter().filter(|&&x| x).count() as f64;
                let mut sums = [0.0f64; 5];
                for v in &verdicts {
                    sums[0] += all(&v.strict);
                    sums[1] += count(&v.strict);
                    sums[2] += all(&v.loose);
                    sums[3] += count(&v.loose);
                    sums[4] += v.strict.len() as f64;
                }
                group.all_reduce_sum("ifeval evaluation", &mut sums)?;
                let (prompts, insts) = (n as f64, sums[4]);
                for (key, value) in [
                    ("prompt_level_strict_acc", sums[0] / prompts),
                    ("inst_level_strict_acc", sums[1] / insts),
                    ("prompt_level_loose_acc", sums[2] / prompts),
                    ("inst_level_loose_acc", sums[3] / insts),
                ] {
                    row.insert(format!("eval_ifeval_{key}"), json!(value));
                }
            }
        }
        row.insert("eval_rows".into(), json!(n));
        row.insert("eval_seconds".into(), json!(t0.elapsed().as_secs_f64()));
        Ok(row)
    }

    /// Greedy answers to `prompts` (the rows from `first`), cut at the stop strings.
    fn answers<B: Backend>(
        &self,
        policy: &Llama<B>,
        s: &Setup,
        prompts: &[Vec<u32>],
        first: usize,
    ) -> Result<Vec<String>> {
        let o = &s.opts;
        let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
        let value_bytes = if o.run.device == crate::ops::Device::Cpu {
            4
        } else {
            2
        };
        let mut request = kv_request(o, &lens, prompts.len(), policy.cfg.max_position_embeddings);
        request.n = 1;
        request.max_new_tokens = self.max_new_tokens;
        // Within the memory there is now (the training buffers were just released): the GPU's
        // free memory, or the host's, as `prefer generate` sizes its cache. Without this a full
        // batch of prompts with 1280 new tokens each would ask for tens of GiB on a 7B model.
        let available = if o.run.device == crate::ops::Device::Cpu {
            None
        } else {
            cudarc::driver::result::mem_get_info()
                .ok()
                .map(|(free, _)| free as u128)
        }
        .or_else(crate::ops::memory_budget::host_available_bytes);
        let kv = request.size(block_bytes(&policy.cfg, value_bytes), available)?;
        let opts = EngineOptions {
            n: 1,
            sampling: SamplingParams {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
            },
            max_new_tokens: self.max_new_tokens,
            seed: 0,
            first_prompt: first as u64,
            max_batch: kv.max_batch,
            block_size: crate::generate::BLOCK_SIZE,
            kv_blocks: kv.kv_blocks,
            eos: s.eos.clone(),
            prefill_tokens: 8192,
            graphs: true,
        };
        let stops = StopStrings {
            strings: self.stop.clone(),
            tokenizer: &s.tokenizer,
        };
        let mut engine = Engine::new(policy, opts)?;
        let rollouts = engine.run_in_order(prompts, &mut |ids| stops.hit(ids), &mut |_| {})?;
        rollouts
            .iter()
            .map(|r| {
                let mut text = s.tokenizer.decode_generated(&r.completion_ids)?;
                if let Some(cut) = stops.find(&text) {
                    text.truncate(cut);
                }
                Ok(text)
            })
            .collect()
    }
}
