//! The rollout engine: continuous batching over a paged KV cache.
//!
//! Prompts wait in order. A prompt is admitted with all its K rollouts at once, when K slots of
//! the batch and the blocks its rollouts can ever need are free (so a running sequence never
//! runs out of cache and nothing is preempted). Admitted prompts are prefilled together; each
//! prompt's full blocks are written once and shared by its rollouts, and the last, partly
//! filled block is written into each rollout's own block. Every step then decodes one token for
//! every running sequence; a finished sequence frees its slot and blocks, and the next waiting
//! prompt takes them before the next step, so the batch stays full until the prompts run out.
//!
//! The uniform that draws a token is a function of (seed, prompt index, rollout index, position)
//! only, so a rollout's tokens do not depend on the batch around it.

use super::blocks::BlockPool;
use super::philox::draw_uniform;
use crate::model::{Batch, DecodeWorkspace, KvCache, Llama, SlotMap};
use crate::ops::cpu::SamplingParams;
use crate::ops::Backend;
use anyhow::{bail, Result};
use std::collections::VecDeque;

#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Rollouts per prompt (K).
    pub n: usize,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// The index of `prompts[0]` in the whole job's prompts: the sampling key uses the global
    /// index, so a rank that samples a share of the prompts draws what one process would.
    pub first_prompt: u64,
    /// Sequences decoded together at most.
    pub max_batch: usize,
    /// Tokens per cache block.
    pub block_size: usize,
    /// Cache blocks in the pool.
    pub kv_blocks: usize,
    /// Ids that end a completion (kept as its last token).
    pub eos: Vec<u32>,
    /// Most prompt tokens prefilled in one forward (padded), beyond the first prompt.
    pub prefill_tokens: usize,
    /// Replay each batch size's decode step as a CUDA graph (where the backend has them).
    pub graphs: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Eos,
    Stop,
    Length,
}

/// One finished completion.
#[derive(Clone, Debug)]
pub struct Rollout {
    pub prompt_index: usize,
    pub rollout_index: usize,
    pub completion_ids: Vec<u32>,
    /// Each sampled token's log-prob under the distribution it was drawn from.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// What a run did, for tokens/s: generated tokens count no padding.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    pub generated_tokens: usize,
    pub prompt_tokens: usize,
    pub decode_steps: usize,
    pub prefills: usize,
    /// The most sequences decoded in one step.
    pub peak_batch: usize,
    /// Decode steps replayed from a CUDA graph, and graphs captured.
    pub graph_steps: usize,
    pub graphs_captured: usize,
}

struct Seq {
    prompt: usize,
    rollout: usize,
    prompt_len: usize,
    /// This sequence's blocks in order (shared prompt blocks first).
    blocks: Vec<u32>,
    /// Blocks reserved for it and not yet taken.
    reserved: usize,
    /// Tokens whose K/V are in the cache.
    cached: usize,
    completion: Vec<u32>,
    logprobs: Vec<f32>,
}

impl Seq {
    fn last_token(&self) -> u32 {
        *self
            .completion
            .last()
            .expect("a running sequence has sampled a token")
    }
}

/// Private blocks a rollout may need: its share of the prompt's last partial block, plus room
/// for every token it may feed back (the last sampled token is never fed).
fn private_blocks(prompt_len: usize, max_new: usize, bs: usize) -> usize {
    (prompt_len % bs + max_new.saturating_sub(1)).div_ceil(bs)
}

/// Blocks one prompt of `len` tokens needs with all its `n` rollouts: its full blocks, shared,
/// and each rollout's private ones.
pub fn prompt_blocks(len: usize, n: usize, max_new: usize, bs: usize) -> usize {
    len / bs + n * private_blocks(len, max_new, bs)
}

/// New tokens a prompt of `len` tokens can really get: `max_new`, clamped to what the model's
/// context (`max_pos` tokens) leaves after the prompt. A larger `--max-new-tokens` is accepted
/// and ends at the context (finish reason "length"), and the cache is never sized past it.
pub fn new_tokens_room(len: usize, max_new: usize, max_pos: usize) -> usize {
    max_new.min(max_pos.saturating_sub(len))
}

