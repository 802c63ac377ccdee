//! Linear layers as nn.Linear stores them: y = x · Wᵀ with W [out, in].

/// out[N,O] = x[N,I] · w[O,I]ᵀ
pub fn matmul_forward(out: &mut [f32], x: &[f32], w: &[f32], n: usize, i: usize, o: usize) {
    assert_eq!((out.len(), x.len(), w.len()), (n * o, n * i, o * i));
    let (i_, o_) = (i as isize, o as isize);
    // SAFETY: the asserted lengths cover every element the strides reach.
    unsafe {
        if n >= o {
            // x [N,I] times wᵀ [I,O] (element (k, c) of wᵀ lives at w[c*I + k]).
            matrixmultiply::sgemm(
                n,
                i,
                o,
                1.0,
                x.as_ptr(),
                i_,
                1,
                w.as_ptr(),
                1,
                i_,
                0.0,
                out.as_mut_ptr(),
                o_,
                1,
            );
        } else {
            // Few rows (an LM head's chunk of tokens over the vocabulary): outᵀ [O,N] = w · xᵀ,
            // the same dot products with the long side first, which matrixmultiply splits over
            // threads (2× on two cores at N=122, O=128256).
            matrixmultiply::sgemm(
                o,
                i,
                n,
                1.0,
                w.as_ptr(),
                i_,
                1,
                x.as_ptr(),
                1,
                i_,
                0.0,
                out.as_mut_ptr(),
                1,
                o_,
            );
        }
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
        let (i_, o_) = (i as isize, o as isize);
        // SAFETY: lengths asserted above.
        unsafe {
            if n >= i {
                matrixmultiply::sgemm(
                    n,
                    o,
                    i,
                    1.0,
                    dout.as_ptr(),
                    o_,
                    1,
                    w.as_ptr(),
                    i_,
                    1,
                    1.0,
                    dx.as_mut_ptr(),
                    i_,
                    1,
                );
            } else {
                // dxᵀ [I,N] += wᵀ · doutᵀ: the long side first, as in the forward.
                matrixmultiply::sgemm(
                    i,
                    o,
                    n,
                    1.0,
                    w.as_ptr(),
                    1,
                    i_,
                    dout.as_ptr(),
                    1,
                    o_,
                    1.0,
                    dx.as_mut_ptr(),
                    1,
                    i_,
                );
            }
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
