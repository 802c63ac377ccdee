//! The Llama forward and backward, written once over the op set (DESIGN.md, principles 1 and 2).
//! No autograd: every step of the forward has its hand-written backward, in reverse order below.
//!
//! Shapes: B sequences of T tokens, N = B·T, D hidden, F FFN, H heads of hd, Hkv KV heads, V vocab.

use super::config::LlamaConfig;
use super::params::ParamLayout;
use crate::ops::cpu::*;
use anyhow::{bail, Result};
use std::ops::Range;

/// A padded batch: ids, which tokens are real, and each token's rotary position.
#[derive(Clone, Debug)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    pub ids: Vec<u32>,       // [B, T]
    pub mask: Vec<bool>,     // [B, T], true for real tokens
    pub positions: Vec<u32>, // [B, T]
}

impl Batch {
    /// Right-padded sequences with positions 0, 1, 2, … (what transformers uses without a mask).
    pub fn right_padded(seqs: &[Vec<u32>], pad: u32) -> Self {
        Self::padded(seqs, pad, false)
    }

    /// Left-padded sequences (the layout generation uses), positions counting from each sequence's
    /// first real token, as transformers derives them from the attention mask.
    pub fn left_padded(seqs: &[Vec<u32>], pad: u32) -> Self {
        Self::padded(seqs, pad, true)
    }

    fn padded(seqs: &[Vec<u32>], pad: u32, left: bool) -> Self {
        let (batch, seq) = (seqs.len(), seqs.iter().map(Vec::len).max().unwrap_or(0));
        let mut b = Batch {
            batch,
            seq,
            ids: vec![pad; batch * seq],
            mask: vec![false; batch * seq],
            positions: vec![0; batch * seq],
        };
        for (i, s) in seqs.iter().enumerate() {
            let start = i * seq + if left { seq - s.len() } else { 0 };
            let real = start..start + s.len();
            b.ids[real.clone()].copy_from_slice(s);
            b.mask[real.clone()].fill(true);
            for (p, t) in real.enumerate() {
                b.positions[t] = p as u32;
            }
        }
        b
    }

    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }

    /// The target of each position: the id that follows it in its row (the last column gets 0,
    /// a valid id whose log-prob callers ignore).
    pub fn next_tokens(&self) -> Vec<u32> {
        let mut targets = vec![0; self.tokens()];
        for b in 0..self.batch {
            let row = b * self.seq;
            targets[row..row + self.seq - 1].copy_from_slice(&self.ids[row + 1..row + self.seq]);
        }
        targets
    }

    /// Whether position t has a real next token to predict: both t and t+1 are real tokens.
    pub fn next_token_mask(&self) -> Vec<bool> {
        let mut m = vec![false; self.tokens()];
        for b in 0..self.batch {
            for t in 0..self.seq.saturating_sub(1) {
                let i = b * self.seq + t;
                m[i] = self.mask[i] && self.mask[i + 1];
            }
        }
        m
    }
}

/// What one layer's backward needs from its forward.
struct LayerCache {
    x_in: Vec<f32>,  // [N, D] the residual stream entering the layer
    rstd1: Vec<f32>, // [N]
    xn1: Vec<f32>,   // [N, D]
    q: Vec<f32>,     // [N, H·hd] after rotary
    k: Vec<f32>,     // [N, Hkv·hd] after rotary
    v: Vec<f32>,     // [N, Hkv·hd]
    att: Vec<f32>,   // [N, H·hd]
    lse: Vec<f32>,   // [B, H, T]
    x_mid: Vec<f32>, // [N, D] after the attention residual
    rstd2: Vec<f32>, // [N]
    xn2: Vec<f32>,   // [N, D]
    gate: Vec<f32>,  // [N, F]
    up: Vec<f32>,    // [N, F]
    act: Vec<f32>,   // [N, F]
}

