//! The flat parameter layout: every weight of a model lives in one buffer, at an offset fixed by
//! the config (DESIGN.md, principle 3). Gradients, AdamW moments and device copies share the layout,
//! so an optimiser step is one pass over one allocation.

use super::config::LlamaConfig;
use std::ops::Range;

/// Where one HF-named tensor sits in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSlot {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

/// Offsets of one decoder layer's weights. Linear weights are [out, in], as nn.Linear stores them.
#[derive(Clone, Debug)]
pub struct LayerSlots {
    pub input_norm: Range<usize>,     // [D]
    pub q_proj: Range<usize>,         // [H*hd, D]
    pub k_proj: Range<usize>,         // [Hkv*hd, D]
    pub v_proj: Range<usize>,         // [Hkv*hd, D]
    pub o_proj: Range<usize>,         // [D, H*hd]
    pub post_attn_norm: Range<usize>, // [D]
    pub gate_proj: Range<usize>,      // [F, D]
    pub up_proj: Range<usize>,        // [F, D]
    pub down_proj: Range<usize>,      // [D, F]
}

#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub embed: Range<usize>, // [V, D]
    pub layers: Vec<LayerSlots>,
    pub final_norm: Range<usize>, // [D]
    /// The LM head [V, D]; for tied embeddings this is `embed`, and no tensor of its own exists.
    pub lm_head: Option<Range<usize>>,
    pub score: Option<Range<usize>>, // [1, D]
    pub slots: Vec<TensorSlot>,
    pub len: usize,
}

impl ParamLayout {
    pub fn new(cfg: &LlamaConfig) -> Self {
        let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let mut slots = Vec::new();
        let mut len = 0usize;
        let mut take = |name: String, shape: Vec<usize>| -> Range<usize> {
            let n: usize = shape.iter().product();
            let range = len..len + n;
            len += n;
            slots.push(TensorSlot {
                name,
                shape,
                range: range.clone(),
            });
            range
        };
        let embed = take("model.embed_tokens.weight".into(), vec![v, d]);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                LayerSlots {
                    input_norm: take(format!("{p}.input_layernorm.weight"), vec![d]),
                    q_proj: take(format!("{p}.self_attn.q_proj.weight"), vec![cfg.q_dim(), d]),
                    k_proj: take(
                        format!("{p}.self_attn.k_proj.weight"),
                        vec![cfg.kv_dim(), d],
                    ),
                    v_proj: take(
                        format!("{p}.self_attn.v_proj.weight"),
                        vec![cfg.kv_dim(), d],
                    ),
                    o_proj: take(format!("{p}.self_attn.o_proj.weight"), vec![d, cfg.q_dim()]),
                    post_attn_norm: take(format!("{p}.post_attention_layernorm.weight"), vec![d]),
                    gate_proj: take(format!("{p}.mlp.gate_proj.weight"), vec![f, d]),
                    up_proj: take(format!("{p}.mlp.up_proj.weight"), vec![f, d]),
                    down_proj: take(format!("{p}.mlp.down_proj.weight"), vec![d, f]),
                }
            })
            .collect();
        let final_norm = take("model.norm.weight".into(), vec![d]);
        let lm_head = match (cfg.has_lm_head(), cfg.tie_word_embeddings) {
            (false, _) => None,
            (true, true) => Some(embed.clone()),
            (true, false) => Some(take("lm_head.weight".into(), vec![v, d])),
        };
        let score = cfg
            .scalar_head
            .then(|| take("score.weight".into(), vec![1, d]));
        ParamLayout {
            embed,
            layers,
            final_norm,
            lm_head,
            score,
            slots,
            len,
        }
    }

    /// Whether a parameter is an RMSNorm gain (initialised to one, not random).
    pub fn is_norm(slot: &TensorSlot) -> bool {
        slot.name.ends_with("norm.weight")
    }

    /// Whether AdamW's weight decay skips a parameter: norm gains and biases, as transformers'
    /// Trainer exempts them (`get_decay_parameter_names`: LayerNorm/RMSNorm weights and every
    /// bias). Decaying a gain towards 0 would shrink the layer's output, not regularise it.
    pub fn skips_weight_decay(slot: &TensorSlot) -> bool {
        slot.name.ends_with("norm.weight") || slot.name.ends_with(".bias")
    }

    /// The flat-buffer ranges weight decay skips, sorted, with touching ranges merged.
    pub fn no_decay_ranges(&self) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for r in self
            .slots
            .iter()
            .filter(|s| Self::skips_weight_decay(s))
            .map(|s| s.range.clone())
        {
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }

    pub fn slot(&self, name: &str) -> Option<&TensorSlot> {
        self.slots.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_decay_skips_exactly_the_norm_gains() {
        let cfg = LlamaConfig::preset("tiny").expect("a preset");
        let layout = ParamLayout::new(&cfg);
        let ranges = layout.no_decay_ranges();
        // Two norms per layer and the final one, each [hidden], none of them adjacent.
        assert_eq!(ranges.len(), 2 * cfg.num_hidden_layers + 1);
        assert!(ranges.iter().all(|r| r.len() == cfg.hidden_size));
        assert_eq!(ranges[0], layout.layers[0].input_norm);
        assert_eq!(ranges[1], layout.layers[0].post_attn_norm);
        assert_eq!(*ranges.last().expect("not empty"), layout.final_norm);
        assert!(ranges.windows(2).all(|w| w[0].end < w[1].start));
        // The embedding, projections and LM head decay.
        for name in [
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ] {
            let slot = layout.slot(name).expect("a slot");
            assert!(!ParamLayout::skips_weight_decay(slot), "{name}");
        }
    }

    /// The presets' parameter counts are the published models': Llama 2 7B 6,738,415,616,
    /// 13B 13,015,864,320, 70B 68,976,648,192; Llama 3 8B 8,030,261,248, 70B 70,553,706,496.
    #[test]
    fn the_big_presets_have_the_published_parameter_counts() {
        for (name, count) in [
            ("llama-2-7b", 6_738_415_616usize),
            ("llama-2-13b", 13_015_864_320),
            ("llama-2-70b", 68_976_648_192),
            ("llama-3-8b", 8_030_261_248),
            ("llama-3-70b", 70_553_706_496),
        ] {
            let cfg = LlamaConfig::preset(name).expect("a preset");
            cfg.validate().expect("valid");
            assert_eq!(ParamLayout::new(&cfg).len, count, "{name}");
        }
    }
}
