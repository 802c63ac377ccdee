//! prefer: preference learning (DPO, reward models, PPO, GRPO, RLOO) for Llama-family models,
//! with a CPU oracle in plain f32 and hand-written CUDA kernels.

// Kernels and their oracles take every buffer and dimension explicitly, as llm.c does; bundling them
// into structs would only hide the shapes the comments document.
#![allow(clippy::too_many_arguments)]

pub mod check;
pub mod cmd;
pub mod data;
pub mod dist;
pub mod emu;
pub mod eval;
pub mod generate;
pub mod huge_pages;
pub mod loss;
pub mod model;
pub mod ops;
pub mod output;
pub mod rl;
pub mod signals;
pub mod train;
