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
    let outcomes = run_checks(&eng, None);
    assert_eq!(outcomes.len(), CHECKS.len());
    let failed = print_summary(&outcomes);
    assert!(
        outcomes
            .iter()
            .all(|o| o.error.is_some() || !o.rows.is_empty()),
        "a check ran without a row"
    );
    assert!(
        failed.is_empty(),
        "some CUDA ops disagree with the CPU oracle (checks {failed:?})"
    );
}

/// NCCL on the GPU: found without a path (PREFER_NCCL, the loader, a wheel; gpu_session.sh points
/// PREFER_NCCL at PyTorch's copy), a communicator of one rank, and a sum that leaves the buffer
/// as it was. Skips, saying why, without a GPU or without NCCL.
#[test]
fn nccl_loads_and_a_one_rank_sum_keeps_the_buffer() {
    use std::io::Write;
    let eng = match CudaEngine::new() {
        Ok(e) => e,
        Err(why) => {
            let _ = writeln!(std::io::stderr(), "SKIPPED nccl: no usable GPU: {why:#}");
            return;
        }
    };
    if let Err(why) = prefer::dist::nccl_lib::find_nccl() {
        let _ = writeln!(std::io::stderr(), "SKIPPED nccl: {why:#}");
        return;
    }
    let group = prefer::dist::group::Group::single();
    let mut comm = prefer::dist::nccl::DeviceComm::new(&group, &eng).expect("an NCCL communicator");
    let host: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 7.0).collect();
    let mut buf = eng.upload(&host).unwrap();
    comm.all_reduce_sum(&mut buf).unwrap();
    assert_eq!(eng.download(&buf).unwrap(), host);
    let _ = writeln!(
        std::io::stderr(),
        "nccl: a one-rank all-reduce on the GPU kept the buffer"
    );
}
