//! Token embedding lookup. Ids are checked against the vocabulary where they enter the program,
//! so an out-of-range id here is a bug, not bad input.

/// out[N,D] = table[ids[n], :]
pub fn embedding_forward(out: &mut [f32], ids: &[u32], table: &[f32], d: usize) {
    assert_eq!(out.len(), ids.len() * d);
    for (row, &id) in out.chunks_exact_mut(d).zip(ids) {
        let id = id as usize;
        row.copy_from_slice(&table[id * d..(id + 1) * d]);
    }
}

/// dtable[V,D] += Σ_n onehot(ids[n]) ⊗ dout[n,:], summed in token order (deterministic).
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], d: usize) {
    assert_eq!(dout.len(), ids.len() * d);
    for (row, &id) in dout.chunks_exact(d).zip(ids) {
        let id = id as usize;
        for (g, &x) in dtable[id * d..(id + 1) * d].iter_mut().zip(row) {
            *g += x;
        }
    }
}
