//! The paper's evaluations: the scorers, free of any model, so each can be checked on text
//! against other implementations (`prefer eval --responses`).
//! - `gsm8k`: few-shot chain-of-thought prompts, lm-evaluation-harness's answer extraction.
//! - `ifeval`: IFEval's 25 verifiable instructions, strict and loose (`ifeval_text`: the text
//!   measures they count with).
//! - `rewardbench`: RewardBench's section and overall scores from per-subset accuracies.
//! - `winrate`: win rate against reference answers by a reward-model judge, length-controlled.

pub mod gsm8k;
pub mod ifeval;
pub mod ifeval_text;
pub mod rewardbench;
pub mod winrate;
