//! `prefer eval-rm`: a reward model's pairwise accuracy on a preference file, and, where the
//! file names each pair's `subset` (RewardBench's format), each subset's accuracy.

use super::objective::{Objective, PairStats, Split};
use super::rm::RewardObjective;
use crate::data::chat_template::ChatTemplate;
use crate::data::preference::{
    load_preferences_from, DataOptions, Encoder, Overflow, PreferencePair,
};
use crate::data::tokenizer::TextTokenizer;
use crate::model::weights::load_checkpoint;
use crate::model::Llama;
use crate::ops::Device;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// What `eval-rm` measured: over every pair, and per subset when the file has a `subset` column.
pub struct RewardModelEval {
    pub overall: PairStats,
    pub subsets: Option<BTreeMap<String, PairStats>>,
}

/// Each line's `subset`, by line number; None when no line has one. A file where some lines
/// have one and others not is an error naming the first line without.
fn subsets_by_line(path: &Path) -> Result<Option<BTreeMap<usize, String>>> {
    let mut by_line = BTreeMap::new();
    let mut without = None;
    for rec in crate::data::jsonl::read_jsonl::<serde_json::Map<String, serde_json::Value>>(path)? {
        match rec.value.get("subset") {
            Some(serde_json::Value::String(s)) => {
                by_line.insert(rec.line, s.clone());
            }
            Some(_) => bail!(
                "{}:{}: \"subset\" is not a string",
                path.display(),
                rec.line
            ),
            None => {
                without.get_or_insert(rec.line);
            }
        }
    }
    match (by_line.is_empty(), without) {
        (true, _) => Ok(None),
        (false, None) => Ok(Some(by_line)),
        (false, Some(line)) => bail!(
            "{}:{line}: no \"subset\", though other lines name theirs (RewardBench's format has one on every line)",
            path.display()
        ),
    }
}

/// Pairwise accuracy of a reward model on a preference file (the `eval-rm` command), with string
/// prompts read raw or, under `chat_template`, templated as the model was trained; per subset
/// too when the file names them.
pub fn evaluate_reward_model(
    model_dir: &Path,
    data: &Path,
    batch_size: usize,
    device: Device,
    chat_template: bool,
) -> Result<RewardModelEval> {
    let subset_of = subsets_by_line(data)?;
    let lines = crate::data::jsonl::open_lines(data)?;
    // The pairs of each subset ("" for all when there are none), scored in batches.
    let group = |pairs: &[PreferencePair]| {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, p) in pairs.iter().enumerate() {
            let name = subset_of
                .as_ref()
                .and_then(|m| m.get(&p.line).cloned())
                .unwrap_or_default();
            groups.entry(name).or_default().push(i);
        }
        groups
    };
    let rm = ScoringJob {
        model_dir,
        name: data,
        batch_size,
        device,
        chat_template,
    };
    let per_group = rm.score_groups(lines, group)?;
    let mut overall = PairStats::default();
    per_group.values().for_each(|s| overall.add(s));
    Ok(RewardModelEval {
        overall,
        subsets: subset_of.map(|_| per_group),
    })
}

/// Each pair's own tally (its chosen and rejected rewards), in order: a reward model as a judge
/// of JSON preference lines made in memory (`name` names them in errors).
pub fn score_each_pair(
    model_dir: &Path,
    lines: Vec<String>,
    name: &Path,
    device: Device,
    chat_template: bool,
) -> Result<Vec<PairStats>> {
    let rm = ScoringJob {
        model_dir,
        name,
        batch_size: 1,
        device,
        chat_template,
    };
    let each = |pairs: &[PreferencePair]| {
        (0..pairs.len())
            .map(|i| (format!("{i:012}"), vec![i]))
            .collect::<BTreeMap<_, _>>()
    };
    let n = lines.len();
    let scored = rm.score_groups(lines.into_iter().map(Ok), each)?;
    anyhow::ensure!(
        scored.len() == n,
        "{}: {} of {n} pairs scored",
        name.display(),
        scored.len()
    );
    Ok(scored.into_values().collect())
}

/// A reward model and how to read pairs for it.
struct ScoringJob<'a> {
    model_dir: &'a Path,
    name: &'a Path,
    batch_size: usize,
    device: Device,
    chat_template: bool,
}

impl ScoringJob<'_> {
    /// Loads the model, reads `lines` as preference pairs, and tallies each group `group` makes
    /// of them (pair indices), in batches.
    fn score_groups(
        &self,
        lines: impl Iterator<Item = std::io::Result<String>>,
        group: impl FnOnce(&[PreferencePair]) -> BTreeMap<String, Vec<usize>>,
    ) -> Result<BTreeMap<String, PairStats>> {
        let (model_dir, batch_size) = (self.model_dir, self.batch_size);
        if batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let device = self.device.prepare()?;
        let (cfg, params) = load_checkpoint(model_dir)?;
        if !cfg.scalar_head {
            bail!(
                "{} has no scalar head (score.weight): it is not a reward model",
                model_dir.display()
            );
        }
        let tokenizer = TextTokenizer::load(model_dir, &cfg)?;
        let template = ChatTemplate::for_model(model_dir)?;
        let enc = Encoder {
            tokenizer: &tokenizer,
            template: &template,
            cfg: &cfg,
        };
        // Evaluation keeps every pair: one longer than the model's context is cut to fit it (the
        // prompt's start first), not dropped, and the report counts it.
        let context = cfg.max_position_embeddings;
        let opts = DataOptions {
            max_prompt_len: context.saturating_sub(1),
            max_len: context,
            overflow: Overflow::Truncate,
            skip_bad: false,
            chat_template: self.chat_template,
        };
        let (pairs, report) = load_preferences_from(lines, self.name, &enc, &opts)?;
        eprintln!("{}: {report}", self.name.display());
        if pairs.is_empty() {
            bail!(
                "{}: no preference pairs to score; an accuracy over no pairs would mean nothing",
                self.name.display()
            );
        }
        let groups = group(&pairs);
        crate::signals::install();
        let model = Llama::new(cfg, params);
        let split = Split {
            pairs: &pairs,
            reference: None,
        };
        fn score<B: crate::ops::Backend>(
            model: &Llama<B>,
            split: &Split,
            groups: &BTreeMap<String, Vec<usize>>,
            batch_size: usize,
        ) -> Result<BTreeMap<String, PairStats>>
        where
            RewardObjective: Objective<B>,
        {
            let mut out = BTreeMap::new();
            for (name, idx) in groups {
                let mut stats = PairStats::default();
                for chunk in idx.chunks(batch_size) {
                    crate::signals::check(|| "no result was printed".to_string())?;
                    stats.add(&RewardObjective.evaluate(model, split, chunk)?);
                }
                out.insert(name.clone(), stats);
            }
            Ok(out)
        }
        match device.engine()? {
            Some(cuda) => score(&model.upload(cuda)?, &split, &groups, batch_size),
            None => score(&model, &split, &groups, batch_size),
        }
    }
}
