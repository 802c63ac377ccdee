//! The whole tiny model, scalar head included, against finite differences: every parameter
//! tensor along a direction, and its largest-gradient coordinates one by one, on a padded batch.

mod common;
use common::*;
use prefer::model::init::init_params;
use prefer::model::{Batch, HeadGrads, Llama, LlamaConfig, ParamLayout};

fn tiny_model(seed: u64) -> Llama {
    let mut cfg = LlamaConfig::preset("tiny").unwrap();
    cfg.scalar_head = true;
    // A larger init than 0.02 makes attention and the LM head far from uniform, so every path
    // carries gradient worth checking.
    cfg.initializer_range = 0.15;
    let layout = ParamLayout::new(&cfg);
    let mut params = init_params(&cfg, &layout, seed);
    // Norm gains away from one, so a gain's gradient is not hidden by symmetry.
    let mut g = rng(seed + 1);
    for slot in layout.slots.iter().filter(|s| ParamLayout::is_norm(s)) {
        for (p, n) in
            params[slot.range.clone()]
                .iter_mut()
                .zip(randn(&mut g, slot.range.len(), 0.3))
        {
            *p += n;
        }
    }
    Llama::new(cfg, params)
}

fn check_model(batch: &Batch, seed: u64) {
    let model = tiny_model(seed);
    let n = batch.tokens();
    let mut g = rng(seed + 2);
    let valid = batch.next_token_mask();
    let masked = |r: Vec<f32>, m: &[bool]| -> Vec<f32> {
        r.into_iter()
            .zip(m)
            .map(|(x, &keep)| if keep { x } else { 0.0 })
            .collect()
    };
    // Upstream weights: log-probs and entropies where a next token exists, values on real tokens.
    let r_logp = masked(randn(&mut g, n, 1.0), &valid);
    let r_ent = masked(randn(&mut g, n, 0.5), &valid);
    let r_val = masked(randn(&mut g, n, 1.0), &batch.mask);
    let loss = |m: &Llama| {
        let f = m.forward(batch).unwrap();
        weighted_sum(&f.logp, &r_logp)
            + weighted_sum(&f.entropy, &r_ent)
            + weighted_sum(&f.value, &r_val)
    };

    let fwd = model.forward(batch).unwrap();
    let mut grads = vec![0.0; model.layout.len];
    let heads = HeadGrads {
        logp: Some(&r_logp),
        entropy: Some(&r_ent),
        value: Some(&r_val),
    };
    model.backward(&fwd, &heads, &mut grads).unwrap();

    let mut m = model.clone();
    for (k, slot) in model.layout.slots.iter().enumerate() {
        let range = slot.range.clone();
        let analytic = &grads[range.clone()];
        assert!(
            analytic.iter().any(|&x| x != 0.0),
            "{} has an all-zero gradient",
            slot.name
        );
        let mut x = m.params[range.clone()].to_vec();
        let eval = |m: &mut Llama, x: &[f32]| {
            m.params[range.clone()].copy_from_slice(x);
            loss(m)
        };
        check_directional(&slot.name, &mut x, analytic, seed + k as u64, |x| {
            eval(&mut m, x)
        });
        // The 3 largest-gradient coordinates, where relative error is meaningful.
        let mut order: Vec<usize> = (0..analytic.len()).collect();
        order.sort_by(|&a, &b| analytic[b].abs().total_cmp(&analytic[a].abs()));
        for &i in order.iter().take(3) {
            let keep = x[i];
            let mut probe = |v: f32, m: &mut Llama| {
                x[i] = v;
                eval(m, &x)
            };
            let fd =
                (probe(keep + STEP, &mut m) - probe(keep - STEP, &mut m)) / (2.0 * STEP as f64);
            x[i] = keep;
            m.params[range.clone()].copy_from_slice(&x);
            let an = analytic[i] as f64;
            assert!(
                (fd - an).abs() <= ATOL + RTOL * an.abs(),
                "{}[{i}]: finite difference {fd:.6e} vs analytic {an:.6e}",
                slot.name
            );
        }
    }
}

#[test]
fn tiny_model_gradients_right_padded() {
    let batch = Batch::right_padded(
        &[
            vec![256, 72, 101, 108, 108, 111, 257],
            vec![256, 9, 200, 33],
        ],
        258,
    );
    check_model(&batch, 100);
}

#[test]
fn tiny_model_gradients_left_padded() {
    let batch = Batch::left_padded(&[vec![256, 5, 6], vec![256, 1, 2, 3, 4, 250]], 258);
    check_model(&batch, 200);
}

#[test]
fn padding_does_not_change_real_tokens() {
    // The same sequence alone, right-padded beside a longer one, and left-padded beside it must
    // give the same log-probs and values on its real tokens.
    let model = tiny_model(300);
    let s = vec![256u32, 10, 20, 30, 40];
    let long = vec![256u32, 1, 2, 3, 4, 5, 6, 7, 8];
    let alone = model
        .forward(&Batch::right_padded(std::slice::from_ref(&s), 258))
        .unwrap();
    let right = model
        .forward(&Batch::right_padded(&[s.clone(), long.clone()], 258))
        .unwrap();
    let left = model
        .forward(&Batch::left_padded(&[s.clone(), long], 258))
        .unwrap();
    let off = 9 - s.len();
    for t in 0..s.len() - 1 {
        assert!((alone.logp[t] - right.logp[t]).abs() < 1e-5);
        assert!((alone.logp[t] - left.logp[off + t]).abs() < 1e-5);
    }
    let last = s.len() - 1;
    assert!((alone.value[last] - right.value[last]).abs() < 1e-5);
    assert!((alone.value[last] - left.value[off + last]).abs() < 1e-5);
}

#[test]
fn recompute_gives_the_same_gradients_bit_for_bit() {
    let seqs = vec![
        (0..23u32).map(|t| (t * 7) % 250).collect::<Vec<_>>(),
        vec![3, 9, 27, 81],
    ];
    let batch = Batch::left_padded(&seqs, 258);
    let model = tiny_model(3);
    let n = batch.tokens();
    let r_logp = randn(&mut rng(4), n, 1.0);
    let r_val = randn(&mut rng(5), n, 1.0);
    let heads = HeadGrads {
        logp: Some(&r_logp),
        entropy: None,
        value: Some(&r_val),
    };
    let grads_of = |m: &Llama| {
        let fwd = m.forward(&batch).unwrap();
        let mut g = vec![0.0; m.layout.len];
        m.backward(&fwd, &heads, &mut g).unwrap();
        (g, fwd.logp.clone())
    };
    let (full, logp) = grads_of(&model);
    let mut recomputing = model.clone();
    recomputing.recompute = true;
    let (rebuilt, logp_r) = grads_of(&recomputing);
    assert_eq!(logp, logp_r);
    assert!(full.iter().any(|&x| x != 0.0));
    assert!(
        full.iter()
            .zip(&rebuilt)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "recompute changed the gradients"
    );
}
