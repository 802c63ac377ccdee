//! `prefer check`: every CUDA op against the CPU oracle, as a table; non-zero exit on a failure.

use super::Device;
use crate::check::{print_summary, run_checks};
use crate::ops::cuda::CudaEngine;
use anyhow::{bail, Result};

pub fn run_check(op: Option<&str>, device: Device) -> Result<()> {
    if device.prepare()? == Device::Cpu {
        bail!(
            "check compares the CUDA engine with the CPU oracle: use --device cuda or --device emu"
        );
    }
    let eng = CudaEngine::new()?;
    let outcomes = run_checks(&eng, op);
    if outcomes.is_empty() {
        bail!("no op matches {:?}", op.unwrap_or(""));
    }
    let failed = print_summary(&outcomes);
    if !failed.is_empty() {
        bail!(
            "some CUDA ops disagree with the CPU oracle or did not run (checks {})",
            failed.join(", ")
        );
    }
    Ok(())
}
