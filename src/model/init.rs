//! Random initialisation as transformers does it: every matrix ~ N(0, initializer_range²),
//! RMSNorm gains at one.

use super::config::LlamaConfig;
use super::params::ParamLayout;
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// A fresh parameter buffer for `cfg`, reproducible from `seed`.
pub fn init_params(cfg: &LlamaConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, cfg.initializer_range).expect("initializer_range is finite");
    let mut params = vec![0.0f32; layout.len];
    for slot in &layout.slots {
        let dst = &mut params[slot.range.clone()];
        if ParamLayout::is_norm(slot) {
            dst.fill(1.0);
        } else {
            dst.iter_mut().for_each(|x| *x = normal.sample(&mut rng));
        }
    }
    params
}
