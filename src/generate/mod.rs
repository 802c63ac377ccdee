//! Generation: the rollout engine (continuous batching over a paged KV cache) and what it needs
//! on the host. The model side (prefill, decode) is src/model/decode.rs; the ops are in
//! src/ops/{cpu,cuda}/ under the names copy_rows, decode_attention and sample.

pub mod blocks;
pub mod engine;
pub mod kv_budget;
pub mod philox;
pub mod stopping;

pub use engine::{Engine, EngineOptions, EngineStats, FinishReason, Rollout};
pub use kv_budget::{KvBudget, KvRequest, BLOCK_SIZE};
