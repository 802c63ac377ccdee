//! `prefer check` and `prefer bench kernels`: every CUDA op against the CPU oracle (and the whole
//! model, generation and the fused losses), and the kernels timed at the targets' shapes. They
//! sit above the op set (they drive the model, the trainers' losses and the rollout engine), so
//! ops/ stays free of imports from above it.
//!
//! Imports run one way: this file (the table of checks) → one file per family of checks →
//! harness.rs (rows, tolerances, inputs, comparison, timing, the printed table). `CHECKS` is the
//! one list: it drives `prefer check --op` (the names it takes and its help), the order of the
//! table, and which checks the failure message names. bench.rs holds `SHAPES`, the one table of
//! shapes `prefer bench kernels` and the criterion bench (benches/cuda_kernels.rs) time.

mod adamw;
mod attention;
pub mod bench;
mod decode;
pub mod harness;
mod layers;
mod losses;
mod matmul;
mod model;

use crate::ops::cuda::CudaEngine;
use anyhow::Result;
pub use harness::{print_table, CheckRow};

/// One check of `prefer check`: a family of rows against one oracle, on several shapes.
pub struct Check {
    /// What `--op` selects it by: a check runs when its name contains `--op`'s value.
    pub name: &'static str,
    /// What it covers, for `--help`.
    pub covers: &'static str,
    /// Its rows of the table. (The model and engine checks start their own CUDA backend, as
    /// the trainers and `prefer generate` do.)
    pub run: fn(&CudaEngine) -> Result<Vec<CheckRow>>,
}

/// Every check, in the order the table prints them.
pub const CHECKS: &[Check] = &[
    Check {
        name: "embedding",
        covers: "token embedding forward, and its backward on padded batches",
        run: layers::embedding,
    },
    Check {
        name: "rmsnorm",
        covers: "RMSNorm forward (output, rstd) and backward (dx, dw)",
        run: layers::rmsnorm,
    },
    Check {
        name: "rope",
        covers: "rotary embedding forward and backward, tiny's rope and llama3's",
        run: layers::rope,
    },
    Check {
        name: "attention",
        covers: "causal GQA attention forward (output, lse) and backward (dq, dk, dv)",
        run: attention::attention,
    },
    Check {
        name: "swiglu",
        covers: "SwiGLU forward and backward",
        run: layers::swiglu,
    },
    Check {
        name: "scalar_head",
        covers: "the value and reward head, forward and backward",
        run: layers::scalar_head,
    },
    Check {
        name: "matmul",
        covers: "cuBLASLt matmul forward and backward (dx, dw)",
        run: matmul::matmul,
    },
    Check {
        name: "logprob",
        covers: "the fused LM head: log-probs, entropy and their backward, at T 1 and 0.7",
        run: matmul::logprob,
    },
    Check {
        name: "model",
        covers: "the whole model: log-probs, values, every gradient, --recompute",
        run: model::model,
    },
    Check {
        name: "copy_rows",
        covers: "KV-cache row copies (a prompt's partial block to each rollout)",
        run: decode::copy_rows,
    },
    Check {
        name: "decode_attention",
        covers: "attention of one new token over the paged KV cache",
        run: decode::decode_attention,
    },
    Check {
        name: "sample",
        covers: "seeded sampling: greedy, T 1, and T 0.7 with top-k and top-p",
        run: decode::sample,
    },
    Check {
        name: "generate",
        covers: "the rollout engine against the training forward (greedy, sampled log-probs)",
        run: decode::generate,
    },
    Check {
        name: "dpo_loss",
        covers: "the fused DPO losses against src/loss, on sums and on means",
        run: losses::dpo_loss,
    },
    Check {
        name: "bradley_terry",
        covers: "the reward model's Bradley-Terry loss, with and without margins",
        run: losses::bradley_terry,
    },
    Check {
        name: "ppo_loss",
        covers: "PPO's clipped policy loss (k3 KL, clamp) and clipped value loss",
        run: losses::ppo_loss,
    },
    Check {
        name: "adamw",
        covers: "the gradient norm and two fused AdamW steps with no-decay ranges",
        run: adamw::adamw,
    },
    Check {
        name: "accumulate",
        covers: "a reduced gradient piece added into a rank's shard (--shard full)",
        run: adamw::accumulate,
    },
];

