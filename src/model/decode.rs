//! Prefill and decode over a paged KV cache, written once over the `Backend` op set, as the
//! training forward is: the CPU oracle and the CUDA engine run this same code.
//!
//! The cache of each layer is [blocks, block_size, Hkv·hd] for K and for V. Which slots a token's
//! K/V go to, and which blocks a sequence reads, are the scheduler's business
//! (src/generate/); here they arrive as index maps.

use super::llama::Llama;
use crate::ops::cpu::DecodeShape;
use crate::ops::{Backend, Batch};
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
        let layers = self.cfg.num_hidden_layers;
        let n = blocks
            .checked_mul(block_size)
            .and_then(|t| t.checked_mul(self.cfg.kv_dim()))
            .with_context(|| {
                format!("a KV cache of {blocks} blocks of {block_size} tokens overflows a size")
            })?;
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

    /// Logits [N, V] at every position by the training forward, with no cache: the reference
    /// that decoding is checked against, and the bench's "recompute everything" baseline.
    pub fn full_logits(&self, batch: &Batch) -> Result<B::Acc> {
        let head = self
            .layout
            .lm_head
            .as_ref()
            .context("logits need an LM head; this checkpoint is a reward model")?;
        anyhow::ensure!(
            self.sharded.is_none(),
            "full_logits reads the LM head from the whole model's weights; this one is sharded"
        );
        let fwd = self.forward_heads(batch, super::llama::Heads::NONE)?;
        let (n, d, v) = (batch.tokens(), self.cfg.hidden_size, self.cfg.vocab_size);
        let mut logits = self.backend.acc(n * v)?;
        self.backend
            .lm_logits(&mut logits, fwd.hidden(), &self.params, head, n, d, v)?;
        fwd.recycle(&self.backend);
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
        let inputs = self.backend.inputs(&self.cfg.rope(), batch, &batch.ids)?;
        let logits = self.run(batch, &inputs, cache, slots, last, Attend::Causal);
        self.backend.recycle_inputs(inputs);
        logits
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
        let inputs = self.backend.inputs(&self.cfg.rope(), batch, &batch.ids)?;
        let logits = self.run(batch, &inputs, cache, slots, last, Attend::Cache(view));
        self.backend.recycle_inputs(inputs);
        logits
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
        let mut bufs = Buffers::new(self, batch.tokens(), last.len)?;
        self.run_in(
            &mut bufs,
            batch.batch,
            batch.seq,
            inputs,
            cache,
            slots,
            last,
            attend,
        )?;
        Ok(bufs.into_logits(&self.backend))
    }

    /// The layers, the final norm and the LM head into `bufs` (sized for `b·t` tokens and
    /// `last.len` output rows), allocating nothing: a decode step can run inside a CUDA graph.
    #[allow(clippy::too_many_arguments)]
    fn run_in(
        &self,
        bufs: &mut Buffers<B>,
        b: usize,
        t: usize,
        inputs: &B::Inputs,
        cache: &mut KvCache<B>,
        slots: SlotMap<B>,
        last: SlotMap<B>,
        attend: Attend<B>,
    ) -> Result<()> {
        anyhow::ensure!(
            self.sharded.is_none(),
            "decoding reads the whole model's weights; this one is sharded over the ranks \
             (--shard full): gather it first"
        );
        let (c, o, p) = (&self.cfg, &self.backend, &self.params);
        let (n, d, f) = (b * t, c.hidden_size, c.intermediate_size);
        let (qd, kvd, v) = (c.q_dim(), c.kv_dim(), c.vocab_size);
        let head = self
            .layout
            .lm_head
            .as_ref()
            .context("generation needs an LM head; this checkpoint is a reward model")?;
        let Buffers {
            x,
            xn,
            rstd,
            q,
            k,
            v: vv,
            att,
            lse,
            branch,
            x_mid,
            gate,
            up,
            act,
            rows,
            h,
            rstd_f,
            logits,
        } = bufs;
        o.embedding_forward(x, inputs, p, &self.layout.embed, d)?;
        for (l, lay) in self.layout.layers.iter().enumerate() {
            o.rmsnorm_forward(xn, rstd, x, p, &lay.input_norm, c.rms_norm_eps)?;
            o.matmul_forward(q, xn, p, &lay.q_proj, n, d, qd)?;
            o.matmul_forward(k, xn, p, &lay.k_proj, n, d, kvd)?;
            o.matmul_forward(vv, xn, p, &lay.v_proj, n, d, kvd)?;
            o.rope_forward(q, inputs, c.num_attention_heads)?;
            o.rope_forward(k, inputs, c.num_key_value_heads)?;
            o.copy_rows(&mut cache.k[l], k, slots.pairs, slots.len, kvd)?;
            o.copy_rows(&mut cache.v[l], vv, slots.pairs, slots.len, kvd)?;
            match &attend {
                Attend::Causal => {
                    let shape = crate::ops::cpu::AttentionShape {
                        batch: b,
                        seq: t,
                        heads: c.num_attention_heads,
                        kv_heads: c.num_key_value_heads,
                        head_dim: c.head_dim,
                    };
                    o.attention_forward(att, lse, q, k, vv, inputs, shape)?
                }
                Attend::Cache(view) => {
                    let shape = DecodeShape {
                        batch: b,
                        heads: c.num_attention_heads,
                        kv_heads: c.num_key_value_heads,
                        head_dim: c.head_dim,
                        block_size: cache.block_size,
                        max_blocks: view.max_blocks,
                    };
                    o.decode_attention(
                        att,
                        q,
                        &cache.k[l],
                        &cache.v[l],
                        view.block_table,
                        view.context_lens,
                        shape,
                    )?
                }
            }
            o.matmul_forward(branch, att, p, &lay.o_proj, n, qd, d)?;
            o.residual_forward(x_mid, x, branch)?;
            o.rmsnorm_forward(xn, rstd, x_mid, p, &lay.post_attn_norm, c.rms_norm_eps)?;
            o.matmul_forward(gate, xn, p, &lay.gate_proj, n, d, f)?;
            o.matmul_forward(up, xn, p, &lay.up_proj, n, d, f)?;
            o.swiglu_forward(act, gate, up)?;
            o.matmul_forward(branch, act, p, &lay.down_proj, n, f, d)?;
            o.residual_forward(x, x_mid, branch)?;
        }
        // Only the rows that predict a token go through the final norm and the LM head.
        let r = last.len;
        o.copy_rows(rows, x, last.pairs, r, d)?;
        o.rmsnorm_forward(h, rstd_f, rows, p, &self.layout.final_norm, c.rms_norm_eps)?;
        o.lm_logits(logits, h, p, head, r, d, v)?;
        Ok(())
    }

    /// Buffers and inputs for decode steps of `batch` sequences over at most `max_blocks` blocks
    /// each, made once and reused by every step of that batch size (and by its CUDA graph).
    pub fn decode_workspace(&self, batch: usize, max_blocks: usize) -> Result<DecodeWorkspace<B>> {
        let o = &self.backend;
        let shape = Batch {
            batch,
            seq: 1,
            ids: vec![0; batch],
            mask: vec![true; batch],
            positions: vec![0; batch],
        };
        let rows: Vec<u32> = (0..batch as u32).flat_map(|i| [i, i]).collect();
        Ok(DecodeWorkspace {
            batch,
            max_blocks,
            inputs: o.inputs(&self.cfg.rope(), &shape, &shape.ids)?,
            slots: o.index(&vec![0; 2 * batch])?,
            block_table: o.index(&vec![0; batch * max_blocks])?,
            context_lens: o.index(&vec![1; batch])?,
            rows: o.index(&rows)?,
            bufs: Buffers::new(self, batch, batch)?,
        })
    }

    /// One decode step in `ws`, whose inputs the caller has written: logits in `ws.logits()`.
    pub fn decode_in(&self, ws: &mut DecodeWorkspace<B>, cache: &mut KvCache<B>) -> Result<()> {
        let DecodeWorkspace {
            batch,
            max_blocks,
            inputs,
            slots,
            block_table,
            context_lens,
            rows,
            bufs,
        } = ws;
        self.run_in(
            bufs,
            *batch,
            1,
            inputs,
            cache,
            SlotMap {
                pairs: slots,
                len: *batch,
            },
            SlotMap {
                pairs: rows,
                len: *batch,
            },
            Attend::Cache(DecodeView {
                block_table,
                context_lens,
                max_blocks: *max_blocks,
            }),
        )
    }
}

