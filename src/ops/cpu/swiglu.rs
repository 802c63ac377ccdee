//! The SwiGLU gate of the Llama MLP: a = silu(gate) · up.

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// out[N,F] = silu(gate) · up, silu(g) = g·σ(g)
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert_eq!((out.len(), gate.len()), (up.len(), up.len()));
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g * sigmoid(g) * u;
    }
}

/// dgate += dout · up · σ(g)(1 + g(1 − σ(g))),  dup += dout · silu(g)
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    let n = dout.len();
    assert_eq!((dgate.len(), dup.len(), gate.len(), up.len()), (n, n, n, n));
    for j in 0..n {
        let s = sigmoid(gate[j]);
        dgate[j] += dout[j] * up[j] * s * (1.0 + gate[j] * (1.0 - s));
        dup[j] += dout[j] * gate[j] * s;
    }
}
