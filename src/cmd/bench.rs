//! `prefer bench`: kernel throughput at the targets' shapes. Whole training steps (`bench train`)
//! come with the CUDA model.

use crate::ops::bench::{print_bench, run_kernel_benches};
use crate::ops::cuda::{probe_gpu, CudaEngine};
use anyhow::{bail, Result};
use std::path::Path;

pub fn run_bench(what: &str, json: Option<&Path>) -> Result<()> {
    match what {
        "kernels" => {
            let eng = CudaEngine::new()?;
            let gpu = probe_gpu()?.name;
            let rows = run_kernel_benches(&eng)?;
            print_bench(&rows, &gpu);
            if let Some(path) = json {
                let doc = serde_json::json!({"gpu": gpu, "rows": rows});
                std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
            }
            Ok(())
        }
        "train" => bail!("bench train needs the CUDA training step, which is not built yet; `prefer bench kernels` times the kernels"),
        other => bail!("unknown bench {other:?}: kernels or train"),
    }
}