/// The forward's results, plus everything its backward needs.
pub struct Forward {
    /// log p(next token) at each position [N]; empty without an LM head.
    pub logp: Vec<f32>,
    /// Entropy of the next-token distribution at each position [N]; empty without an LM head.
    pub entropy: Vec<f32>,
    /// The scalar head at each position [N]; empty without one.
    pub value: Vec<f32>,
    layers: Vec<LayerCache>,
    x_last: Vec<f32>, // [N, D] the residual stream leaving the last layer
    rstd_f: Vec<f32>, // [N]
    h_f: Vec<f32>,    // [N, D] final-normed hidden states
    lse: Vec<f32>,    // [N] the LM head's logsumexp
    targets: Vec<u32>,
    rope: RopeTables,
}

/// Upstream gradients for the heads, each [N] or empty.
#[derive(Default)]
pub struct HeadGrads<'a> {
    pub logp: &'a [f32],
    pub entropy: &'a [f32],
    pub value: &'a [f32],
}

/// Which heads a forward computes; skipping the LM head saves the vocabulary-sized work when only
/// a reward is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub logp: bool,
    pub value: bool,
}

impl Heads {
    pub const ALL: Heads = Heads {
        logp: true,
        value: true,
    };
    pub const LOGP: Heads = Heads {
        logp: true,
        value: false,
    };
    pub const VALUE: Heads = Heads {
        logp: false,
        value: true,
    };
}

/// A Llama model on the CPU: config, flat parameter layout and f32 parameters.
#[derive(Clone)]
pub struct Llama {
    pub cfg: LlamaConfig,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
}

fn at<'a>(buf: &'a [f32], r: &Range<usize>) -> &'a [f32] {
    &buf[r.clone()]
}

impl Llama {
    pub fn new(cfg: LlamaConfig, params: Vec<f32>) -> Self {
        let layout = ParamLayout::new(&cfg);
        assert_eq!(
            params.len(),
            layout.len,
            "parameter buffer does not match the layout"
        );
        Llama {
            cfg,
            layout,
            params,
        }
    }

    /// Rejects ids outside the vocabulary and batches longer than the position table, so the
    /// ops below never see bad input.
    pub fn check_batch(&self, batch: &Batch) -> Result<()> {
        if let Some(&id) = batch
            .ids
            .iter()
            .find(|&&id| id as usize >= self.cfg.vocab_size)
        {
            bail!(
                "token id {id} is outside the model's vocabulary of {}",
                self.cfg.vocab_size
            );
        }
        Ok(())
    }

    /// Runs the model over a batch: next-token log-probs and entropies (with an LM head) and the
    /// scalar head's values (with one), at every position.
    pub fn forward(&self, batch: &Batch) -> Forward {
        self.forward_heads(batch, Heads::ALL)
    }

