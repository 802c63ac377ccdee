//! Launcher for kernels/dpo_loss.cu. The CPU oracle of the same name is src/ops/cpu/dpo_loss.rs.

use super::CudaEngine;
use crate::loss::DpoConfig;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// dlogp [2P·T] (written) and rows [P, 5] (the pairs' losses, rewards and sequence log-probs, as
/// `DpoPairs::from_rows` reads them), from logp and the response weights w [2P·T] (1 per
/// response token for a sum, 1/n for a mean) and the reference's sequence log-probs [2P] (for
/// the losses that read them: `DpoLoss::uses_reference`). Nothing comes back to the host.
#[allow(clippy::too_many_arguments)]
pub fn dpo_loss(
    eng: &CudaEngine,
    dlogp: &mut CudaSlice<f32>,
    rows: &mut CudaSlice<f32>,
    logp: &CudaSlice<f32>,
    weights: &CudaSlice<f32>,
    reference: Option<&CudaSlice<f32>>,
    pairs: usize,
    t: usize,
    cfg: &DpoConfig,
    grad_scale: f32,
) -> Result<()> {
    let n = 2 * pairs * t;
    ensure!(
        pairs > 0
            && dlogp.len() == n
            && logp.len() == n
            && weights.len() == n
            && rows.len() == 5 * pairs,
        "dpo_loss: {pairs} pairs of {t} tokens, buffers of {}, {}, {}, {}",
        dlogp.len(),
        logp.len(),
        weights.len(),
        rows.len()
    );
    ensure!(
        !cfg.loss.uses_reference() || reference.is_some_and(|r| r.len() == 2 * pairs),
        "dpo_loss: {:?} needs the reference's {} sequence log-probs",
        cfg.loss,
        2 * pairs
    );
    // The kernel reads the reference where one is passed: only to the losses that use it.
    let reference = reference.filter(|_| cfg.loss.uses_reference());
    let (p, ti, kind) = (pairs as i32, t as i32, cfg.loss.kernel_code());
    let null: u64 = 0;
    let f = eng.function("dpo_loss")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(dlogp).arg(rows).arg(logp).arg(weights);
    match reference {
        Some(r) => l.arg(r),
        None => l.arg(&null),
    };
    l.arg(&p)
        .arg(&ti)
        .arg(&kind)
        .arg(&cfg.beta)
        .arg(&cfg.label_smoothing)
        .arg(&cfg.simpo_gamma)
        .arg(&grad_scale);
    let launch = LaunchConfig {
        grid_dim: (pairs as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match the kernel (a null reference is a 0 pointer); lengths checked above.
    unsafe { l.launch(launch) }.map_err(|e| anyhow!("dpo_loss ({pairs} pairs, T={t}): {e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::loss::DpoLoss;
    use clap::ValueEnum;

    /// kernels/dpo_loss.cu names the loss kinds in `#define`s: each must be its
    /// `DpoLoss::kernel_code`, and every kind must have one.
    #[test]
    fn the_kernels_loss_codes_are_the_enums() {
        let source = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/dpo_loss.cu"));
        let defines: Vec<(&str, i32)> = source
            .lines()
            .filter_map(|l| l.strip_prefix("#define DPO_"))
            .map(|l| {
                let (name, code) = l.split_once(' ').expect("#define NAME CODE");
                (name, code.trim().parse().expect("an integer code"))
            })
            .collect();
        let named = [
            (DpoLoss::Sigmoid, "SIGMOID"),
            (DpoLoss::Ipo, "IPO"),
            (DpoLoss::Hinge, "HINGE"),
            (DpoLoss::Simpo, "SIMPO"),
            (DpoLoss::RefFreeSigmoid, "REF_FREE"),
        ];
        assert_eq!(named.len(), DpoLoss::value_variants().len());
        assert_eq!(defines.len(), named.len(), "{defines:?}");
        for (loss, name) in named {
            assert!(
                defines.contains(&(name, loss.kernel_code())),
                "kernels/dpo_loss.cu: DPO_{name} is not {} ({loss:?}): {defines:?}",
                loss.kernel_code()
            );
        }
    }
}
