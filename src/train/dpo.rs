//! The DPO family's objective, and the reference log-probs it needs: computed once with the
//! frozen starting model, cached on disk under the hashes of the model and the data, and reused
//! across epochs and runs. The reference model is never held in memory while training.

use super::objective::{backward_and_recycle, Objective, PairRows, PendingStats, Split};
use super::pair_batch::PairBatch;
use crate::data::preference::PreferencePair;
use crate::dist::group::Group;
use crate::loss::{sequence_logprobs, DpoConfig, SeqReduction};
use crate::model::{GradSink, HeadGrads, Heads, Llama, LlamaConfig};
use crate::ops::Backend;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The per-token weights of a sequence reduction, [rows·T]: 1 at response tokens for a sum, 1/n
/// for a mean (n the row's response tokens), 0 elsewhere.
pub fn response_weights(mask: &[bool], rows: usize, t: usize, reduction: SeqReduction) -> Vec<f32> {
    let mut w = vec![0.0f32; rows * t];
    for r in 0..rows {
        let row = r * t..(r + 1) * t;
        let n = mask[row.clone()].iter().filter(|&&m| m).count();
        let v = match reduction {
            SeqReduction::Sum => 1.0,
            SeqReduction::Mean => 1.0 / n.max(1) as f32,
        };
        for i in row.filter(|&i| mask[i]) {
            w[i] = v;
        }
    }
    w
}

pub struct DpoObjective {
    pub config: DpoConfig,
}

impl<B: Backend> Objective<B> for DpoObjective {
    fn pass(
        &self,
        model: &Llama<B>,
        split: &Split,
        idx: &[usize],
        grad: Option<(f32, GradSink<B>)>,
    ) -> Result<PendingStats<B>> {
        let pairs: Vec<_> = idx.iter().map(|&i| &split.pairs[i]).collect();
        let pb = PairBatch::new(&pairs, model.cfg.pad_token_id.unwrap_or(0));
        let (b, rows, t) = (pb.pairs, 2 * pb.pairs, pb.batch.seq);
        let fwd = model.forward_heads(&pb.batch, Heads::LOGP)?;
        // The loss runs where the log-probs are (kernels/dpo_loss.cu on CUDA): the response
        // weights and reference log-probs go up, and the per-pair results stay there until the
        // training loop logs.
        let reduction = self.config.reduction();
        let weights = response_weights(&pb.response_mask, rows, t, reduction);
        let o = &model.backend;
        let reference = match split.reference {
            Some(r) => {
                let (c, r): (Vec<f32>, Vec<f32>) = idx.iter().map(|&i| r[i]).unzip();
                Some(o.to_device(&[c, r].concat())?)
            }
            None => None,
        };
        let weights = o.to_device(&weights)?;
        let mut dlogp = o.acc(rows * t)?;
        let mut out = o.acc(5 * b)?;
        let scale = grad.as_ref().map_or(0.0, |(s, _)| *s);
        o.dpo_loss(
            &mut dlogp,
            &mut out,
            &fwd.logp,
            &weights,
            reference.as_ref(),
            b,
            t,
            &self.config,
            scale,
        )?;
        let heads = HeadGrads {
            logp: Some(&dlogp),
            ..Default::default()
        };
        backward_and_recycle(model, fwd, heads, grad)?;
        for x in [Some(dlogp), Some(weights), reference]
            .into_iter()
            .flatten()
        {
            o.recycle_acc(x);
        }
        Ok(PendingStats {
            rows: out,
            layout: PairRows::Dpo,
            pairs: b,
            tokens: pb.real_tokens(),
        })
    }
}