    /// The forward with only the heads asked for (and present) computed.
    pub fn forward_heads(&self, batch: &Batch, heads: Heads) -> Forward {
        let c = &self.cfg;
        let (n, d, f) = (batch.tokens(), c.hidden_size, c.intermediate_size);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let p = &self.params;
        let shape = self.attention_shape(batch);
        let rope = RopeTables::new(c, &batch.positions);

        let mut x = vec![0.0; n * d];
        embedding_forward(&mut x, &batch.ids, at(p, &self.layout.embed), d);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in &self.layout.layers {
            let mut lc = LayerCache {
                x_in: x,
                rstd1: vec![0.0; n],
                xn1: vec![0.0; n * d],
                q: vec![0.0; n * qd],
                k: vec![0.0; n * kvd],
                v: vec![0.0; n * kvd],
                att: vec![0.0; n * qd],
                lse: vec![0.0; n * c.num_attention_heads],
                x_mid: vec![0.0; n * d],
                rstd2: vec![0.0; n],
                xn2: vec![0.0; n * d],
                gate: vec![0.0; n * f],
                up: vec![0.0; n * f],
                act: vec![0.0; n * f],
            };
            // attention block: x_mid = x_in + o_proj(attn(rope(q), rope(k), v))
            rmsnorm_forward(
                &mut lc.xn1,
                &mut lc.rstd1,
                &lc.x_in,
                at(p, &l.input_norm),
                c.rms_norm_eps,
            );
            matmul_forward(&mut lc.q, &lc.xn1, at(p, &l.q_proj), n, d, qd);
            matmul_forward(&mut lc.k, &lc.xn1, at(p, &l.k_proj), n, d, kvd);
            matmul_forward(&mut lc.v, &lc.xn1, at(p, &l.v_proj), n, d, kvd);
            rope_forward(&mut lc.q, &rope, c.num_attention_heads);
            rope_forward(&mut lc.k, &rope, c.num_key_value_heads);
            attention_forward(
                &mut lc.att,
                &mut lc.lse,
                &lc.q,
                &lc.k,
                &lc.v,
                &batch.mask,
                shape,
            );
            let mut o = vec![0.0; n * d];
            matmul_forward(&mut o, &lc.att, at(p, &l.o_proj), n, qd, d);
            residual_forward(&mut lc.x_mid, &lc.x_in, &o);
            // MLP block: x_out = x_mid + down(silu(gate(xn2)) · up(xn2))
            rmsnorm_forward(
                &mut lc.xn2,
                &mut lc.rstd2,
                &lc.x_mid,
                at(p, &l.post_attn_norm),
                c.rms_norm_eps,
            );
            matmul_forward(&mut lc.gate, &lc.xn2, at(p, &l.gate_proj), n, d, f);
            matmul_forward(&mut lc.up, &lc.xn2, at(p, &l.up_proj), n, d, f);
            swiglu_forward(&mut lc.act, &lc.gate, &lc.up);
            let mut mlp = vec![0.0; n * d];
            matmul_forward(&mut mlp, &lc.act, at(p, &l.down_proj), n, f, d);
            x = vec![0.0; n * d];
            residual_forward(&mut x, &lc.x_mid, &mlp);
            layers.push(lc);
        }
        let mut h_f = vec![0.0; n * d];
        let mut rstd_f = vec![0.0; n];
        rmsnorm_forward(
            &mut h_f,
            &mut rstd_f,
            &x,
            at(p, &self.layout.final_norm),
            c.rms_norm_eps,
        );

        let targets = batch.next_tokens();
        let (mut logp, mut entropy, mut lse) = (Vec::new(), Vec::new(), Vec::new());
        if let (Some(head), true) = (&self.layout.lm_head, heads.logp) {
            (logp, entropy, lse) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            logprob_forward(
                &mut logp,
                &mut entropy,
                &mut lse,
                &h_f,
                at(p, head),
                &targets,
                d,
            );
        }
        let mut value = Vec::new();
        if let (Some(score), true) = (&self.layout.score, heads.value) {
            value = vec![0.0; n];
            scalar_head_forward(&mut value, &h_f, at(p, score));
        }
        Forward {
            logp,
            entropy,
            value,
            layers,
            x_last: x,
            rstd_f,
            h_f,
            lse,
            targets,
            rope,
        }
    }

