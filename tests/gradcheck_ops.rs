//! Every CPU op's backward against central finite differences of its forward.
//! Tolerances are in tests/common (STEP, ATOL, RTOL) with their justification.

mod common;
use common::*;
use prefer::model::LlamaConfig;
use prefer::ops::cpu::*;

#[test]
fn matmul_gradients() {
    let (n, i, o) = (5, 7, 3);
    let mut g = rng(1);
    let (mut x, mut w, r) = (
        randn(&mut g, n * i, 1.0),
        randn(&mut g, o * i, 1.0),
        randn(&mut g, n * o, 1.0),
    );
    let f = |x: &[f32], w: &[f32]| {
        let mut y = vec![0.0; n * o];
        matmul_forward(&mut y, x, w, n, i, o);
        weighted_sum(&y, &r)
    };
    // y[0,0] = Σ_k x[0,k]·w[0,k]: checks the layout, not just self-consistency.
    let mut y = vec![0.0; n * o];
    matmul_forward(&mut y, &x, &w, n, i, o);
    let direct: f32 = (0..i).map(|k| x[k] * w[k]).sum();
    assert!((y[0] - direct).abs() < 1e-5);

    let (mut dx, mut dw) = (vec![0.0; n * i], vec![0.0; o * i]);
    matmul_backward(Some(&mut dx), &mut dw, &r, &x, &w, n, i, o);
    let wc = w.clone();
    check_grad("matmul dx", &mut x, &dx, 64, 2, |x| f(x, &wc));
    let xc = x.clone();
    check_grad("matmul dw", &mut w, &dw, 64, 3, |w| f(&xc, w));
}

#[test]
fn embedding_gradients_accumulate_repeated_ids() {
    let (v, d) = (6, 4);
    let ids = [1u32, 4, 1, 0, 4, 4];
    let mut g = rng(4);
    let (mut table, r) = (randn(&mut g, v * d, 1.0), randn(&mut g, ids.len() * d, 1.0));
    let mut dtable = vec![0.0; v * d];
    embedding_backward(&mut dtable, &r, &ids, d);
    check_grad("embedding dtable", &mut table, &dtable, 64, 5, |t| {
        let mut y = vec![0.0; ids.len() * d];
        embedding_forward(&mut y, &ids, t, d);
        weighted_sum(&y, &r)
    });
    // Row 5 is never used, so its gradient is exactly zero.
    assert!(dtable[5 * d..].iter().all(|&x| x == 0.0));
}

#[test]
fn rmsnorm_gradients() {
    let (n, d) = (4, 9);
    let mut g = rng(6);
    let (mut x, mut w, r) = (
        randn(&mut g, n * d, 2.0),
        randn(&mut g, d, 1.5),
        randn(&mut g, n * d, 1.0),
    );
    let f = |x: &[f32], w: &[f32]| {
        let (mut y, mut rstd) = (vec![0.0; n * d], vec![0.0; n]);
        rmsnorm_forward(&mut y, &mut rstd, x, w, 1e-5);
        weighted_sum(&y, &r)
    };
    let (mut y, mut rstd) = (vec![0.0; n * d], vec![0.0; n]);
    rmsnorm_forward(&mut y, &mut rstd, &x, &w, 1e-5);
    let ms: f32 = x[..d].iter().map(|v| v * v).sum::<f32>() / d as f32;
    assert!((rstd[0] - 1.0 / (ms + 1e-5).sqrt()).abs() < 1e-5);

    let (mut dx, mut dw) = (vec![0.0; n * d], vec![0.0; d]);
    rmsnorm_backward(&mut dx, &mut dw, &r, &x, &w, &rstd);
    let wc = w.clone();
    check_grad("rmsnorm dx", &mut x, &dx, 64, 7, |x| f(x, &wc));
    let xc = x.clone();
    check_grad("rmsnorm dw", &mut w, &dw, 64, 8, |w| f(&xc, w));
}

#[test]
fn rope_gradients_and_rotation() {
    let mut cfg = LlamaConfig::preset("tiny").unwrap();
    cfg.head_dim = 8;
    let (heads, hd) = (3, 8);
    let positions = [0u32, 1, 5, 17];
    let tables = RopeTables::new(&cfg.rope(), &positions);
    let mut g = rng(9);
    let (mut x, r) = (
        randn(&mut g, 4 * heads * hd, 1.0),
        randn(&mut g, 4 * heads * hd, 1.0),
    );
    let mut y = x.clone();
    rope_forward(&mut y, &tables, heads);
    // Position 0 is the identity; a rotation keeps every pair's norm.
    assert_eq!(&y[..heads * hd], &x[..heads * hd]);
    let (a, b, ya, yb) = (
        x[2 * heads * hd + 1],
        x[2 * heads * hd + 5],
        y[2 * heads * hd + 1],
        y[2 * heads * hd + 5],
    );
    assert!(((a * a + b * b) - (ya * ya + yb * yb)).abs() < 1e-5);
    // Position 5, pair 1 rotates by 5·θ^(-2/8) with θ = 10000: angle = 5 · 0.1 = 0.5.
    let (c, s) = (0.5f32.cos(), 0.5f32.sin());
    assert!((ya - (a * c - b * s)).abs() < 1e-5 && (yb - (b * c + a * s)).abs() < 1e-5);

    let mut dx = r.clone();
    rope_backward(&mut dx, &tables, heads);
    check_grad("rope dx", &mut x, &dx, 96, 10, |x| {
        let mut y = x.to_vec();
        rope_forward(&mut y, &tables, heads);
        weighted_sum(&y, &r)
    });
}

