//! Linear layers as nn.Linear stores them: y = x · Wᵀ with W [out, in].

/// out[N,O] = x[N,I] · w[O,I]ᵀ
pub fn matmul_forward(out: &mut [f32], x: &[f32], w: &[f32], n: usize, i: usize, o: usize) {
    assert_eq!((out.len(), x.len(), w.len()), (n * o, n * i, o * i));
    // SAFETY: the asserted lengths cover every element the strides reach.
    unsafe {
        matrixmultiply::sgemm(
            n,
            i,
            o,
            1.0,
            x.as_ptr(),
            i as isize,
            1, // x [N,I]
            w.as_ptr(),
            1,
            i as isize, // wᵀ [I,O]: element (k, c) lives at w[c*I + k]
            0.0,
            out.as_mut_ptr(),
            o as isize,
            1,
        );
    }
}

/// dx[N,I] += dout[N,O] · w[O,I];  dw[O,I] += dout[N,O]ᵀ · x[N,I]
pub fn matmul_backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    i: usize,
    o: usize,
) {
    assert_eq!(
        (dw.len(), dout.len(), x.len(), w.len()),
        (o * i, n * o, n * i, o * i)
    );
    if let Some(dx) = dx {
        assert_eq!(dx.len(), n * i);
        // SAFETY: lengths asserted above.
        unsafe {
            matrixmultiply::sgemm(
                n,
                o,
                i,
                1.0,
                dout.as_ptr(),
                o as isize,
                1,
                w.as_ptr(),
                i as isize,
                1,
                1.0,
                dx.as_mut_ptr(),
                i as isize,
                1,
            );
        }
    }
    // SAFETY: lengths asserted above; doutᵀ is dout read with swapped strides.
    unsafe {
        matrixmultiply::sgemm(
            o,
            n,
            i,
            1.0,
            dout.as_ptr(),
            1,
            o as isize,
            x.as_ptr(),
            i as isize,
            1,
            1.0,
            dw.as_mut_ptr(),
            i as isize,
            1,
        );
    }
}
