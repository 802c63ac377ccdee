//! The CPU oracle's speed: the whole PPO loss pipeline over a 64 × 1024 batch (it must stay well
//! under a second, since the CUDA kernels are checked against it), the DPO loss, and a tiny-model
//! training micro-step. GPU kernels get their own benches with the CUDA engine.

use criterion::{criterion_group, criterion_main, Criterion};
use prefer::loss::*;
use prefer::model::init::init_params;
use prefer::model::{Batch, HeadGrads, Llama, LlamaConfig, ParamLayout};
use std::hint::black_box;

fn ppo_pipeline(c: &mut Criterion) {
    let (b, t) = (64, 1024);
    let n = b * t;
    let wave = |i: usize, k: f32| ((i as f32 * k).sin() * 0.5) - 2.0;
    let logp: Vec<f32> = (0..n).map(|i| wave(i, 0.37)).collect();
    let old: Vec<f32> = (0..n)
        .map(|i| wave(i, 0.37) + 0.01 * (i as f32 * 1.3).cos())
        .collect();
    let reference: Vec<f32> = (0..n).map(|i| wave(i, 0.41)).collect();
    let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
    let entropy = vec![1.5f32; n];
    // Responses of mixed lengths, the rest padding.
    let mask: Vec<bool> = (0..n).map(|i| i % t < 256 + (i / t) * 12).collect();
    let scores: Vec<f32> = (0..b).map(|i| i as f32 * 0.1 - 3.0).collect();
    c.bench_function(
        "ppo losses 64x1024 (kl, shaping, gae, whiten, policy, value, entropy)",
        |bench| {
            bench.iter(|| {
                let kl = per_token_kl(&logp, &reference, &mask, KlEstimator::K1, None);
                let rewards = shaped_rewards(&kl.kl, &scores, &mask, b, t, 0.05);
                let g = gae(&rewards, &values, &mask, b, t, &GaeConfig::default());
                let adv = whiten(&g.advantages, &mask, true);
                let pl = clipped_policy_loss(
                    &logp,
                    &old,
                    &adv,
                    &mask,
                    b,
                    t,
                    &PolicyLossConfig::default(),
                );
                let vl = clipped_value_loss(
                    &values,
                    &values,
                    &g.returns,
                    &mask,
                    b,
                    t,
                    &ValueLossConfig::default(),
                );
                let eb = entropy_bonus(&entropy, &mask, b, t, 0.01);
                black_box((pl.loss, vl.loss, eb.loss))
            })
        },
    );
    c.bench_function(
        "dpo sequence log-probs + loss + backward, 64x1024",
        |bench| {
            bench.iter(|| {
                let seq = sequence_logprobs(&logp, &mask, b, t, SeqReduction::Sum);
                let refs = sequence_logprobs(&reference, &mask, b, t, SeqReduction::Sum);
                let inputs = DpoInputs {
                    policy_chosen: &seq[..32],
                    policy_rejected: &seq[32..],
                    reference_chosen: &refs[..32],
                    reference_rejected: &refs[32..],
                };
                let out = dpo_loss(&inputs, &DpoConfig::default());
                let g: Vec<f32> = out
                    .grad_policy_chosen
                    .iter()
                    .chain(&out.grad_policy_rejected)
                    .copied()
                    .collect();
                black_box(sequence_logprobs_backward(
                    &g,
                    &mask,
                    b,
                    t,
                    SeqReduction::Sum,
                ))
            })
        },
    );
}

fn tiny_model_step(c: &mut Criterion) {
    let cfg = LlamaConfig::preset("tiny").unwrap();
    let params = init_params(&cfg, &ParamLayout::new(&cfg), 0);
    let model = Llama::new(cfg, params);
    let seqs: Vec<Vec<u32>> = (0..8)
        .map(|i| (0..64).map(|t| ((i * 31 + t * 7) % 256) as u32).collect())
        .collect();
    let batch = Batch::right_padded(&seqs, 258);
    let dlogp = vec![1.0 / batch.tokens() as f32; batch.tokens()];
    let mut grads = vec![0.0; model.layout.len];
    c.bench_function(
        "tiny model forward+backward, 8x64 tokens (CPU oracle)",
        |bench| {
            bench.iter(|| {
                let fwd = model.forward(&batch).unwrap();
                let heads = HeadGrads {
                    logp: Some(&dlogp),
                    ..Default::default()
                };
                model.backward(&fwd, &heads, &mut grads).unwrap();
                black_box(grads[0])
            })
        },
    );
}

criterion_group!(benches, ppo_pipeline, tiny_model_step);
criterion_main!(benches);