/// A pool that holds a full batch (`max_batch` sequences, `n` per prompt) of the neediest of
/// prompts of lengths `lens` within a context of `max_pos` tokens, plus the trash block the
/// padding rows of a decode step use. Saturates rather than wrapping, so an absurd request is
/// caught by the memory check that follows, never by the allocator.
pub fn pool_blocks(
    lens: &[usize],
    n: usize,
    max_new: usize,
    max_batch: usize,
    bs: usize,
    max_pos: usize,
) -> usize {
    let neediest = lens
        .iter()
        .map(|&len| prompt_blocks(len, n, new_tokens_room(len, max_new, max_pos), bs))
        .max()
        .unwrap_or(1);
    neediest
        .saturating_mul(max_batch.div_ceil(n))
        .saturating_add(1)
}

/// A decode step's buffers for one batch size (a power of two), and its graph once captured.
struct StepSlot<B: Backend> {
    ws: DecodeWorkspace<B>,
    graph: Option<B::Graph>,
    eager_runs: usize,
}

pub struct Engine<'m, B: Backend> {
    model: &'m Llama<B>,
    opts: EngineOptions,
    cache: KvCache<B>,
    pool: BlockPool,
    /// A block no sequence owns: the padding rows of a decode step write and read it.
    trash: u32,
    /// Block-table width of this run's decode steps (the longest sequence's blocks).
    max_blocks: usize,
    slots: Vec<StepSlot<B>>,
    pub stats: EngineStats,
    /// Stop between steps with [`crate::signals::Interrupted`] once a stop signal arrives (for
    /// `prefer generate`; a PPO iteration instead finishes its rollouts and then saves).
    pub stop_on_signal: bool,
}

/// The cache and the step buffers go back to the backend, so the next engine on this model (the
/// next PPO iteration's rollouts) reuses them instead of allocating. Graphs go first: they point
/// into the buffers.
impl<B: Backend> Drop for Engine<'_, B> {
    fn drop(&mut self) {
        let o = &self.model.backend;
        for slot in self.slots.drain(..) {
            drop(slot.graph);
            slot.ws.recycle(o);
        }
        for x in self.cache.k.drain(..).chain(self.cache.v.drain(..)) {
            o.recycle_act(x);
        }
    }
}

impl<'m, B: Backend> Engine<'m, B> {
    pub fn new(model: &'m Llama<B>, opts: EngineOptions) -> Result<Self> {
        if opts.n == 0 || opts.max_batch == 0 || opts.block_size == 0 || opts.max_new_tokens == 0 {
            bail!("--n, --max-batch, the block size and --max-new-tokens must be at least 1");
        }
        if opts.n > opts.max_batch {
            bail!(
                "--n {} rollouts of a prompt are decoded together: --max-batch ({}) must be at least --n",
                opts.n,
                opts.max_batch
            );
        }
        let vocab = model.cfg.vocab_size;
        if let Some(&bad) = opts.eos.iter().find(|&&e| e as usize >= vocab) {
            bail!("EOS id {bad} is outside the model's vocabulary of {vocab}");
        }
        if opts.kv_blocks < 2 {
            bail!("the KV cache needs at least 2 blocks");
        }
        let cache = model.kv_cache(opts.kv_blocks, opts.block_size)?;
        let mut pool = BlockPool::new(opts.kv_blocks);
        pool.reserve(1)?;
        let trash = pool.take(1);
        Ok(Engine {
            model,
            pool,
            opts,
            cache,
            trash,
            max_blocks: 1,
            slots: Vec::new(),
            stats: EngineStats::default(),
            stop_on_signal: false,
        })
    }

    /// Blocks one prompt of `len` tokens needs with all its rollouts.
    fn blocks_for(&self, len: usize) -> usize {
        let max_pos = self.model.cfg.max_position_embeddings;
        prompt_blocks(
            len,
            self.opts.n,
            new_tokens_room(len, self.opts.max_new_tokens, max_pos),
            self.opts.block_size,
        )
    }

