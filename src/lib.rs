//! prefer: preference learning (DPO, reward models, PPO, GRPO, RLOO) for Llama-family models,
//! with a CPU oracle in plain f32 and hand-written CUDA kernels.

pub mod cmd;
pub mod data;
pub mod model;
pub mod ops;