/// Every activation of a run, sized for `n` tokens and `r` output rows.
struct Buffers<B: Backend> {
    x: B::Act,      // [N, D] the residual stream
    xn: B::Act,     // [N, D]
    rstd: B::Acc,   // [N]
    q: B::Act,      // [N, H·hd]
    k: B::Act,      // [N, Hkv·hd]
    v: B::Act,      // [N, Hkv·hd]
    att: B::Act,    // [N, H·hd]
    lse: B::Acc,    // [N, H] (prefill only)
    branch: B::Act, // [N, D] an attention or MLP output
    x_mid: B::Act,  // [N, D]
    gate: B::Act,   // [N, F]
    up: B::Act,     // [N, F]
    act: B::Act,    // [N, F]
    rows: B::Act,   // [R, D] the rows that predict
    h: B::Act,      // [R, D]
    rstd_f: B::Acc, // [R]
    logits: B::Acc, // [R, V] f32
}

impl<B: Backend> Buffers<B> {
    /// The logits; every other buffer goes back to the backend.
    fn into_logits(self, o: &B) -> B::Acc {
        for a in [
            self.x,
            self.xn,
            self.q,
            self.k,
            self.v,
            self.att,
            self.branch,
            self.x_mid,
        ] {
            o.recycle_act(a);
        }
        for a in [self.gate, self.up, self.act, self.rows, self.h] {
            o.recycle_act(a);
        }
        for a in [self.rstd, self.lse, self.rstd_f] {
            o.recycle_acc(a);
        }
        self.logits
    }

