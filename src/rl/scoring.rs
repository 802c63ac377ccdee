//! Step 2 of an iteration: one scoring pass per model over the rollouts: the policy's and the
//! reference's log-probs (at the sampling temperature) and the policy's entropy, the value
//! model's estimates, the reward model's scores; and the iteration's scores (reward model,
//! math answer, or both). Over several ranks each scores every ranks-th micro-batch of rows (the
//! same micro-batches as one rank would run) and the results are summed into every rank's copy.

use super::advantages::ScoredBatch;
use super::options::RewardSource;
use super::reward_model::reward_model_scores;
use super::rewards::{answer_of, math_answer};
use super::rollout_batch::{rows_of, RolloutBatch};
use super::setup::{Models, Setup};
use crate::data::reward_input::RewardInput;
use crate::dist::group::Group;
use crate::generate::Rollout;
use crate::model::Heads;
use crate::ops::Backend;
use crate::train::state::TrainState;
use anyhow::Result;

/// What the scoring passes measured, per position [N, T] or per rollout [N].
pub struct Scored {
    /// The policy's log-probs before this iteration's updates (PPO's "old" policy).
    pub old_logp: Vec<f32>,
    pub entropy: Vec<f32>,
    /// The reference's log-probs (the policy's own when β is fixed at 0: every KL is then 0).
    pub ref_logp: Vec<f32>,
    /// The value model's estimates (zeros without one).
    pub values: Vec<f32>,
    /// The reward model's score of each rollout [N] (zeros without one).
    pub rm_scores: Vec<f32>,
    /// 1 where the completion's last number is the prompt's "answer", else 0 [N].
    pub math: Vec<f32>,
    /// The score each rollout is trained towards, as --reward says [N].
    pub scores: Vec<f32>,
    /// |the engine's log-prob − the trainer's| at every completion token.
    pub gaps: Vec<f64>,
}

/// What a scoring chunk runs, as one-token passes, on the models whose forwards are collectives
/// (`--shard full`): policy, reference, value, reward model.
fn idle_scoring_passes<S: TrainState>(m: &Models<S>, s: &Setup) -> Result<()> {
    let idle = |model: &crate::model::Llama<S::B>| match model.in_lockstep() {
        true => model.idle_pass(None),
        false => Ok(()),
    };
    idle(m.policy.model())?;
    if let Some(r) = &m.reference {
        idle(r)?;
    }
    if let Some(vm) = &m.value {
        idle(vm.model())?;
    }
    if let (Some(rm), Some(_)) = (&m.reward, &s.reward_input) {
        idle(rm)?;
    }
    Ok(())
}

