//! Launcher for kernels/reward_loss.cu. The CPU oracle of the same name is
//! src/ops/cpu/reward_loss.rs.

use super::CudaEngine;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::{CudaSlice, PushKernelArg};

/// dvalue (zeroed by the caller) gets the loss's gradient at the reward tokens; rows [P, 3] each
/// pair's loss and rewards (`RewardPairs::from_rows`). Nothing comes back to the host.
#[allow(clippy::too_many_arguments)]
pub fn bradley_terry_loss(
    eng: &CudaEngine,
    dvalue: &mut CudaSlice<f32>,
    rows: &mut CudaSlice<f32>,
    value: &CudaSlice<f32>,
    token: &CudaSlice<u32>,
    margin: Option<&CudaSlice<f32>>,
    pairs: usize,
    grad_scale: f32,
) -> Result<()> {
    ensure!(
        pairs > 0
            && rows.len() == 3 * pairs
            && token.len() == 2 * pairs
            && dvalue.len() == value.len()
            && margin.is_none_or(|m| m.len() == pairs),
        "bradley_terry_loss: {pairs} pairs, {} reward tokens, {} values",
        token.len(),
        value.len()
    );
    let p = pairs as i32;
    let null: u64 = 0;
    let f = eng.function("bradley_terry_loss")?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(dvalue).arg(rows).arg(value).arg(token);
    match margin {
        Some(m) => l.arg(m),
        None => l.arg(&null),
    };
    l.arg(&p).arg(&grad_scale);
    // SAFETY: arguments match the kernel (a null margin is a 0 pointer); the token indices are
    // the caller's positions in `value`, checked on the host when the batch was built.
    unsafe { l.launch(super::grid_for(pairs, "bradley_terry_loss")?) }
        .map_err(|e| anyhow!("bradley_terry_loss ({pairs} pairs): {e:?}"))?;
    Ok(())
}
