//! Training: the optimiser, schedules, batching, checkpoints, metrics, and the offline trainers
//! (reward model and DPO) over one loop.

pub mod batching;
pub mod bounds;
pub mod checkpoint;
pub mod dpo;
pub mod fingerprint;
pub mod gpu_step;
pub mod memory_plan;
pub mod metrics;
pub mod objective;
pub mod options;
pub mod pair_batch;
pub mod rm;
pub mod run_folder;
pub mod schedule;
pub mod state;
pub mod trainer;

pub use options::{TrainArgs, TrainerKind};
pub use trainer::{evaluate_reward_model, run_training, RunSummary};
