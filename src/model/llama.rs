//! The Llama forward and backward, written once over the op set of `Backend` (DESIGN.md,
//! principles 1 and 2): the CPU oracle and the CUDA engine run this same code. No autograd:
//! every step of the forward has its hand-written backward, in reverse order below.
//!
//! Shapes: B sequences of T tokens, N = B·T, D hidden, F FFN, H heads of hd, Hkv KV heads, V vocab.

use super::config::LlamaConfig;
use super::grad_sink::GradSink;
use super::param_units::{layer_unit, GatheredWeights, OuterSlots, OUTER};
use super::params::LayerSlots;
use super::params::ParamLayout;
use crate::ops::cpu::{AttentionShape, Cpu};
use crate::ops::cuda::backend::Cuda;
use crate::ops::{Backend, Batch};
use anyhow::{bail, ensure, Result};

/// What one layer's backward needs from its forward, besides the layer's input (kept apart, so
/// `--recompute` can keep only that and rebuild the rest in the backward).
struct LayerCache<B: Backend> {
    rstd1: B::Acc, // [N]
    xn1: B::Act,   // [N, D]
    q: B::Act,     // [N, H·hd] after rotary
    k: B::Act,     // [N, Hkv·hd] after rotary
    v: B::Act,     // [N, Hkv·hd]
    att: B::Act,   // [N, H·hd]
    lse: B::Acc,   // [B, H, T]
    x_mid: B::Act, // [N, D] after the attention residual
    rstd2: B::Acc, // [N]
    xn2: B::Act,   // [N, D]
    gate: B::Act,  // [N, F]
    up: B::Act,    // [N, F]
    act: B::Act,   // [N, F]
}

impl<B: Backend> LayerCache<B> {
    fn recycle(self, o: &B) {
        for a in [self.xn1, self.q, self.k, self.v, self.att, self.x_mid] {
            o.recycle_act(a);
        }
        for a in [self.xn2, self.gate, self.up, self.act] {
            o.recycle_act(a);
        }
        for a in [self.rstd1, self.lse, self.rstd2] {
            o.recycle_acc(a);
        }
    }
}

/// The backward's scratch for one layer's gradients, reused from layer to layer.
struct LayerGrads<B: Backend> {
    dx_act: B::Act, // [N, D] the residual gradient cast for the matmuls
    dact: B::Act,   // [N, F]
    dgate: B::Act,  // [N, F]
    dup: B::Act,    // [N, F]
    dxn: B::Acc,    // [N, D]
    datt: B::Act,   // [N, H·hd]
    dq: B::Act,     // [N, H·hd]
    dk: B::Act,     // [N, Hkv·hd]
    dv: B::Act,     // [N, Hkv·hd]
}

/// The forward's results, plus everything its backward needs.
pub struct Forward<B: Backend = Cpu> {
    /// log p(next token) at each position [N]; empty without an LM head.
    pub logp: B::Acc,
    /// Entropy of the next-token distribution at each position [N]; empty without an LM head.
    pub entropy: B::Acc,
    /// The scalar head at each position [N]; empty without one.
    pub value: B::Acc,
    /// Each layer's input [N, D] (the residual stream entering it), always kept.
    x_in: Vec<B::Act>,
    /// Each layer's other saved tensors; None under recompute (rebuilt in the backward).
    layers: Vec<Option<LayerCache<B>>>,
    x_last: B::Act, // [N, D] the residual stream leaving the last layer
    rstd_f: B::Acc, // [N]
    h_f: B::Act,    // [N, D] final-normed hidden states
    lse: B::Acc,    // [N] the LM head's logsumexp
    inputs: B::Inputs,
    shape: AttentionShape,
    heads: Heads,
}

impl<B: Backend> Forward<B> {
    /// The final-normed hidden states [N, D] the heads read.
    pub fn hidden(&self) -> &B::Act {
        &self.h_f
    }

    /// Hands every buffer back to the backend for the next forward of this shape.
    pub fn recycle(self, o: &B) {
        for lc in self.layers.into_iter().flatten() {
            lc.recycle(o);
        }
        for a in self.x_in.into_iter().chain([self.x_last, self.h_f]) {
            o.recycle_act(a);
        }
        for a in [self.logp, self.entropy, self.value, self.rstd_f, self.lse] {
            o.recycle_acc(a);
        }
        o.recycle_inputs(self.inputs);
    }
}