impl DpoObjective {
    /// Sequence log-probs (chosen, rejected) of every pair under `model`, which is the frozen
    /// reference: the starting checkpoint. Over several ranks each computes the batches
    /// `rank, rank + ranks, ...` and every rank gets all of them.
    pub fn reference_logprobs<B: Backend>(
        &self,
        model: &Llama<B>,
        pairs: &[PreferencePair],
        batch_size: usize,
        group: &Group,
    ) -> Result<Vec<(f32, f32)>> {
        let bs = batch_size.max(1);
        // [pairs, 2]: (chosen, rejected); zeros where another rank computes.
        let mut flat = vec![0.0f64; 2 * pairs.len()];
        let chunks: Vec<&[PreferencePair]> = pairs.chunks(bs).collect();
        for c in group.rounds(chunks.len()) {
            let Some(c) = c else {
                // Fully sharded, every forward gathers with the other ranks.
                if model.in_lockstep() {
                    model.idle_pass(None)?;
                }
                continue;
            };
            let refs: Vec<_> = chunks[c].iter().collect();
            let pb = PairBatch::new(&refs, model.cfg.pad_token_id.unwrap_or(0));
            let fwd = model.forward_heads(&pb.batch, Heads::LOGP)?;
            let seq = sequence_logprobs(
                &model.backend.to_host(&fwd.logp)?,
                &pb.response_mask,
                2 * pb.pairs,
                pb.batch.seq,
                self.config.reduction(),
            );
            for i in 0..pb.pairs {
                flat[2 * (c * bs + i)] = seq[i] as f64;
                flat[2 * (c * bs + i) + 1] = seq[pb.pairs + i] as f64;
            }
            fwd.recycle(&model.backend);
        }
        group.all_reduce_sum("reference log-probs", &mut flat)?;
        Ok(flat
            .chunks_exact(2)
            .map(|p| (p[0] as f32, p[1] as f32))
            .collect())
    }

    /// The reference log-probs of `pairs`, from the cache when this model (whose f32 weights are
    /// `host_params`), device and data were seen before, else computed and cached.
    pub fn cached_reference<B: Backend>(
        &self,
        model: &Llama<B>,
        host_params: &[f32],
        pairs: &[PreferencePair],
        batch_size: usize,
        cache_dir: &Path,
        group: &Group,
    ) -> Result<(Vec<(f32, f32)>, bool)> {
        let key = CacheKey {
            cfg: &model.cfg,
            params: host_params,
            device: std::any::type_name::<B>(),
        };
        let path = cache_path(cache_dir, &key, pairs, self.config.reduction());
        let cached = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<Vec<(f32, f32)>>(&text).ok())
            .filter(|values| values.len() == pairs.len());
        // Every rank uses the cache, or none does (a node may not see rank 0's disk).
        if !group.any("reference cache miss", cached.is_none())? {
            return Ok((cached.expect("no rank missed"), true));
        }
        let values = self.reference_logprobs(model, pairs, batch_size, group)?;
        if group.is_root() {
            std::fs::create_dir_all(cache_dir)
                .with_context(|| format!("creating {}", cache_dir.display()))?;
            // Whole or not at all, under a name of its own: runs share the cache.
            crate::output::write_file_atomically(
                &path,
                serde_json::to_string(&values)?.as_bytes(),
            )?;
        }
        Ok((values, false))
    }
}

/// 64-bit FNV-1a: stable across builds and platforms, which a cache key must be (std's hasher
/// is not), and plenty for telling checkpoints and datasets apart.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn ids(&mut self, ids: &[u32]) {
        self.bytes(&(ids.len() as u64).to_le_bytes());
        for id in ids {
            self.bytes(&id.to_le_bytes());
        }
    }
}

/// What identifies a reference model: its config (rope, norms, heads), its weights, and the
/// device it runs on (bf16 on the GPU and f32 on the CPU give slightly different log-probs).
struct CacheKey<'a> {
    cfg: &'a LlamaConfig,
    params: &'a [f32],
    device: &'a str,
}

fn cache_path(
    dir: &Path,
    key: &CacheKey,
    pairs: &[PreferencePair],
    reduction: SeqReduction,
) -> PathBuf {
    let mut m = Fnv::new();
    m.bytes(key.cfg.to_hf_json("float32").to_string().as_bytes());
    m.bytes(bytemuck::cast_slice(key.params));
    m.bytes(key.device.as_bytes());
    let mut d = Fnv::new();
    d.bytes(format!("{reduction:?}").as_bytes());
    for p in pairs {
        d.ids(&p.prompt);
        d.ids(&p.chosen);
        d.ids(&p.rejected);
    }
    dir.join(format!("ref-{:016x}-{:016x}.json", m.0, d.0))
}
