//! A steady-state DPO step on the software GPU, counted by its driver: after the first steps of
//! a shape, a step (forward, DPO loss, backward, gradient norm, AdamW) allocates nothing, frees
//! nothing and never waits for the device; its metrics come back only when the loop reads them.
//! And a training step's memory plan (src/train/memory_plan.rs) against the bytes the step holds.
//!
//! The driver's counters and byte counts are global to the process, so this file's tests take a
//! lock and no other file's tests share the process.

mod common;
use common::emu_available;

use prefer::data::preference::PreferencePair;
use prefer::loss::DpoConfig;
use prefer::model::init::init_params;
use prefer::model::{Llama, LlamaConfig, ParamLayout};
use prefer::train::dpo::DpoObjective;
use prefer::train::gpu_step::GpuTrainer;
use prefer::train::memory_plan::MemoryPlan;
use prefer::train::objective::{Objective, PairStats, PendingStats, Split};
use prefer::train::rm::RewardObjective;
use prefer::train::state::TrainState;

fn pairs(cfg: &LlamaConfig, n: usize, prompt: usize, reply: usize) -> Vec<PreferencePair> {
    let ids = |salt: usize, len: usize| -> Vec<u32> {
        (0..len)
            .map(|t| ((salt * 31 + t * 7) % (cfg.vocab_size - 3)) as u32)
            .collect()
    };
    (0..n)
        .map(|i| PreferencePair {
            prompt: ids(i, prompt),
            chosen: ids(100 + i, reply),
            rejected: ids(200 + i, reply),
            margin: None,
            line: i + 1,
        })
        .collect()
}

/// Three steps of `objective` after a three-step warm-up (one logging interval): what the driver
/// served during them, then their stats read back.
fn steady_steps<O: Objective<prefer::ops::cuda::backend::Cuda>>(
    cfg: &LlamaConfig,
    objective: &O,
) -> (
    prefer::emu::Counters,
    prefer::emu::Counters,
    Vec<PairStats>,
    Vec<f32>,
) {
    let layout = ParamLayout::new(cfg);
    let cpu = Llama::new(cfg.clone(), init_params(cfg, &layout, 1));
    let mut state = GpuTrainer::new(&cpu).unwrap();
    let data = pairs(cfg, 4, 9, 7);
    let reference: Vec<(f32, f32)> = vec![(-40.0, -41.0); data.len()];
    let split = Split {
        pairs: &data,
        reference: Some(&reference),
    };
    let idx: Vec<usize> = (0..data.len()).collect();
    let step = |state: &mut GpuTrainer| -> PendingStats<_> {
        state.zero_grads().unwrap();
        let (model, grads) = state.model_and_grads();
        let pending = objective
            .accumulate(model, &split, &idx, 1.0, grads)
            .unwrap();
        state.step(1e-3, 1.0).unwrap();
        pending
    };
    let resolve = |state: &GpuTrainer, p: Vec<PendingStats<_>>| -> Vec<PairStats> {
        p.into_iter()
            .map(|s| s.resolve(&state.model.backend).unwrap())
            .collect()
    };
    // Warm-up, one logging interval of three steps: the first step of a shape allocates its
    // buffers and plans its GEMMs, and each pending step holds its metrics rows until the read.
    let warm: Vec<_> = (0..3).map(|_| step(&mut state)).collect();
    let mut stats = resolve(&state, warm);
    assert_eq!(state.take_grad_norms().unwrap().len(), 3);

    let before = prefer::emu::counters().unwrap();
    let steady: Vec<_> = (0..3).map(|_| step(&mut state)).collect();
    let after = prefer::emu::counters().unwrap();
    // Then the loop reads them.
    stats.extend(resolve(&state, steady));
    let norms = state.take_grad_norms().unwrap();
    (before, after, stats, norms)
}

fn assert_steady(before: prefer::emu::Counters, after: prefer::emu::Counters) {
    let d = |f: fn(&prefer::emu::Counters) -> u64| f(&after) - f(&before);
    assert!(d(|c| c.launches) > 50, "{before:?} → {after:?}");
    assert_eq!(
        d(|c| c.allocations),
        0,
        "allocations: {before:?} → {after:?}"
    );
    assert_eq!(d(|c| c.frees), 0, "frees: {before:?} → {after:?}");
    assert_eq!(d(|c| c.host_syncs), 0, "host syncs: {before:?} → {after:?}");
    assert_eq!(d(|c| c.device_to_host), 0, "reads: {before:?} → {after:?}");
}

#[test]
fn a_steady_dpo_step_allocates_nothing_and_never_waits_for_the_device() {
    if !emu_available() {
        return;
    }
    prefer::emu::activate().unwrap();
    let _serial = LOCK.lock().unwrap();
    let cfg = LlamaConfig::preset("tiny").unwrap();
    let objective = DpoObjective {
        config: DpoConfig::default(),
    };
    let (before, after, stats, norms) = steady_steps(&cfg, &objective);
    assert_steady(before, after);
    assert_eq!(norms.len(), 3);
    assert!(norms.iter().all(|n| n.is_finite() && *n > 0.0), "{norms:?}");
    // The same pairs every step, so the loss falls as the policy trains.
    let losses: Vec<f64> = stats.iter().map(|s| s.loss()).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(
        losses[5] < losses[0],
        "DPO on fixed pairs lowers the loss: {losses:?}"
    );
    assert!(stats
        .iter()
        .all(|s| s.pairs == 4 && s.policy_logps().is_some()));
}

