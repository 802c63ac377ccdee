//! The CPU op set: plain f32, the oracle every CUDA kernel is checked against.
//!
//! Each op has the name of its kernel in `kernels/` and its launcher in `src/ops/cuda/`. Buffers
//! are row-major slices with their shapes in comments; `N` is batch × sequence tokens.
//! Backward ops *accumulate* (`+=`) into their gradient outputs, as llm.c does: residual branches
//! and tied weights then need no special case, and callers zero a gradient buffer once.
//! Only the matmuls use a tuned crate (matrixmultiply); every other loop is written to be
//! obviously right.

pub mod accumulate;
pub mod adamw;
pub mod attention;
pub mod backend;
pub mod copy_rows;
pub mod decode_attention;
pub mod dpo_loss;
pub mod embedding;
pub mod logprob;
pub mod matmul;
pub mod ppo_loss;
pub mod residual;
pub mod reward_loss;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod scalar_head;
pub mod swiglu;

pub use accumulate::accumulate_f32;
pub use attention::{attention_backward, attention_forward, AttentionShape};
pub use backend::{Cpu, CpuInputs};
pub use copy_rows::copy_rows;
pub use decode_attention::{decode_attention, DecodeShape};
pub use embedding::{embedding_backward, embedding_forward};
pub use logprob::{logprob_backward, logprob_forward};
pub use matmul::{matmul_backward, matmul_forward};
pub use residual::residual_forward;
pub use rmsnorm::{rmsnorm_backward, rmsnorm_forward};
pub use rope::{rope_backward, rope_forward, Llama3RopeScaling, RopeSpec, RopeTables};
pub use sample::{sample, SamplingParams};
pub use scalar_head::{scalar_head_backward, scalar_head_forward};
pub use swiglu::{swiglu_backward, swiglu_forward};
