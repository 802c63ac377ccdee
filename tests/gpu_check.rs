//! The CUDA ops against the CPU oracle: the same checks as `prefer check`. Skips, saying why,
//! where there is no GPU.

use prefer::check::{print_table, run_checks};
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
    let rows = run_checks(&eng, None).expect("the checks run");
    assert!(!rows.is_empty());
    assert!(
        print_table(&rows),
        "some CUDA ops disagree with the CPU oracle"
    );
}