#[test]
fn a_steady_reward_model_step_allocates_nothing_and_never_waits_for_the_device() {
    if !emu_available() {
        return;
    }
    prefer::emu::activate().unwrap();
    let _serial = LOCK.lock().unwrap();
    let mut cfg = LlamaConfig::preset("tiny").unwrap();
    cfg.scalar_head = true;
    let (before, after, stats, norms) = steady_steps(&cfg, &RewardObjective);
    assert_steady(before, after);
    assert_eq!(norms.len(), 3);
    let losses: Vec<f64> = stats.iter().map(|s| s.loss()).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(
        losses[5] < losses[0],
        "the reward model learns fixed pairs: {losses:?}"
    );
    assert!(stats
        .iter()
        .all(|s| s.pairs == 4 && s.policy_logps().is_none()));
}

#[test]
fn the_memory_plan_matches_what_a_training_step_holds() {
    if !emu_available() {
        return;
    }
    prefer::emu::activate().unwrap();
    let _serial = LOCK.lock().unwrap();
    let mut cfg = LlamaConfig::preset("tiny").unwrap();
    // Big enough that the activations, not cuBLASLt's fixed workspace, dominate.
    cfg.hidden_size = 256;
    cfg.intermediate_size = 512;
    cfg.num_attention_heads = 8;
    cfg.num_key_value_heads = 2;
    cfg.head_dim = 32;
    cfg.num_hidden_layers = 3;
    let layout = ParamLayout::new(&cfg);
    for recompute in [false, true] {
        let before = prefer::emu::reset_peak().unwrap();
        let mut cpu = Llama::new(cfg.clone(), init_params(&cfg, &layout, 2));
        cpu.recompute = recompute;
        let mut trainer = GpuTrainer::new(&cpu).unwrap();
        let (batch, seq) = (4, 96);
        let seqs: Vec<Vec<u32>> = (0..batch)
            .map(|b| (0..seq).map(|t| ((b * 13 + t * 7) % 250) as u32).collect())
            .collect();
        let batch_ids = prefer::model::Batch::right_padded(&seqs, 258);
        let dlogp = trainer.lm_loss_grad(&batch_ids).unwrap();
        for _ in 0..2 {
            trainer.lm_step(&batch_ids, &dlogp, 1e-4).unwrap();
        }
        let peak = prefer::emu::memory().unwrap().peak_bytes - before.live_bytes;
        let plan = MemoryPlan::training(&cfg, batch, seq, recompute);
        let ratio = peak as f64 / plan.total as f64;
        assert!(
            (0.9..=1.1).contains(&ratio),
            "recompute {recompute}: the step held {peak} bytes at its peak, the plan says {} ({ratio:.3})\n{}",
            plan.total,
            plan.render("test")
        );
        drop(trainer);
    }
}

/// The two tests one at a time: each reads process-wide counters.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn buffers_of_shapes_no_longer_used_go_back_to_the_driver() {
    if !emu_available() {
        return;
    }
    prefer::emu::activate().unwrap();
    let _serial = LOCK.lock().unwrap();
    let cfg = LlamaConfig::preset("tiny").unwrap();
    let layout = ParamLayout::new(&cfg);
    let cpu = Llama::new(cfg.clone(), init_params(&cfg, &layout, 1));
    let mut state = GpuTrainer::new(&cpu).unwrap();
    let objective = DpoObjective {
        config: DpoConfig::default(),
    };
    // DPO pads each batch to its longest pair: eight steps of growing lengths, then three of the
    // shortest again.
    let mut idle = Vec::new();
    for step in 0..11 {
        let reply = if step < 8 { 5 + 3 * step } else { 5 };
        let data = pairs(&cfg, 4, 9, reply);
        let reference = vec![(-40.0, -41.0); data.len()];
        let split = Split {
            pairs: &data,
            reference: Some(&reference),
        };
        state.zero_grads().unwrap();
        let (model, grads) = state.model_and_grads();
        let pending = objective.accumulate(model, &split, &[0, 1, 2, 3], 1.0, grads);
        state.step(1e-3, 1.0).unwrap();
        pending.unwrap().resolve(&state.model.backend).unwrap();
        idle.push(state.model.backend.idle_bytes());
    }
    // The pool keeps the last three steps' shapes: after three steps of one short shape, the
    // long shapes' buffers are gone (all eight would hold many times more).
    assert!(idle[10] > 0, "{idle:?}");
    assert!(
        (idle[10] as f64) < 0.5 * idle[7] as f64,
        "buffers of old shapes were kept: {idle:?}"
    );
}
