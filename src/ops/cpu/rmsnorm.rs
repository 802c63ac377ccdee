//! RMSNorm as Llama uses it: y = x / sqrt(mean(x²) + eps) * w.

/// out[N,D] = x · rstd · w, with rstd[N] = 1 / sqrt(mean(x²) + eps) kept for the backward.
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    assert_eq!((out.len(), x.len()), (rstd.len() * d, rstd.len() * d));
    for ((o, r), xr) in out
        .chunks_exact_mut(d)
        .zip(rstd.iter_mut())
        .zip(x.chunks_exact(d))
    {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        *r = 1.0 / (ms + eps).sqrt();
        for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
            *o = xv * *r * wv;
        }
    }
}

/// With x̂ = x·rstd and g = dout·w:
///   dx[N,D] += rstd · (g − x̂ · mean(g · x̂)),   dw[D] += Σ_n dout · x̂
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
) {
    let d = w.len();
    assert_eq!(
        (dx.len(), dout.len(), x.len()),
        (rstd.len() * d, rstd.len() * d, rstd.len() * d)
    );
    for (((dxr, dor), xr), &r) in dx
        .chunks_exact_mut(d)
        .zip(dout.chunks_exact(d))
        .zip(x.chunks_exact(d))
        .zip(rstd)
    {
        let mut dot = 0.0f32; // Σ g·x̂
        for j in 0..d {
            dot += dor[j] * w[j] * xr[j] * r;
        }
        let mean = dot / d as f32;
        for j in 0..d {
            let xhat = xr[j] * r;
            dxr[j] += r * (dor[j] * w[j] - xhat * mean);
            dw[j] += dor[j] * xhat;
        }
    }
}
