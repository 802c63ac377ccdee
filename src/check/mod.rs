//! `prefer check` and `prefer bench kernels`: every CUDA op against the CPU oracle (and the whole
//! model, generation and the fused losses), and the kernels timed at the targets' shapes. They
//! sit above the op set (they drive the model, the trainers' losses and the rollout engine), so
//! ops/ stays free of imports from above it.

pub mod bench;
mod decode;
pub mod harness;
mod losses;

pub use harness::{print_table, run_checks};
