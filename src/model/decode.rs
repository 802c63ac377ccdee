//! Prefill and decode over a paged KV cache, written once over the `Backend` op set, as the
//! training forward is: the CPU oracle and the CUDA engine run this same code.
//!
//! The cache of each layer is [blocks, block_size, Hkv·hd] for K and for V. Which slots a token's
//! K/V go to, and which blocks a sequence reads, are the scheduler's business
//! (src/generate/); here they arrive as index maps.

use super::backend::Backend;
use super::batch::Batch;
use super::llama::Llama;
use crate::ops::cpu::DecodeShape;
use anyhow::{ensure, Context, Result};

/// The K and V caches of every layer, in the backend's activation precision.
pub struct KvCache<B: Backend> {
    pub k: Vec<B::Act>,
    pub v: Vec<B::Act>,
    pub blocks: usize,
    pub block_size: usize,
}

/// Where a step's new K/V rows go: pairs (row of the step's tokens, cache slot), [M, 2].
pub struct SlotMap<'a, B: Backend> {
    pub pairs: &'a B::Index,
    pub len: usize,
}

/// A decode step's view of the cache: each sequence's blocks and its length after the step.
pub struct DecodeView<'a, B: Backend> {
    pub block_table: &'a B::Index,  // [B, max_blocks]
    pub context_lens: &'a B::Index, // [B]
    pub max_blocks: usize,
}

/// How one attention is computed: causal within the batch (prefill), or over the cache (decode).
enum Attend<'a, B: Backend> {
    Causal,
    Cache(DecodeView<'a, B>),
}

impl<B: Backend> Llama<B> {
    /// A cache of `blocks` blocks of `block_size` tokens for every layer.
    pub fn kv_cache(&self, blocks: usize, block_size: usize) -> Result<KvCache<B>> {
        let n = blocks * block_size * self.cfg.kv_dim();
        let layers = self.cfg.num_hidden_layers;
        let alloc = || -> Result<Vec<B::Act>> {
            (0..layers)
                .map(|_| self.backend.act(n))
                .collect::<Result<_>>()
        };
        let (k, v) = (alloc()?, alloc()?);
        Ok(KvCache {
            k,
            v,
            blocks,
            block_size,
        })
    }

    /// Bytes one cache block takes over all layers (K and V), at `bytes_per_value`.
    pub fn kv_block_bytes(&self, block_size: usize, bytes_per_value: usize) -> usize {
        2 * self.cfg.num_hidden_layers * block_size * self.cfg.kv_dim() * bytes_per_value
    }

    /// Logits [N, V] at every position by the training forward, with no cache: the reference
    /// that decoding is checked against, and the bench's "recompute everything" baseline.
    pub fn full_logits(&self, batch: &Batch) -> Result<B::Acc> {
        let head = self
            .layout
            .lm_head
            .as_ref()
            .context("logits need an LM head; this checkpoint is a reward model")?;
        let none = super::llama::Heads {
            logp: false,
            value: false,
        };
        let fwd = self.forward_heads(batch, none)?;
        let (n, d, v) = (batch.tokens(), self.cfg.hidden_size, self.cfg.vocab_size);
        let mut logits = self.backend.acc(n * v)?;
        self.backend
            .lm_logits(&mut logits, fwd.hidden(), &self.params, head, n, d, v)?;
        Ok(logits)
    }

    /// Runs the prompts of `batch` (right-padded, positions from 0), writes their K/V rows to the
    /// cache by `slots`, and returns the LM head's f32 logits [R, V] at the rows `last`
    /// (pairs (batch row, r), usually each prompt's last real token).
    pub fn prefill(
        &self,
        batch: &Batch,
        cache: &mut KvCache<B>,
        slots: SlotMap<B>,
        last: SlotMap<B>,
    ) -> Result<B::Acc> {
        self.check_batch(batch)?;
        let inputs = self.backend.inputs(&self.cfg, batch, &batch.ids)?;
        self.run(batch, &inputs, cache, slots, last, Attend::Causal)
    }

    /// One new token per sequence: `batch` is [B, 1] with each token's position; its K/V go to
    /// the cache by `slots` and attention reads each sequence's blocks. Returns logits [B, V].
    pub fn decode(
        &self,
        batch: &Batch,
        cache: &mut KvCache<B>,
        slots: SlotMap<B>,
        view: DecodeView<B>,
        last: SlotMap<B>,
    ) -> Result<B::Acc> {
        ensure!(batch.seq == 1, "a decode step takes one token per sequence");
        self.check_batch(batch)?;
        let inputs = self.backend.inputs(&self.cfg, batch, &batch.ids)?;
        self.run(batch, &inputs, cache, slots, last, Attend::Cache(view))
    }

