//! A gradient shard's accumulation (`--shard full`): each micro-batch's reduced piece is added to
//! the rank's shard. The oracle of kernels/accumulate.cu.

/// dst[n] += src[n]
pub fn accumulate_f32(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}
