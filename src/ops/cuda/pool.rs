//! Device buffers handed back by the model code (`Backend::recycle_*`), kept by length for the
//! next request of that length. The forward and backward ask for the same lengths every step,
//! so after the first step of a shape a training, scoring or rollout loop allocates nothing:
//! no stream-ordered malloc, no free, in the steady state (DESIGN.md, principle 3).
//!
//! Lengths are exact because the launchers check them. A loop over many shapes would hold a set
//! per shape; `trim` gives everything back to the driver.

use cudarc::driver::CudaSlice;
use half::bf16;
use std::collections::HashMap;

#[derive(Default)]
pub struct Pool {
    bf16: HashMap<usize, Vec<CudaSlice<bf16>>>,
    f32: HashMap<usize, Vec<CudaSlice<f32>>>,
    /// Bytes held here, not in use.
    pub idle_bytes: usize,
}

impl Pool {
    pub fn take_bf16(&mut self, n: usize) -> Option<CudaSlice<bf16>> {
        let x = self.bf16.get_mut(&n)?.pop()?;
        self.idle_bytes -= 2 * n;
        Some(x)
    }
    pub fn take_f32(&mut self, n: usize) -> Option<CudaSlice<f32>> {
        let x = self.f32.get_mut(&n)?.pop()?;
        self.idle_bytes -= 4 * n;
        Some(x)
    }
    pub fn give_bf16(&mut self, x: CudaSlice<bf16>) {
        self.idle_bytes += 2 * x.len();
        self.bf16.entry(x.len()).or_default().push(x);
    }
    pub fn give_f32(&mut self, x: CudaSlice<f32>) {
        self.idle_bytes += 4 * x.len();
        self.f32.entry(x.len()).or_default().push(x);
    }
    /// Frees every idle buffer.
    pub fn trim(&mut self) {
        self.bf16.clear();
        self.f32.clear();
        self.idle_bytes = 0;
    }
}
