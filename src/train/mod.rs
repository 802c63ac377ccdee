//! Training: the run skeleton every trainer runs in (run.rs: folder, options, cadence, save,
//! resume, signals, plots), the optimiser, schedules, batching, checkpoints, metrics, and the
//! offline trainers (reward model and DPO) as stages in it.

pub mod batching;
pub mod bounds;
pub mod checkpoint;
pub mod dpo;
pub mod eval_rm;
pub mod fingerprint;
pub mod fsdp;
pub mod gpu_step;
pub mod layered_options;
pub mod memory_plan;
pub mod metrics;
pub mod objective;
pub mod offline_stages;
pub mod options;
pub mod pair_batch;
pub mod rm;
pub mod run;
pub mod run_args;
pub mod run_folder;
pub mod schedule;
pub mod starting_model;
pub mod state;
pub mod trainer;

pub use eval_rm::evaluate_reward_model;
pub use layered_options::TrainerArgs;
pub use options::{TrainArgs, TrainerKind};
pub use run_args::RunArgs;
pub use trainer::{run_training, run_training_in, RunSummary};