    fn new(m: &Llama<B>, n: usize, r: usize) -> Result<Self> {
        let (c, o) = (&m.cfg, &m.backend);
        let (d, f, qd, kvd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        Ok(Buffers {
            x: o.act(n * d)?,
            xn: o.act(n * d)?,
            rstd: o.acc(n)?,
            q: o.act(n * qd)?,
            k: o.act(n * kvd)?,
            v: o.act(n * kvd)?,
            att: o.act(n * qd)?,
            lse: o.acc(n * c.num_attention_heads)?,
            branch: o.act(n * d)?,
            x_mid: o.act(n * d)?,
            gate: o.act(n * f)?,
            up: o.act(n * f)?,
            act: o.act(n * f)?,
            rows: o.act(r * d)?,
            h: o.act(r * d)?,
            rstd_f: o.acc(r)?,
            logits: o.acc(r * c.vocab_size)?,
        })
    }
}

/// A decode step's inputs and buffers for one batch size, on the device, reused every step.
pub struct DecodeWorkspace<B: Backend> {
    pub batch: usize,
    pub max_blocks: usize,
    /// Token ids and positions of the step.
    pub inputs: B::Inputs,
    /// (row, cache slot) for each new token's K/V, [B, 2].
    pub slots: B::Index,
    pub block_table: B::Index,  // [B, max_blocks]
    pub context_lens: B::Index, // [B]
    rows: B::Index,
    bufs: Buffers<B>,
}

impl<B: Backend> DecodeWorkspace<B> {
    /// Hands the step's buffers back to the backend.
    pub fn recycle(self, o: &B) {
        o.recycle_acc(self.bufs.into_logits(o));
        o.recycle_inputs(self.inputs);
    }

    /// The step's logits [B, V].
    pub fn logits(&self) -> &B::Acc {
        &self.bufs.logits
    }
}