/// The checks `--op` selects: those whose name contains it (every check without one).
pub fn selected(op: Option<&str>) -> impl Iterator<Item = &'static Check> + '_ {
    CHECKS
        .iter()
        .filter(move |c| op.is_none_or(|f| c.name.contains(f)))
}

/// One check's rows, or the error that stopped it before it had any.
pub struct CheckOutcome {
    pub check: &'static Check,
    pub rows: Vec<CheckRow>,
    /// The check could not run to the end (a launch refused, a capture failed): a failure, with
    /// the reason; the checks after it still run.
    pub error: Option<String>,
}

impl CheckOutcome {
    pub fn passed(&self) -> bool {
        // A check that compared nothing proves nothing: no rows is a failure too.
        self.error.is_none() && !self.rows.is_empty() && self.rows.iter().all(|r| r.pass)
    }
}

/// Runs the checks `--op` selects, in the table's order. A check that errors is a failed
/// outcome, not the end of the run: on a GPU session's few minutes, one broken op must not hide
/// what the others do. (An error the CUDA context cannot recover from fails the rest too, each
/// saying so.)
pub fn run_checks(eng: &CudaEngine, op: Option<&str>) -> Vec<CheckOutcome> {
    selected(op)
        .map(|check| match (check.run)(eng) {
            Ok(rows) => CheckOutcome {
                check,
                rows,
                error: None,
            },
            Err(e) => CheckOutcome {
                check,
                rows: Vec::new(),
                error: Some(format!("{e:#}")),
            },
        })
        .collect()
}

/// Prints the rows of every outcome as one table, then each check that errored with its reason;
/// returns the names of the checks that failed (a failing row or an error).
pub fn print_summary(outcomes: &[CheckOutcome]) -> Vec<&'static str> {
    let rows: Vec<CheckRow> = outcomes.iter().flat_map(|o| o.rows.clone()).collect();
    print_table(&rows);
    for o in outcomes {
        if let Some(e) = &o.error {
            println!("check {} did not run to the end: {e}", o.check.name);
        } else if o.rows.is_empty() {
            println!("check {} compared nothing", o.check.name);
        }
    }
    outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.check.name)
        .collect()
}

/// clap's value parser for `--op`: a part of some check's name.
pub fn parse_op(s: &str) -> std::result::Result<String, String> {
    if selected(Some(s)).next().is_some() {
        Ok(s.to_string())
    } else {
        Err(format!(
            "no check's name contains {s:?}; the checks are {}",
            names().join(", ")
        ))
    }
}

fn names() -> Vec<&'static str> {
    CHECKS.iter().map(|c| c.name).collect()
}

/// `--op`'s help (`-h`): the names it takes.
pub fn op_help() -> String {
    format!(
        "Only the checks whose name contains this: {}",
        names().join(", ")
    )
}

/// `--op`'s help (`--help`): each check and what it covers.
pub fn op_long_help() -> String {
    let width = CHECKS.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let lines: Vec<String> = CHECKS
        .iter()
        .map(|c| format!("  {:<width$}  {}", c.name, c.covers))
        .collect();
    format!(
        "Only the checks whose name contains this (--op attention runs attention and \
         decode_attention):\n{}",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_takes_any_part_of_a_check_name_and_refuses_the_rest() {
        let picked = |op: &str| selected(Some(op)).map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(picked("attention"), ["attention", "decode_attention"]);
        assert_eq!(picked("loss"), ["dpo_loss", "ppo_loss"]);
        assert_eq!(picked("adamw"), ["adamw"]);
        assert_eq!(selected(None).count(), CHECKS.len());
        assert_eq!(parse_op("rope").unwrap(), "rope");
        let e = parse_op("conv2d").unwrap_err();
        assert!(e.starts_with("no check's name contains \"conv2d\""), "{e}");
        assert!(e.contains("embedding, rmsnorm, rope, attention"), "{e}");
    }

    #[test]
    fn every_check_has_one_name_and_the_help_lists_them_all() {
        let mut seen = std::collections::HashSet::new();
        for c in CHECKS {
            assert!(seen.insert(c.name), "{} twice", c.name);
            assert!(op_help().contains(c.name) && op_long_help().contains(c.covers));
        }
    }
}