#[test]
fn llama3_rope_scaling_matches_the_transformers_formula() {
    // llama-1b: θ = 500000, hd = 64, factor 32, low 1, high 4, original context 8192.
    // The formula of transformers' _compute_llama3_parameters, worked in f64:
    //   inv_freq[0] = 1 (wavelength 2π, short: unscaled)
    //   inv_freq[20] = 500000^(-40/64) = 2.7424818e-4 → wavelength 22911 > 8192: divided by 32
    //   inv_freq[15] = 500000^(-30/64) = 2.1311195e-3 → wavelength 2948 is between 2048 and 8192:
    //     smooth = (8192/2948.3 − 1)/3 = 0.592849; f·((1 − smooth)/32 + smooth) = 1.2905479e-3
    let cfg = LlamaConfig::preset("llama-1b").unwrap();
    let inv = prefer::ops::cpu::rope::rope_inv_freq(&cfg.rope());
    assert_eq!(inv.len(), 32);
    assert!((inv[0] - 1.0).abs() < 1e-7);
    let rel = |a: f32, b: f32| ((a - b) / b).abs();
    assert!(rel(inv[20], 2.742_482e-4 / 32.0) < 1e-5, "{}", inv[20]);
    assert!(rel(inv[15], 1.290_548e-3) < 1e-4, "{}", inv[15]);
}

fn attention_case(heads: usize, kv_heads: usize, seed: u64) {
    // Two sequences of 6: the first left-padded by 2 (its first two queries see no key), the
    // second right-padded by 1.
    let s = AttentionShape {
        batch: 2,
        seq: 6,
        heads,
        kv_heads,
        head_dim: 4,
    };
    let mask = [
        false, false, true, true, true, true, true, true, true, true, true, false,
    ];
    let (nq, nkv) = (12 * heads * 4, 12 * kv_heads * 4);
    let mut g = rng(seed);
    let (mut q, mut k, mut v) = (
        randn(&mut g, nq, 1.5),
        randn(&mut g, nkv, 1.5),
        randn(&mut g, nkv, 1.0),
    );
    let r = randn(&mut g, nq, 1.0);
    let run = |q: &[f32], k: &[f32], v: &[f32]| {
        let (mut out, mut lse) = (vec![0.0; nq], vec![0.0; 2 * heads * 6]);
        attention_forward(&mut out, &mut lse, q, k, v, &mask, s);
        (out, lse)
    };
    let (out, lse) = run(&q, &k, &v);
    // Query 2 of sequence 0 sees only key 2: its output is v at key 2 exactly.
    for h in 0..heads {
        let kvh = h / (heads / kv_heads);
        for e in 0..4 {
            assert!((out[(2 * heads + h) * 4 + e] - v[(2 * kv_heads + kvh) * 4 + e]).abs() < 1e-6);
        }
        // Queries 0 and 1 see nothing: zero output, lse = −∞.
        assert_eq!(lse[h * 6], f32::NEG_INFINITY);
        assert!(out[h * 4..h * 4 + 4].iter().all(|&x| x == 0.0));
    }
    let (mut dq, mut dk, mut dv) = (vec![0.0; nq], vec![0.0; nkv], vec![0.0; nkv]);
    attention_backward(
        &mut dq, &mut dk, &mut dv, &r, &q, &k, &v, &out, &lse, &mask, s,
    );
    let (qc, kc, vc) = (q.clone(), k.clone(), v.clone());
    check_grad("attention dq", &mut q, &dq, 96, seed + 1, |q| {
        weighted_sum(&run(q, &kc, &vc).0, &r)
    });
    check_grad("attention dk", &mut k, &dk, 96, seed + 2, |k| {
        weighted_sum(&run(&qc, k, &vc).0, &r)
    });
    check_grad("attention dv", &mut v, &dv, 96, seed + 3, |v| {
        weighted_sum(&run(&qc, &kc, v).0, &r)
    });
    // A padded key receives no gradient.
    let pad_key = 11 * kv_heads * 4;
    assert!(dk[pad_key..pad_key + kv_heads * 4]
        .iter()
        .all(|&x| x == 0.0));
}

#[test]
fn attention_gradients_multi_head() {
    attention_case(2, 2, 20);
}