/// Upstream gradients for the heads, each [N]; `None` means no gradient through that head.
pub struct HeadGrads<'a, B: Backend = Cpu> {
    pub logp: Option<&'a B::Acc>,
    pub entropy: Option<&'a B::Acc>,
    pub value: Option<&'a B::Acc>,
}

impl<B: Backend> Default for HeadGrads<'_, B> {
    fn default() -> Self {
        HeadGrads {
            logp: None,
            entropy: None,
            value: None,
        }
    }
}

/// Which heads a forward computes; skipping the LM head saves the vocabulary-sized work when only
/// a reward is wanted. `temperature` divides the logits before the log-softmax (PPO scores the
/// distribution it samples from, as TRL does); 1 elsewhere.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heads {
    pub logp: bool,
    pub value: bool,
    pub temperature: f32,
}

impl Heads {
    pub const ALL: Heads = Heads {
        logp: true,
        value: true,
        temperature: 1.0,
    };
    pub const LOGP: Heads = Heads {
        logp: true,
        value: false,
        temperature: 1.0,
    };
    pub const VALUE: Heads = Heads {
        logp: false,
        value: true,
        temperature: 1.0,
    };
    pub const NONE: Heads = Heads {
        logp: false,
        value: false,
        temperature: 1.0,
    };

    /// Log-probs (and entropies) of the distribution at `temperature`.
    pub fn logp_at(temperature: f32) -> Heads {
        Heads {
            temperature,
            ..Heads::LOGP
        }
    }
}

/// A Llama model: config, flat parameter layout, the parameters, and the backend they live on.
pub struct Llama<B: Backend = Cpu> {
    pub cfg: LlamaConfig,
    pub layout: ParamLayout,
    pub params: B::Params,
    pub backend: B,
    /// Keep only each layer's input through the forward and recompute the rest of the layer in
    /// the backward: about a third more compute for a fraction of the activation memory.
    pub recompute: bool,
    /// Under `--shard full` (FSDP): `params` is this rank's shard, and each part's weights are
    /// gathered from the ranks' shards just before use (src/model/param_units.rs).
    pub sharded: Option<Box<dyn GatheredWeights<B>>>,
}

/// A part's weights for one use: the model's own buffer, or a buffer gathered for the part.
enum Part<'a, B: Backend> {
    Own(&'a B::Params),
    Gathered(B::Params),
}

impl<B: Backend> Part<'_, B> {
    fn p(&self) -> &B::Params {
        match self {
            Part::Own(p) => p,
            Part::Gathered(p) => p,
        }
    }
}

impl Clone for Llama<Cpu> {
    fn clone(&self) -> Self {
        Llama {
            cfg: self.cfg.clone(),
            layout: self.layout.clone(),
            params: self.params.clone(),
            backend: Cpu,
            recompute: self.recompute,
            sharded: None,
        }
    }
}

impl Llama<Cpu> {
    /// A CPU model from f32 parameters in the config's layout.
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
            backend: Cpu,
            recompute: false,
            sharded: None,
        }
    }

    /// This model's weights moved to the GPU of `cuda` (rounded to bf16).
    pub fn upload(&self, cuda: Cuda) -> Result<Llama<Cuda>> {
        let params = cuda.upload_params(&self.params)?;
        Ok(Llama {
            cfg: self.cfg.clone(),
            layout: self.layout.clone(),
            params,
            backend: cuda,
            recompute: self.recompute,
            sharded: None,
        })
    }
}