    /// Accumulates into `grads` (the parameter layout) the gradient of Σ g·head over the heads'
    /// upstream gradients `g`. Empty upstream slices mean no gradient through that head.
    pub fn backward(&self, fwd: &Forward, batch: &Batch, g: &HeadGrads, grads: &mut [f32]) {
        let c = &self.cfg;
        let (n, d, f) = (batch.tokens(), c.hidden_size, c.intermediate_size);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let p = &self.params;
        let lay = &self.layout;
        assert_eq!(grads.len(), lay.len);

        let mut dh = vec![0.0; n * d];
        if let (Some(head), false) = (&lay.lm_head, g.logp.is_empty() && g.entropy.is_empty()) {
            let zeros = vec![0.0; n];
            let dlogp = if g.logp.is_empty() {
                &zeros[..]
            } else {
                g.logp
            };
            let dent = (!g.entropy.is_empty()).then_some(g.entropy);
            logprob_backward(
                &mut dh,
                &mut grads[head.clone()],
                dlogp,
                dent,
                &fwd.h_f,
                at(p, head),
                &fwd.targets,
                &fwd.lse,
                &fwd.entropy,
                d,
            );
        }
        if let (Some(score), false) = (&lay.score, g.value.is_empty()) {
            scalar_head_backward(
                &mut dh,
                &mut grads[score.clone()],
                g.value,
                &fwd.h_f,
                at(p, score),
            );
        }
        let mut dx = vec![0.0; n * d];
        rmsnorm_backward(
            &mut dx,
            &mut grads[lay.final_norm.clone()],
            &dh,
            &fwd.x_last,
            at(p, &lay.final_norm),
            &fwd.rstd_f,
        );

        let shape = self.attention_shape(batch);
        for (l, lc) in lay.layers.iter().zip(&fwd.layers).rev() {
            // dx holds d(x_out); x_out = x_mid + mlp, so d(x_mid) starts as dx itself.
            let mut dact = vec![0.0; n * f];
            matmul_backward(
                Some(&mut dact),
                &mut grads[l.down_proj.clone()],
                &dx,
                &lc.act,
                at(p, &l.down_proj),
                n,
                f,
                d,
            );
            let (mut dgate, mut dup) = (vec![0.0; n * f], vec![0.0; n * f]);
            swiglu_backward(&mut dgate, &mut dup, &dact, &lc.gate, &lc.up);
            let mut dxn2 = vec![0.0; n * d];
            matmul_backward(
                Some(&mut dxn2),
                &mut grads[l.gate_proj.clone()],
                &dgate,
                &lc.xn2,
                at(p, &l.gate_proj),
                n,
                d,
                f,
            );
            matmul_backward(
                Some(&mut dxn2),
                &mut grads[l.up_proj.clone()],
                &dup,
                &lc.xn2,
                at(p, &l.up_proj),
                n,
                d,
                f,
            );
            rmsnorm_backward(
                &mut dx,
                &mut grads[l.post_attn_norm.clone()],
                &dxn2,
                &lc.x_mid,
                at(p, &l.post_attn_norm),
                &lc.rstd2,
            );

            // dx now holds d(x_mid); x_mid = x_in + o_proj(att).
            let mut datt = vec![0.0; n * qd];
            matmul_backward(
                Some(&mut datt),
                &mut grads[l.o_proj.clone()],
                &dx,
                &lc.att,
                at(p, &l.o_proj),
                n,
                qd,
                d,
            );
            let (mut dq, mut dk, mut dv) =
                (vec![0.0; n * qd], vec![0.0; n * kvd], vec![0.0; n * kvd]);
            attention_backward(
                &mut dq,
                &mut dk,
                &mut dv,
                &datt,
                &lc.q,
                &lc.k,
                &lc.v,
                &lc.att,
                &lc.lse,
                &batch.mask,
                shape,
            );
            rope_backward(&mut dq, &fwd.rope, c.num_attention_heads);
            rope_backward(&mut dk, &fwd.rope, c.num_key_value_heads);
            let mut dxn1 = vec![0.0; n * d];
            matmul_backward(
                Some(&mut dxn1),
                &mut grads[l.q_proj.clone()],
                &dq,
                &lc.xn1,
                at(p, &l.q_proj),
                n,
                d,
                qd,
            );
            matmul_backward(
                Some(&mut dxn1),
                &mut grads[l.k_proj.clone()],
                &dk,
                &lc.xn1,
                at(p, &l.k_proj),
                n,
                d,
                kvd,
            );
            matmul_backward(
                Some(&mut dxn1),
                &mut grads[l.v_proj.clone()],
                &dv,
                &lc.xn1,
                at(p, &l.v_proj),
                n,
                d,
                kvd,
            );
            rmsnorm_backward(
                &mut dx,
                &mut grads[l.input_norm.clone()],
                &dxn1,
                &lc.x_in,
                at(p, &l.input_norm),
                &lc.rstd1,
            );
            // dx now holds d(x_in), the previous layer's d(x_out).
        }
        embedding_backward(&mut grads[lay.embed.clone()], &dx, &batch.ids, d);
    }

    fn attention_shape(&self, batch: &Batch) -> AttentionShape {
        AttentionShape {
            batch: batch.batch,
            seq: batch.seq,
            heads: self.cfg.num_attention_heads,
            kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
        }
    }
}
