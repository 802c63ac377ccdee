//! Online RL from a reward: PPO with every switch of "Unpacking DPO and PPO", GRPO and RLOO, on
//! the rollout engine.

pub mod advantages;
pub mod options;
pub mod reward_model;
pub mod rewards;
pub mod trainer;

pub use options::PpoArgs;
pub use trainer::{run_ppo, PpoSummary};
