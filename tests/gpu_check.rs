//! The CUDA ops against the CPU oracle: the same checks as `prefer check`. Skips, saying why,
//! where there is no GPU.

use prefer::check::{print_summary, run_checks, CHECKS};
use prefer::ops::cuda::CudaEngine;

#[test]
fn every_cuda_op_matches_the_cpu_oracle() {
    let eng = match CudaEngine::new() {
        Ok(e) => e,
        Err(why) => {
            // Written to the process's stderr directly, past libtest's capture, so the skip and its
            // reason show in every run, not only in failing ones.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED gpu_check: no usable GPU: {why:#}"
            );
            return;
        }
    };
    let outcomes = run_checks(&eng, None).expect("the checks run");
    assert_eq!(outcomes.len(), CHECKS.len());
    assert!(outcomes.iter().all(|o| !o.rows.is_empty()));
    let failed = print_summary(&outcomes);
    assert!(
        failed.is_empty(),
        "some CUDA ops disagree with the CPU oracle (checks {failed:?})"
    );
}
