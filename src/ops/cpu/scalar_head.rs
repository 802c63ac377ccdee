//! The scalar head of reward and value models (HF `score.weight` [1, D], no bias).

/// value[N] = h[N,D] · w[D]
pub fn scalar_head_forward(value: &mut [f32], h: &[f32], w: &[f32]) {
    let d = w.len();
    assert_eq!(h.len(), value.len() * d);
    for (v, hr) in value.iter_mut().zip(h.chunks_exact(d)) {
        *v = hr.iter().zip(w).map(|(a, b)| a * b).sum();
    }
}

/// dh[N,D] += dvalue ⊗ w,  dw[D] += Σ_n dvalue[n] · h[n,:]
pub fn scalar_head_backward(dh: &mut [f32], dw: &mut [f32], dvalue: &[f32], h: &[f32], w: &[f32]) {
    let d = w.len();
    assert_eq!((dh.len(), h.len()), (dvalue.len() * d, dvalue.len() * d));
    for ((dhr, hr), &dv) in dh.chunks_exact_mut(d).zip(h.chunks_exact(d)).zip(dvalue) {
        for j in 0..d {
            dhr[j] += dv * w[j];
            dw[j] += dv * hr[j];
        }
    }
}