/// The rollouts `rb` (of the prompts `picked`, whose ids are `prompt_ids`) through every model.
pub fn score<S: TrainState>(
    group: &Group,
    m: &Models<S>,
    s: &Setup,
    rb: &RolloutBatch,
    rollouts: &[Rollout],
    picked: &[usize],
    prompt_ids: &[Vec<u32>],
) -> Result<Scored> {
    let o = &s.opts;
    let (n, t) = (rb.batch.batch, rb.batch.seq);
    let micro = o.minibatch_size / o.grad_accum;
    let heads = Heads::logp_at(o.temperature);
    let (mut old_logp, mut entropy, mut ref_logp, mut values) = (
        vec![0.0; n * t],
        vec![0.0; n * t],
        vec![0.0; n * t],
        vec![0.0; n * t],
    );
    let mut rm_scores = vec![0.0f32; n];
    let ranks = group.size();
    let rows: Vec<usize> = (0..n).collect();
    let chunks: Vec<&[usize]> = rows.chunks(micro).collect();
    for c in group.rounds(chunks.len()) {
        let Some(c) = c else {
            // Fully sharded, every forward gathers with the other ranks: a rank with no chunk
            // left runs each model's pass over one token, in the same order.
            idle_scoring_passes(m, s)?;
            continue;
        };
        let chunk = chunks[c];
        let sub = rows_of(&rb.batch, chunk);
        let f = m.policy.model().forward_heads(&sub, heads)?;
        let (lp, ent) = (
            m.policy.model().backend.to_host(&f.logp)?,
            m.policy.model().backend.to_host(&f.entropy)?,
        );
        f.recycle(&m.policy.model().backend);
        // With no reference (β fixed at 0) its log-probs are taken as the policy's: every KL
        // is then exactly 0, which β = 0 multiplies anyway.
        let rl = match &m.reference {
            Some(reference) => {
                let f = reference.forward_heads(&sub, heads)?;
                let rl = reference.backend.to_host(&f.logp)?;
                f.recycle(&reference.backend);
                rl
            }
            None => lp.clone(),
        };
        for (i, &row) in chunk.iter().enumerate() {
            old_logp[row * t..(row + 1) * t].copy_from_slice(&lp[i * t..(i + 1) * t]);
            entropy[row * t..(row + 1) * t].copy_from_slice(&ent[i * t..(i + 1) * t]);
            ref_logp[row * t..(row + 1) * t].copy_from_slice(&rl[i * t..(i + 1) * t]);
        }
        if let Some(vm) = m.value.as_ref() {
            let f = vm.model().forward_heads(&sub, Heads::VALUE)?;
            let vals = vm.model().backend.to_host(&f.value)?;
            f.recycle(&vm.model().backend);
            for (i, &row) in chunk.iter().enumerate() {
                values[row * t..(row + 1) * t].copy_from_slice(&vals[i * t..(i + 1) * t]);
            }
        }
        match (&m.reward, &s.reward_input) {
            (Some(rm), Some(RewardInput::PolicyIds)) => {
                let f = rm.forward_heads(&sub, Heads::VALUE)?;
                let r = rm.backend.to_host(&f.value)?;
                f.recycle(&rm.backend);
                for (i, &row) in chunk.iter().enumerate() {
                    rm_scores[row] = r[sub.reward_position(i, rb.lens[row], rm.cfg.pad_token_id)];
                }
            }
            // Another tokenizer: the prompt and the completion's text, tokenised its way.
            (Some(rm), Some(input)) => {
                let seqs = chunk
                    .iter()
                    .map(|&row| {
                        let r = &rollouts[row];
                        input.ids(
                            &s.prompts[picked[r.prompt_index]],
                            &prompt_ids[r.prompt_index],
                            &r.completion_ids,
                            rb.ends_with_eos[row],
                            &s.tokenizer,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                let r = reward_model_scores(rm, &seqs)?;
                for (&row, score) in chunk.iter().zip(r) {
                    rm_scores[row] = score;
                }
            }
            _ => {}
        }
    }
    if ranks > 1 {
        // Each row was scored by one rank and is 0 on the others: the sum is every rank's copy.
        let mut all = [&old_logp, &entropy, &ref_logp, &values, &rm_scores]
            .map(|v| v.as_slice())
            .concat();
        group.all_reduce_sum_f32("scores", &mut all)?;
        let mut rest = all.as_slice();
        for v in [
            &mut old_logp,
            &mut entropy,
            &mut ref_logp,
            &mut values,
            &mut rm_scores,
        ] {
            let (head, tail) = rest.split_at(v.len());
            v.copy_from_slice(head);
            rest = tail;
        }
    }
    let math: Vec<f32> = rollouts
        .iter()
        .map(|r| {
            let answer = s.prompts[picked[r.prompt_index]]
                .fields
                .get("answer")
                .and_then(answer_of);
            match answer {
                Some(a) => math_answer(
                    &s.tokenizer
                        .decode_generated(&r.completion_ids)
                        .unwrap_or_default(),
                    a,
                ),
                None => 0.0,
            }
        })
        .collect();
    let scores: Vec<f32> = match o.reward {
        RewardSource::Rm => rm_scores.clone(),
        RewardSource::MathAnswer => math.clone(),
        RewardSource::Both => rm_scores
            .iter()
            .zip(&math)
            .map(|(r, a)| r + o.math_weight * a)
            .collect(),
    };
    let gaps: Vec<f64> = (0..n * t)
        .filter(|&i| rb.mask[i])
        .map(|i| (rb.rollout_logp[i] as f64 - old_logp[i] as f64).abs())
        .collect();
    Ok(Scored {
        old_logp,
        entropy,
        ref_logp,
        values,
        rm_scores,
        math,
        scores,
        gaps,
    })
}

impl Scored {
    /// What the advantages read of the rollouts `rb` and these scores (the values only with a
    /// value model).
    pub fn batch<'a>(&'a self, rb: &'a RolloutBatch, has_value: bool) -> ScoredBatch<'a> {
        ScoredBatch {
            batch: rb.batch.batch,
            time: rb.batch.seq,
            mask: &rb.mask,
            old_logp: &self.old_logp,
            ref_logp: &self.ref_logp,
            values: if has_value { &self.values } else { &[] },
            scores: &self.scores,
            ends_with_eos: &rb.ends_with_eos,
        }
    }
}
