//! Online RL from a reward: PPO with every switch of "Unpacking DPO and PPO", GRPO and RLOO, on
//! the rollout engine.

pub mod advantages;
pub mod checkpoint;
pub mod iteration_log;
pub mod options;
pub mod ppo_epochs;
pub mod reward_model;
pub mod rewards;
pub mod rollout_batch;
pub mod rollouts;
pub mod scoring;
pub mod setup;
pub mod task_eval;
pub mod trainer;

pub use options::PpoArgs;
pub use trainer::{run_ppo, run_ppo_in, PpoSummary};