impl<B: Backend> Llama<B> {
    /// Rejects empty batches and ids outside the vocabulary, so the ops below never see bad input.
    pub fn check_batch(&self, batch: &Batch) -> Result<()> {
        ensure!(
            batch.batch > 0 && batch.seq > 0,
            "an empty batch ({} × {})",
            batch.batch,
            batch.seq
        );
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
    pub fn forward(&self, batch: &Batch) -> Result<Forward<B>> {
        self.forward_heads(batch, Heads::ALL)
    }

    /// The forward with only the heads asked for (and present) computed.
    pub fn forward_heads(&self, batch: &Batch, heads: Heads) -> Result<Forward<B>> {
        self.check_batch(batch)?;
        let (c, o) = (&self.cfg, &self.backend);
        let (n, d) = (batch.tokens(), c.hidden_size);
        let shape = self.attention_shape(batch);
        let inputs = o.inputs(&c.rope(), batch, &batch.next_tokens())?;

        let layer_count = c.num_hidden_layers;
        let (outer, os) = self.outer_weights((layer_count > 0).then(|| layer_unit(0)))?;
        let mut x = o.act(n * d)?;
        o.embedding_forward(&mut x, &inputs, outer.p(), &os.embed, d)?;
        let (mut x_in, mut layers) = (
            Vec::with_capacity(layer_count),
            Vec::with_capacity(layer_count),
        );
        for l in 0..layer_count {
            let next = (l + 1 < layer_count).then(|| layer_unit(l + 1));
            let (w, slots) = self.layer_weights(l, next)?;
            let (lc, x_out) = self.layer_forward(w.p(), slots, &x, &inputs, shape)?;
            self.done_with(w);
            layers.push(match self.recompute {
                true => {
                    lc.recycle(o);
                    None
                }
                false => Some(lc),
            });
            x_in.push(std::mem::replace(&mut x, x_out));
        }
        let p = outer.p();
        let mut h_f = o.act(n * d)?;
        let mut rstd_f = o.acc(n)?;
        o.rmsnorm_forward(&mut h_f, &mut rstd_f, &x, p, &os.final_norm, c.rms_norm_eps)?;

        let heads = Heads {
            logp: heads.logp && os.lm_head.is_some(),
            value: heads.value && os.score.is_some(),
            temperature: heads.temperature,
        };
        anyhow::ensure!(
            heads.temperature > 0.0 && heads.temperature.is_finite(),
            "log-probs at temperature {} (it must be positive)",
            heads.temperature
        );
        // Heads not computed get empty buffers.
        let per_token = |on: bool| if on { n } else { 0 };
        let lm = per_token(heads.logp);
        let (mut logp, mut entropy, mut lse) = (o.acc(lm)?, o.acc(lm)?, o.acc(lm)?);
        if let (Some(head), true) = (&os.lm_head, heads.logp) {
            let scale = 1.0 / heads.temperature;
            o.logprob_forward(
                &mut logp,
                &mut entropy,
                &mut lse,
                &h_f,
                p,
                head,
                &inputs,
                d,
                scale,
            )?;
        }
        let mut value = o.acc(per_token(heads.value))?;
        if let (Some(score), true) = (&os.score, heads.value) {
            o.scalar_head_forward(&mut value, &h_f, p, score)?;
        }
        self.done_with(outer);
        Ok(Forward {
            logp,
            entropy,
            value,
            x_in,
            layers,
            x_last: x,
            rstd_f,
            h_f,
            lse,
            inputs,
            shape,
            heads,
        })
    }

    /// The embedding, final norm and heads' weights, and where they sit: in the model's own
    /// buffer, or (`--shard full`) gathered for this use, gathering unit `next` meanwhile.
    fn outer_weights(&self, next: Option<usize>) -> Result<(Part<'_, B>, OuterSlots)> {
        Ok(match &self.sharded {
            None => (Part::Own(&self.params), self.layout.outer_slots()),
            Some(s) => (
                Part::Gathered(s.gather(&self.params, OUTER, next)?),
                s.units().outer.clone(),
            ),
        })
    }

    /// Layer `l`'s weights and where they sit, as [`Llama::outer_weights`].
    fn layer_weights(&self, l: usize, next: Option<usize>) -> Result<(Part<'_, B>, &LayerSlots)> {
        Ok(match &self.sharded {
            None => (Part::Own(&self.params), &self.layout.layers[l]),
            Some(s) => (
                Part::Gathered(s.gather(&self.params, layer_unit(l), next)?),
                &s.units().layers[l],
            ),
        })
    }

    /// Hands a gathered part's buffer back once the work that reads it is queued.
    fn done_with(&self, w: Part<'_, B>) {
        if let (Part::Gathered(buf), Some(s)) = (w, &self.sharded) {
            s.release(buf);
        }
    }

    /// Whether every forward and backward is a collective over the ranks (`--shard full`): then
    /// every rank must run as many as the others, a rank with no batch left running
    /// [`Llama::idle_pass`].
    pub fn in_lockstep(&self) -> bool {
        self.sharded.is_some()
    }

    /// A forward (and with `grads`, a backward with a zero upstream gradient, which adds
    /// nothing) over a one-token batch: the gathers and reduce-scatters of a real pass, so that
    /// under `--shard full` a rank with no batch left keeps step with the others.
    pub fn idle_pass(&self, grads: Option<&mut B::Acc>) -> Result<()> {
        let batch = Batch::right_padded(&[vec![0]], 0);
        let heads = Heads {
            logp: self.layout.lm_head.is_some(),
            value: self.layout.score.is_some(),
            temperature: 1.0,
        };
        let fwd = self.forward_heads(&batch, heads)?;
        if let Some(grads) = grads {
            let zero = self.backend.acc(batch.tokens())?;
            let g = HeadGrads {
                logp: heads.logp.then_some(&zero),
                entropy: None,
                value: (heads.value && !heads.logp).then_some(&zero),
            };
            self.backward(&fwd, &g, grads)?;
            self.backend.recycle_acc(zero);
        }
        fwd.recycle(&self.backend);
        Ok(())
    }

    /// Accumulates into `grads` (the parameter layout) the gradient of Σ g·head over the heads'
    /// upstream gradients `g`.
    pub fn backward(&self, fwd: &Forward<B>, g: &HeadGrads<B>, grads: &mut B::Acc) -> Result<()> {
        self.backward_into(fwd, g, GradSink::plain(grads))
    }

    /// [`Llama::backward`] into `sink`, telling its listener as each stage's gradients become
    /// final: after the heads, after each decoder layer, and at the end (src/model/grad_sink.rs).
    /// Under `--shard full`, `sink` is this rank's gradient shard: each part's gradients are
    /// summed in a buffer of the part's own and reduce-scattered into it as the backward leaves
    /// the part.
    pub fn backward_into(
        &self,
        fwd: &Forward<B>,
        g: &HeadGrads<B>,
        mut sink: GradSink<B>,
    ) -> Result<()> {
        let (c, o) = (&self.cfg, &self.backend);
        let n = fwd.shape.batch * fwd.shape.seq;
        let (d, f, qd, kvd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        ensure!(
            (g.logp.is_none() && g.entropy.is_none()) || fwd.heads.logp,
            "backward through log-probs the forward did not compute"
        );
        ensure!(
            g.value.is_none() || fwd.heads.value,
            "backward through values the forward did not compute"
        );
        let layer_count = self.layout.layers.len();
        let last_layer = layer_count.checked_sub(1).map(layer_unit);
        let (outer, os) = self.outer_weights(last_layer)?;
        // A gathered part's gradients go to a buffer of its own, then to the ranks' reduce.
        let part_grads = |unit: usize| -> Result<Option<B::Acc>> {
            match &self.sharded {
                Some(s) => Ok(Some(o.acc(s.padded_len(unit))?)),
                None => Ok(None),
            }
        };
        let mut outer_grads = part_grads(OUTER)?;

        let mut dh = o.acc(n * d)?;
        let mut dx = o.acc(n * d)?;
        {
            let (p, gbuf) = (outer.p(), outer_grads.as_mut().unwrap_or(&mut *sink.buf));
            if let (Some(head), true) = (&os.lm_head, g.logp.is_some() || g.entropy.is_some()) {
                let zeros = match g.logp {
                    Some(_) => None,
                    None => Some(o.acc(n)?),
                };
                let dlogp = g.logp.or(zeros.as_ref()).expect("one of the two");
                o.logprob_backward(
                    &mut dh,
                    gbuf,
                    head,
                    dlogp,
                    g.entropy,
                    &fwd.h_f,
                    p,
                    &fwd.inputs,
                    [&fwd.lse, &fwd.entropy],
                    d,
                    1.0 / fwd.heads.temperature,
                )?;
                if let Some(z) = zeros {
                    o.recycle_acc(z);
                }
            }
            if let (Some(score), Some(dvalue)) = (&os.score, g.value) {
                o.scalar_head_backward(&mut dh, gbuf, score, dvalue, &fwd.h_f, p)?;
            }
            // dx: the residual stream's gradient, f32 from the top of the model to the
            // embedding.
            o.rmsnorm_backward(
                &mut dx,
                gbuf,
                &os.final_norm,
                &dh,
                &fwd.x_last,
                p,
                &fwd.rstd_f,
            )?;
        }
        sink.finished_from(self.layout.final_norm.start)?;

        let mut ws = LayerGrads::<B> {
            dx_act: o.act(n * d)?,
            dact: o.act(n * f)?,
            dgate: o.act(n * f)?,
            dup: o.act(n * f)?,
            dxn: o.acc(n * d)?,
            datt: o.act(n * qd)?,
            dq: o.act(n * qd)?,
            dk: o.act(n * kvd)?,
            dv: o.act(n * kvd)?,
        };
        for i in (0..layer_count).rev() {
            let next = i.checked_sub(1).map(layer_unit);
            let (w, slots) = self.layer_weights(i, next)?;
            let mut grads = part_grads(layer_unit(i))?;
            let gbuf = grads.as_mut().unwrap_or(&mut *sink.buf);
            self.layer_backward(i, w.p(), slots, gbuf, &mut dx, &mut ws, fwd)?;
            self.done_with(w);
            if let (Some(grads), Some(s)) = (grads, &self.sharded) {
                s.reduce(layer_unit(i), grads, sink.buf)?;
            }
            // dx now holds d(x_in), the previous layer's d(x_out).
            sink.finished_from(self.layout.layers[i].input_norm.start)?;
        }
        {
            let gbuf = outer_grads.as_mut().unwrap_or(&mut *sink.buf);
            o.embedding_backward(gbuf, &os.embed, &dx, &fwd.inputs, d)?;
        }
        self.done_with(outer);
        if let (Some(grads), Some(s)) = (outer_grads, &self.sharded) {
            s.reduce(OUTER, grads, sink.buf)?;
            s.flush(sink.buf)?;
        }
        sink.finished_from(0)?;
        for a in [dh, dx, ws.dxn] {
            o.recycle_acc(a);
        }
        for a in [
            ws.dx_act, ws.dact, ws.dgate, ws.dup, ws.datt, ws.dq, ws.dk, ws.dv,
        ] {
            o.recycle_act(a);
        }
        Ok(())
    }

    /// Layer `i`'s backward, its weights `p` at `l`: its gradients into `grads` (at `l`'s
    /// offsets), and `dx` from d(x_out) to d(x_in).
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        i: usize,
        p: &B::Params,
        l: &LayerSlots,
        grads: &mut B::Acc,
        dx: &mut B::Acc,
        ws: &mut LayerGrads<B>,
        fwd: &Forward<B>,
    ) -> Result<()> {
        let (c, o) = (&self.cfg, &self.backend);
        let n = fwd.shape.batch * fwd.shape.seq;
        let (d, f, qd, kvd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        let x_in = &fwd.x_in[i];
        // Under recompute, this layer's saved tensors are rebuilt from its input.
        let rebuilt = match &fwd.layers[i] {
            Some(_) => None,
            None => {
                let (lc, x_out) = self.layer_forward(p, l, x_in, &fwd.inputs, fwd.shape)?;
                o.recycle_act(x_out);
                Some(lc)
            }
        };
        let lc = fwd.layers[i]
            .as_ref()
            .or(rebuilt.as_ref())
            .expect("kept or rebuilt");
        let LayerGrads {
            dx_act,
            dact,
            dgate,
            dup,
            dxn,
            datt,
            dq,
            dk,
            dv,
        } = ws;
        // dx holds d(x_out); x_out = x_mid + mlp, so d(x_mid) starts as dx itself.
        o.cast_to_act(dx_act, dx)?;
        o.matmul_backward(dact, grads, dx_act, &lc.act, p, &l.down_proj, n, f, d)?;
        o.swiglu_backward(dgate, dup, dact, &lc.gate, &lc.up)?;
        o.zero(dxn)?;
        o.matmul_backward_add(dxn, grads, dgate, &lc.xn2, p, &l.gate_proj, n, d, f)?;
        o.matmul_backward_add(dxn, grads, dup, &lc.xn2, p, &l.up_proj, n, d, f)?;
        o.rmsnorm_backward(dx, grads, &l.post_attn_norm, dxn, &lc.x_mid, p, &lc.rstd2)?;

        // dx now holds d(x_mid); x_mid = x_in + o_proj(att).
        o.cast_to_act(dx_act, dx)?;
        o.matmul_backward(datt, grads, dx_act, &lc.att, p, &l.o_proj, n, qd, d)?;
        o.attention_backward(
            dq,
            dk,
            dv,
            datt,
            [&lc.q, &lc.k, &lc.v, &lc.att],
            &lc.lse,
            &fwd.inputs,
            fwd.shape,
        )?;
        o.rope_backward(dq, &fwd.inputs, c.num_attention_heads)?;
        o.rope_backward(dk, &fwd.inputs, c.num_key_value_heads)?;
        o.zero(dxn)?;
        o.matmul_backward_add(dxn, grads, dq, &lc.xn1, p, &l.q_proj, n, d, qd)?;
        o.matmul_backward_add(dxn, grads, dk, &lc.xn1, p, &l.k_proj, n, d, kvd)?;
        o.matmul_backward_add(dxn, grads, dv, &lc.xn1, p, &l.v_proj, n, d, kvd)?;
        o.rmsnorm_backward(dx, grads, &l.input_norm, dxn, x_in, p, &lc.rstd1)?;
        if let Some(lc) = rebuilt {
            lc.recycle(o);
        }
        Ok(())
    }

    /// One decoder layer (its weights `p` at `l`) on its input x_in [N, D]: what its backward
    /// needs, and its output.
    fn layer_forward(
        &self,
        p: &B::Params,
        l: &LayerSlots,
        x_in: &B::Act,
        inputs: &B::Inputs,
        shape: AttentionShape,
    ) -> Result<(LayerCache<B>, B::Act)> {
        let (c, o) = (&self.cfg, &self.backend);
        let (n, d, f) = (shape.batch * shape.seq, c.hidden_size, c.intermediate_size);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let mut lc = LayerCache::<B> {
            rstd1: o.acc(n)?,
            xn1: o.act(n * d)?,
            q: o.act(n * qd)?,
            k: o.act(n * kvd)?,
            v: o.act(n * kvd)?,
            att: o.act(n * qd)?,
            lse: o.acc(n * c.num_attention_heads)?,
            x_mid: o.act(n * d)?,
            rstd2: o.acc(n)?,
            xn2: o.act(n * d)?,
            gate: o.act(n * f)?,
            up: o.act(n * f)?,
            act: o.act(n * f)?,
        };
        // attention block: x_mid = x_in + o_proj(attn(rope(q), rope(k), v))
        o.rmsnorm_forward(
            &mut lc.xn1,
            &mut lc.rstd1,
            x_in,
            p,
            &l.input_norm,
            c.rms_norm_eps,
        )?;
        o.matmul_forward(&mut lc.q, &lc.xn1, p, &l.q_proj, n, d, qd)?;
        o.matmul_forward(&mut lc.k, &lc.xn1, p, &l.k_proj, n, d, kvd)?;
        o.matmul_forward(&mut lc.v, &lc.xn1, p, &l.v_proj, n, d, kvd)?;
        o.rope_forward(&mut lc.q, inputs, c.num_attention_heads)?;
        o.rope_forward(&mut lc.k, inputs, c.num_key_value_heads)?;
        o.attention_forward(&mut lc.att, &mut lc.lse, &lc.q, &lc.k, &lc.v, inputs, shape)?;
        let mut proj = o.act(n * d)?; // o_proj's output, then down_proj's
        o.matmul_forward(&mut proj, &lc.att, p, &l.o_proj, n, qd, d)?;
        o.residual_forward(&mut lc.x_mid, x_in, &proj)?;
        // MLP block: x_out = x_mid + down(silu(gate(xn2)) · up(xn2))
        o.rmsnorm_forward(
            &mut lc.xn2,
            &mut lc.rstd2,
            &lc.x_mid,
            p,
            &l.post_attn_norm,
            c.rms_norm_eps,
        )?;
        o.matmul_forward(&mut lc.gate, &lc.xn2, p, &l.gate_proj, n, d, f)?;
        o.matmul_forward(&mut lc.up, &lc.xn2, p, &l.up_proj, n, d, f)?;
        o.swiglu_forward(&mut lc.act, &lc.gate, &lc.up)?;
        o.matmul_forward(&mut proj, &lc.act, p, &l.down_proj, n, f, d)?;
        let mut x_out = o.act(n * d)?;
        o.residual_forward(&mut x_out, &lc.x_mid, &proj)?;
        o.recycle_act(proj);
        Ok((lc, x_out))
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