#[test]
fn attention_gradients_gqa_4() {
    attention_case(4, 1, 30);
}

#[test]
fn attention_gradients_gqa_2() {
    attention_case(4, 2, 40);
}

#[test]
fn swiglu_gradients() {
    let n = 23;
    let mut g = rng(50);
    let (mut gate, mut up, r) = (
        randn(&mut g, n, 3.0),
        randn(&mut g, n, 2.0),
        randn(&mut g, n, 1.0),
    );
    let f = |gate: &[f32], up: &[f32]| {
        let mut y = vec![0.0; n];
        swiglu_forward(&mut y, gate, up);
        weighted_sum(&y, &r)
    };
    // silu(1)·2 = 2/(1 + e^−1) = 1.4621172
    let mut one = [0.0];
    swiglu_forward(&mut one, &[1.0], &[2.0]);
    assert!((one[0] - 1.4621172).abs() < 1e-6);
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    swiglu_backward(&mut dg, &mut du, &r, &gate, &up);
    let uc = up.clone();
    check_grad("swiglu dgate", &mut gate, &dg, 64, 51, |g| f(g, &uc));
    let gc = gate.clone();
    check_grad("swiglu dup", &mut up, &du, 64, 52, |u| f(&gc, u));
}

#[test]
fn logprob_gradients_and_values() {
    // 1: the training loss; 1/0.7: a policy's log-probs at sampling temperature 0.7.
    for scale in [1.0, 1.0 / 0.7] {
        logprob_at_scale(scale);
    }
}

fn logprob_at_scale(scale: f32) {
    // 70 tokens crosses the 64-token chunk boundary; V = 37 is odd.
    let (n, d, v) = (70, 6, 37);
    let mut g = rng(60);
    let (mut h, mut w) = (randn(&mut g, n * d, 1.0), randn(&mut g, v * d, 1.0));
    let targets: Vec<u32> = (0..n as u32).map(|t| (t * 7) % v as u32).collect();
    let (r1, r2) = (randn(&mut g, n, 1.0), randn(&mut g, n, 1.0));
    let run = |h: &[f32], w: &[f32]| {
        let (mut lp, mut ent, mut lse) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        logprob_forward(&mut lp, &mut ent, &mut lse, h, w, &targets, d, scale);
        (lp, ent, lse)
    };
    let (lp, ent, lse) = run(&h, &w);
    // Against the unfused definition for token 65 (in the second chunk).
    let t = 65;
    let z: Vec<f64> = (0..v)
        .map(|j| {
            (0..d)
                .map(|k| h[t * d + k] as f64 * w[j * d + k] as f64)
                .sum::<f64>()
                * scale as f64
        })
        .collect();
    let m = z.iter().cloned().fold(f64::MIN, f64::max);
    let l = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    let entropy: f64 = -z.iter().map(|x| (x - l).exp() * (x - l)).sum::<f64>();
    assert!((lp[t] as f64 - (z[targets[t] as usize] - l)).abs() < 1e-5);
    assert!((ent[t] as f64 - entropy).abs() < 1e-5);

    let loss = |h: &[f32], w: &[f32]| {
        let (lp, ent, _) = run(h, w);
        weighted_sum(&lp, &r1) + weighted_sum(&ent, &r2)
    };
    let (mut dh, mut dw) = (vec![0.0; n * d], vec![0.0; v * d]);
    logprob_backward(
        &mut dh,
        &mut dw,
        &r1,
        Some(&r2),
        &h,
        &w,
        &targets,
        &lse,
        &ent,
        d,
        scale,
    );
    let wc = w.clone();
    check_grad(
        &format!("logprob dh (scale {scale})"),
        &mut h,
        &dh,
        96,
        61,
        |h| loss(h, &wc),
    );
    let hc = h.clone();
    check_grad(
        &format!("logprob dw (scale {scale})"),
        &mut w,
        &dw,
        96,
        62,
        |w| loss(&hc, w),
    );
}

#[test]
fn scalar_head_gradients() {
    let (n, d) = (5, 8);
    let mut g = rng(70);
    let (mut h, mut w, r) = (
        randn(&mut g, n * d, 1.0),
        randn(&mut g, d, 1.0),
        randn(&mut g, n, 1.0),
    );
    let f = |h: &[f32], w: &[f32]| {
        let mut y = vec![0.0; n];
        scalar_head_forward(&mut y, h, w);
        weighted_sum(&y, &r)
    };
    let (mut dh, mut dw) = (vec![0.0; n * d], vec![0.0; d]);
    scalar_head_backward(&mut dh, &mut dw, &r, &h, &w);
    let wc = w.clone();
    check_grad("scalar_head dh", &mut h, &dh, 64, 71, |h| f(h, &wc));
    let hc = h.clone();
    check_grad("scalar_head dw", &mut w, &dw, 64, 72, |w| f(&hc, w));
}