    /// Generates `n` completions of every prompt, handing each to `done` as it finishes.
    /// `stopped(completion)` says whether a stop string has appeared.
    pub fn run(
        &mut self,
        prompts: &[Vec<u32>],
        stopped: &mut dyn FnMut(&[u32]) -> bool,
        done: &mut dyn FnMut(Rollout) -> Result<()>,
    ) -> Result<()> {
        let max_pos = self.model.cfg.max_position_embeddings;
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                bail!("prompt {i} is empty");
            }
            if p.len() >= max_pos {
                bail!(
                    "prompt {i} has {} tokens; the model's context is {max_pos} (max_position_embeddings), leaving no room to generate",
                    p.len()
                );
            }
            // One block is the trash block the padding rows of a decode step use.
            if self.blocks_for(p.len()) > self.pool.capacity() - 1 {
                bail!(
                    "prompt {i} ({} tokens, {} rollouts of up to {} new tokens) needs {} KV-cache blocks; the cache has {} (raise --kv-memory, or lower --n or --max-new-tokens)",
                    p.len(),
                    self.opts.n,
                    self.opts.max_new_tokens,
                    self.blocks_for(p.len()),
                    self.pool.capacity() - 1
                );
            }
        }
        let bs = self.opts.block_size;
        self.max_blocks = prompts
            .iter()
            .map(|p| {
                (p.len() + new_tokens_room(p.len(), self.opts.max_new_tokens, max_pos)).div_ceil(bs)
            })
            .max()
            .unwrap_or(1);
        let mut waiting: VecDeque<usize> = (0..prompts.len()).collect();
        let mut running: Vec<Seq> = Vec::new();
        while !waiting.is_empty() || !running.is_empty() {
            if self.stop_on_signal {
                crate::signals::check(|| "no output was written".to_string())?;
            }
            let admitted = self.admit(prompts, &mut waiting, running.len())?;
            if !admitted.is_empty() {
                let new = self.prefill(prompts, &admitted)?;
                running.extend(new);
            } else if running.is_empty() {
                bail!(
                    "internal error: no prompt could be admitted to an empty KV cache of {} blocks",
                    self.pool.capacity()
                );
            } else {
                self.decode_step(&mut running)?;
            }
            // Finished sequences leave at once; their slots go to waiting prompts next round.
            let mut i = 0;
            while i < running.len() {
                if let Some(reason) = self.finished(&running[i], stopped, max_pos) {
                    let s = running.swap_remove(i);
                    self.pool.release(&s.blocks);
                    self.pool.unreserve(s.reserved);
                    done(Rollout {
                        prompt_index: s.prompt,
                        rollout_index: s.rollout,
                        completion_ids: s.completion,
                        logprobs: s.logprobs,
                        finish_reason: reason,
                    })?;
                } else {
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// [`Self::run`], collecting every rollout in (prompt, rollout) order; `finished` sees each
    /// as it completes (for progress).
    pub fn run_in_order(
        &mut self,
        prompts: &[Vec<u32>],
        stopped: &mut dyn FnMut(&[u32]) -> bool,
        finished: &mut dyn FnMut(&Rollout),
    ) -> Result<Vec<Rollout>> {
        let n = self.opts.n;
        let mut slots: Vec<Option<Rollout>> = vec![None; prompts.len() * n];
        self.run(prompts, stopped, &mut |r| {
            finished(&r);
            let i = r.prompt_index * n + r.rollout_index;
            slots[i] = Some(r);
            Ok(())
        })?;
        Ok(slots
            .into_iter()
            .map(|r| r.expect("the engine finishes every rollout"))
            .collect())
    }

    fn finished(
        &self,
        s: &Seq,
        stopped: &mut dyn FnMut(&[u32]) -> bool,
        max_pos: usize,
    ) -> Option<FinishReason> {
        if self.opts.eos.contains(&s.last_token()) {
            Some(FinishReason::Eos)
        } else if stopped(&s.completion) {
            Some(FinishReason::Stop)
        } else if s.completion.len() >= self.opts.max_new_tokens
            || s.prompt_len + s.completion.len() >= max_pos
        {
            Some(FinishReason::Length)
        } else {
            None
        }
    }

    /// Waiting prompts that fit now: batch slots for all their rollouts, their blocks, and the
    /// prefill's token budget (the first always fits the budget).
    fn admit(
        &mut self,
        prompts: &[Vec<u32>],
        waiting: &mut VecDeque<usize>,
        running: usize,
    ) -> Result<Vec<usize>> {
        let mut admitted: Vec<usize> = Vec::new();
        let mut longest = 0;
        while let Some(&p) = waiting.front() {
            let len = prompts[p].len();
            let slots = running + (admitted.len() + 1) * self.opts.n;
            let padded = (admitted.len() + 1) * longest.max(len);
            if slots > self.opts.max_batch
                || self.blocks_for(len) > self.pool.available()
                || (!admitted.is_empty() && padded > self.opts.prefill_tokens)
            {
                break;
            }
            self.pool.reserve(self.blocks_for(len))?;
            longest = longest.max(len);
            admitted.push(p);
            waiting.pop_front();
        }
        Ok(admitted)
    }

    /// Prefills the admitted prompts and samples each rollout's first token.
    fn prefill(&mut self, prompts: &[Vec<u32>], admitted: &[usize]) -> Result<Vec<Seq>> {
        let (bs, n) = (self.opts.block_size, self.opts.n);
        let seqs: Vec<Vec<u32>> = admitted.iter().map(|&p| prompts[p].clone()).collect();
        let batch = Batch::right_padded(&seqs, self.model.cfg.pad_token_id.unwrap_or(0));
        let t = batch.seq;
        let mut slots: Vec<u32> = Vec::new();
        let mut last: Vec<u32> = Vec::new();
        let mut out = Vec::with_capacity(admitted.len() * n);
        for (a, &p) in admitted.iter().enumerate() {
            let len = prompts[p].len();
            // What `admit` reserved for it: room for the new tokens the context leaves.
            let room = new_tokens_room(
                len,
                self.opts.max_new_tokens,
                self.model.cfg.max_position_embeddings,
            );
            let reserve = private_blocks(len, room, bs);
            let shared: Vec<u32> = (0..len / bs).map(|_| self.pool.take(n as u32)).collect();
            let mut rollouts: Vec<Seq> = (0..n)
                .map(|r| Seq {
                    prompt: p,
                    rollout: r,
                    prompt_len: len,
                    blocks: shared.clone(),
                    reserved: reserve,
                    cached: len,
                    completion: Vec::new(),
                    logprobs: Vec::new(),
                })
                .collect();
            for tok in 0..len {
                let row = (a * t + tok) as u32;
                let (blk, off) = (tok / bs, tok % bs);
                if blk < shared.len() {
                    slots.extend([row, (shared[blk] as usize * bs + off) as u32]);
                    continue;
                }
                for s in rollouts.iter_mut() {
                    if off == 0 {
                        s.blocks.push(self.pool.take(1));
                        s.reserved = s
                            .reserved
                            .checked_sub(1)
                            .expect("a sequence takes only the blocks reserved for it");
                    }
                    slots.extend([row, (s.blocks[blk] as usize * bs + off) as u32]);
                }
            }
            for _ in 0..n {
                let r = (last.len() / 2) as u32; // rollout rows in the order of `out`
                last.extend([(a * t + len - 1) as u32, r]);
            }
            out.append(&mut rollouts);
        }
        let o = &self.model.backend;
        let (slot_idx, last_idx) = (o.index(&slots)?, o.index(&last)?);
        let logits = self.model.prefill(
            &batch,
            &mut self.cache,
            SlotMap {
                pairs: &slot_idx,
                len: slots.len() / 2,
            },
            SlotMap {
                pairs: &last_idx,
                len: last.len() / 2,
            },
        )?;
        self.stats.prefills += 1;
        self.stats.prompt_tokens += admitted.iter().map(|&p| prompts[p].len()).sum::<usize>();
        sample_into(self.model, &self.opts, &mut self.stats, &logits, &mut out)?;
        o.recycle_acc(logits);
        // Each prefill has its own token count: keep only the recent ones' buffers.
        o.retire();
        Ok(out)
    }

    /// One token for every running sequence. The step runs at the next power-of-two batch size,
    /// padded with rows that read and write only the trash block, in buffers kept for that size;
    /// from its second use a size's step is captured once as a CUDA graph and replayed.
    fn decode_step(&mut self, running: &mut [Seq]) -> Result<()> {
        let bs = self.opts.block_size;
        let b = running.len();
        let bucket = b.next_power_of_two();
        let mb = self.max_blocks;
        let trash = self.trash as usize * bs;
        let mut ids = vec![self.model.cfg.pad_token_id.unwrap_or(0); bucket];
        let mut positions = vec![0u32; bucket];
        let mut slots: Vec<u32> = (0..bucket as u32).flat_map(|i| [i, trash as u32]).collect();
        let mut lens = vec![1u32; bucket];
        let mut table = vec![self.trash; bucket * mb];
        for (i, s) in running.iter_mut().enumerate() {
            let pos = s.cached;
            if pos % bs == 0 {
                s.blocks.push(self.pool.take(1));
                s.reserved = s
                    .reserved
                    .checked_sub(1)
                    .expect("a sequence takes only the blocks reserved for it");
            }
            ids[i] = s.last_token();
            positions[i] = pos as u32;
            slots[2 * i + 1] = (s.blocks[pos / bs] as usize * bs + pos % bs) as u32;
            lens[i] = pos as u32 + 1;
            table[i * mb..i * mb + s.blocks.len()].copy_from_slice(&s.blocks);
            s.cached += 1;
        }
        let batch = Batch {
            batch: bucket,
            seq: 1,
            ids,
            mask: vec![true; bucket],
            positions,
        };
        let (model, o) = (self.model, &self.model.backend);
        let k = match self
            .slots
            .iter()
            .position(|s| s.ws.batch == bucket && s.ws.max_blocks == mb)
        {
            Some(k) => k,
            None => {
                self.slots.push(StepSlot {
                    ws: model.decode_workspace(bucket, mb)?,
                    graph: None,
                    eager_runs: 0,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[k];
        o.write_inputs(&mut slot.ws.inputs, &batch)?;
        o.write_index(&mut slot.ws.slots, &slots)?;
        o.write_index(&mut slot.ws.block_table, &table)?;
        o.write_index(&mut slot.ws.context_lens, &lens)?;
        if let Some(g) = &slot.graph {
            o.replay(g)?;
            self.stats.graph_steps += 1;
        } else if slot.eager_runs > 0 && self.opts.graphs && o.begin_capture()? {
            // The first run of a size made its plans and scratch; this one is recorded.
            let ran = model.decode_in(&mut slot.ws, &mut self.cache);
            let graph = o.end_capture();
            ran?;
            let graph = graph?;
            o.replay(&graph)?;
            slot.graph = Some(graph);
            self.stats.graphs_captured += 1;
            self.stats.graph_steps += 1;
        } else {
            model.decode_in(&mut slot.ws, &mut self.cache)?;
            slot.eager_runs += 1;
        }
        self.stats.decode_steps += 1;
        self.stats.peak_batch = self.stats.peak_batch.max(b);
        let logits = self.slots[k].ws.logits();
        sample_into(self.model, &self.opts, &mut self.stats, logits, running)
    }
}

/// Draws the next token of each sequence from its row of `logits`.
fn sample_into<B: Backend>(
    model: &Llama<B>,
    opts: &EngineOptions,
    stats: &mut EngineStats,
    logits: &B::Acc,
    seqs: &mut [Seq],
) -> Result<()> {
    let uniforms: Vec<f32> = seqs
        .iter()
        .map(|s| {
            draw_uniform(
                opts.seed,
                opts.first_prompt + s.prompt as u64,
                s.rollout as u32,
                s.completion.len() as u32,
            )
        })
        .collect();
    let (ids, logprobs) =
        model
            .backend
            .sample(logits, &uniforms, model.cfg.vocab_size, opts.sampling)?;
    for ((s, id), lp) in seqs.iter_mut().zip(ids).zip(logprobs) {
        // The sampled token's log-prob comes back anyway, so checking it costs no sync: NaN or
        // infinite logits (a diverged model) must stop here, not become pad tokens with null
        // log-probs in the output.
        if !lp.is_finite() {
            bail!(
                "the model's logits are not finite (log-prob {lp}) for prompt {} (rollout {}) at completion position {}: the weights or the config's numerics are broken",
                s.prompt,
                s.rollout,
                s.completion.len()
            );
        }
        s.completion.push(id);
        s.logprobs.push(lp);
    }
    stats.generated_tokens += seqs.len();
    Ok(())
}
