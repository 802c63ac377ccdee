//! `prefer check` for the training attention (flash kernels at head dims 16 to 128, the fp32
//! reference kernels elsewhere), forward and backward, against the CPU oracle.

use super::harness::{compare, down_bf16, timed, to_bf16, CheckRow, Lcg, TOL_BF16, TOL_F32};
use crate::ops::cpu::{self, AttentionShape};
use crate::ops::cuda::{self, CudaEngine};
use anyhow::Result;
use half::bf16;

/// (batch, seq, heads, kv_heads, head_dim): GQA 1, 3, 4 and 8, every tensor-core head dim, odd
/// lengths, tiles that end mid-group; hd 24 runs the fp32 reference kernels.
pub(super) fn attention(eng: &CudaEngine) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for (b, t, h, kvh, hd) in [
        (2, 37, 4, 4, 64),
        (3, 130, 8, 2, 64),
        (2, 100, 16, 2, 128),
        (1, 64, 8, 8, 128),
        (2, 70, 6, 2, 32),
        (2, 21, 4, 2, 16),
        (2, 45, 4, 2, 24),
    ] {
        rows.extend(check_attention(
            eng,
            AttentionShape {
                batch: b,
                seq: t,
                heads: h,
                kv_heads: kvh,
                head_dim: hd,
            },
        )?);
    }
    Ok(rows)
}

fn check_attention(eng: &CudaEngine, s: AttentionShape) -> Result<Vec<CheckRow>> {
    let (n, qd, kvd) = (
        s.batch * s.seq,
        s.heads * s.head_dim,
        s.kv_heads * s.head_dim,
    );
    let mut g = Lcg(13 + s.seq as u64 * 31 + s.heads as u64);
    let (q, k, v, dout) = (
        g.bf16s(n * qd, 1.5),
        g.bf16s(n * kvd, 1.5),
        g.bf16s(n * kvd, 1.0),
        g.bf16s(n * qd, 1.0),
    );
    // Row 0 left-padded by 3, row 1 (if any) right-padded by 5, the rest full.
    let mask: Vec<bool> = (0..n)
        .map(|i| {
            let (b, t) = (i / s.seq, i % s.seq);
            !(b == 0 && t < 3 || b == 1 && t >= s.seq - 5)
        })
        .collect();
    let (mut out, mut lse) = (vec![0.0; n * qd], vec![0.0; n * s.heads]);
    cpu::attention_forward(&mut out, &mut lse, &q, &k, &v, &mask, s);
    // The backward reads the forward's output; feed both sides the bf16-rounded one.
    let out = out
        .iter()
        .map(|&x| bf16::from_f32(x).to_f32())
        .collect::<Vec<_>>();
    let (mut dq, mut dk, mut dv) = (vec![0.0; n * qd], vec![0.0; n * kvd], vec![0.0; n * kvd]);
    cpu::attention_backward(
        &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &mask, s,
    );

    let up = |x: &[f32]| eng.upload(&to_bf16(x));
    let (q_d, k_d, v_d, dout_d) = (up(&q)?, up(&k)?, up(&v)?, up(&dout)?);
    let mask_d = eng.upload(&mask.iter().map(|&m| m as u8).collect::<Vec<u8>>())?;
    let (mut out_d, mut lse_d) = (eng.zeros::<bf16>(n * qd)?, eng.zeros::<f32>(n * s.heads)?);
    let kernel = match cuda::attention::AttentionKernel::for_shape(&s) {
        cuda::attention::AttentionKernel::Flash => "flash",
        cuda::attention::AttentionKernel::Reference => "reference",
    };
    let shape = format!(
        "B={} T={} H={} Hkv={} hd={} {kernel}",
        s.batch, s.seq, s.heads, s.kv_heads, s.head_dim
    );
    let ms_f = timed(eng, "attention_forward", || {
        cuda::attention::attention_forward(
            eng, &mut out_d, &mut lse_d, &q_d, &k_d, &v_d, &mask_d, s,
        )
    })?;
    let gpu_out = down_bf16(eng, &out_d)?;
    let gpu_lse = eng.download(&lse_d)?;
    let out_ref_d = up(&out)?;
    let (mut dq_d, mut dk_d, mut dv_d) = (
        eng.zeros::<bf16>(n * qd)?,
        eng.zeros::<bf16>(n * kvd)?,
        eng.zeros::<bf16>(n * kvd)?,
    );
    let mut rowdot = eng.zeros::<f32>(n * s.heads)?;
    let lse_ref_d = eng.upload(&lse)?;
    let ms_b = timed(eng, "attention_backward", || {
        cuda::attention::attention_backward(
            eng,
            &mut dq_d,
            &mut dk_d,
            &mut dv_d,
            &mut rowdot,
            &dout_d,
            &q_d,
            &k_d,
            &v_d,
            &out_ref_d,
            &lse_ref_d,
            &mask_d,
            s,
        )
    })?;
    // lse is −∞ for queries that see no key; compare the finite ones and require the same pattern.
    let lse_same_pattern = gpu_lse
        .iter()
        .zip(&lse)
        .all(|(a, b)| a.is_finite() == b.is_finite());
    let finite = |v: &[f32]| {
        v.iter()
            .map(|x| if x.is_finite() { *x } else { 0.0 })
            .collect::<Vec<_>>()
    };
    let mut lse_row = compare(
        "attention_forward lse",
        &shape,
        &finite(&gpu_lse),
        &finite(&lse),
        TOL_F32 * 10.0,
        ms_f,
    );
    lse_row.pass &= lse_same_pattern;
    Ok(vec![
        compare("attention_forward", &shape, &gpu_out, &out, TOL_BF16, ms_f),
        lse_row,
        compare(
            "attention_backward dq",
            &shape,
            &down_bf16(eng, &dq_d)?,
            &dq,
            TOL_BF16,
            ms_b,
        ),
        compare(
            "attention_backward dk",
            &shape,
            &down_bf16(eng, &dk_d)?,
            &dk,
            TOL_BF16,
            ms_b,
        ),
        compare(
            "attention_backward dv",
            &shape,
            &down_bf16(eng, &dv_d)?,
            &dv,
            TOL_BF16,
            ms_b,
        ),
    ])
}
