//! Row copies by index pairs: how K/V rows enter the paged cache (row = token, dst = cache slot)
//! and how a prefill picks the last prompt token of each sequence.

/// dst[pairs[m].1] = src[pairs[m].0] for rows of `width` values; pairs are (src_row, dst_row),
/// flat [M, 2]. A source row may go to several destinations (a prompt's last, partly filled block
/// is written once per rollout).
pub fn copy_rows(dst: &mut [f32], src: &[f32], pairs: &[u32], width: usize) {
    for p in pairs.chunks_exact(2) {
        let (s, d) = (p[0] as usize, p[1] as usize);
        dst[d * width..(d + 1) * width].copy_from_slice(&src[s * width..(s + 1) * width]);
    }
}