    fn run(
        &self,
        batch: &Batch,
        inputs: &B::Inputs,
        cache: &mut KvCache<B>,
        slots: SlotMap<B>,
        last: SlotMap<B>,
        attend: Attend<B>,
    ) -> Result<B::Acc> {
        let (c, o, p) = (&self.cfg, &self.backend, &self.params);
        let (n, d, f) = (batch.tokens(), c.hidden_size, c.intermediate_size);
        let (qd, kvd, v) = (c.q_dim(), c.kv_dim(), c.vocab_size);
        let head = self
            .layout
            .lm_head
            .as_ref()
            .context("generation needs an LM head; this checkpoint is a reward model")?;
        // Buffers reused by every layer.
        let (mut xn, mut rstd) = (o.act(n * d)?, o.acc(n)?);
        let (mut q, mut k, mut vv, mut att) = (
            o.act(n * qd)?,
            o.act(n * kvd)?,
            o.act(n * kvd)?,
            o.act(n * qd)?,
        );
        let mut lse = o.acc(n * c.num_attention_heads)?;
        let (mut branch, mut x_mid) = (o.act(n * d)?, o.act(n * d)?);
        let (mut gate, mut up, mut act) = (o.act(n * f)?, o.act(n * f)?, o.act(n * f)?);

        let mut x = o.act(n * d)?;
        o.embedding_forward(&mut x, inputs, p, &self.layout.embed, d)?;
        for (l, lay) in self.layout.layers.iter().enumerate() {
            o.rmsnorm_forward(&mut xn, &mut rstd, &x, p, &lay.input_norm, c.rms_norm_eps)?;
            o.matmul_forward(&mut q, &xn, p, &lay.q_proj, n, d, qd)?;
            o.matmul_forward(&mut k, &xn, p, &lay.k_proj, n, d, kvd)?;
            o.matmul_forward(&mut vv, &xn, p, &lay.v_proj, n, d, kvd)?;
            o.rope_forward(&mut q, inputs, c.num_attention_heads)?;
            o.rope_forward(&mut k, inputs, c.num_key_value_heads)?;
            o.copy_rows(&mut cache.k[l], &k, slots.pairs, slots.len, kvd)?;
            o.copy_rows(&mut cache.v[l], &vv, slots.pairs, slots.len, kvd)?;
            match &attend {
                Attend::Causal => {
                    let shape = crate::ops::cpu::AttentionShape {
                        batch: batch.batch,
                        seq: batch.seq,
                        heads: c.num_attention_heads,
                        kv_heads: c.num_key_value_heads,
                        head_dim: c.head_dim,
                    };
                    o.attention_forward(&mut att, &mut lse, &q, &k, &vv, inputs, shape)?
                }
                Attend::Cache(view) => {
                    let shape = DecodeShape {
                        batch: batch.batch,
                        heads: c.num_attention_heads,
                        kv_heads: c.num_key_value_heads,
                        head_dim: c.head_dim,
                        block_size: cache.block_size,
                        max_blocks: view.max_blocks,
                    };
                    o.decode_attention(
                        &mut att,
                        &q,
                        &cache.k[l],
                        &cache.v[l],
                        view.block_table,
                        view.context_lens,
                        shape,
                    )?
                }
            }
            o.matmul_forward(&mut branch, &att, p, &lay.o_proj, n, qd, d)?;
            o.residual_forward(&mut x_mid, &x, &branch)?;
            o.rmsnorm_forward(
                &mut xn,
                &mut rstd,
                &x_mid,
                p,
                &lay.post_attn_norm,
                c.rms_norm_eps,
            )?;
            o.matmul_forward(&mut gate, &xn, p, &lay.gate_proj, n, d, f)?;
            o.matmul_forward(&mut up, &xn, p, &lay.up_proj, n, d, f)?;
            o.swiglu_forward(&mut act, &gate, &up)?;
            o.matmul_forward(&mut branch, &act, p, &lay.down_proj, n, f, d)?;
            o.residual_forward(&mut x, &x_mid, &branch)?;
        }
        // Only the rows that predict a token go through the final norm and the LM head.
        let r = last.len;
        let mut rows = o.act(r * d)?;
        o.copy_rows(&mut rows, &x, last.pairs, r, d)?;
        let (mut h, mut rstd_f) = (o.act(r * d)?, o.acc(r)?);
        o.rmsnorm_forward(
            &mut h,
            &mut rstd_f,
            &rows,
            p,
            &self.layout.final_norm,
            c.rms_norm_eps,
        )?;
        let mut logits = o.acc(r * v)?;
        o.lm_logits(&mut logits, &h, p, head, r, d, v)?;
        Ok(logits)
    }
}
