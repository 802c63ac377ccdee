//! Device buffers handed back by the model code (`Backend::recycle_*`), kept by length for the
//! next request of that length. The forward and backward ask for the same lengths every step,
//! so after the first step of a shape a training, scoring or rollout loop allocates nothing:
//! no stream-ordered malloc, no free, in the steady state (DESIGN.md, principle 3).
//!
//! Lengths are exact because the launchers check them. Shapes change (DPO pads each batch to its
//! longest pair; prefills change with the prompts admitted), so each length remembers the last
//! step that used it, and `retire` (once an optimiser step or a prefill) frees the lengths the last three steps did not touch (PPO's policy and value
//! step together: two retires a minibatch); `trim` frees everything
//! idle (between PPO's rollout and training phases, and before retrying an allocation that ran
//! out of memory).

use cudarc::driver::CudaSlice;
use half::bf16;
use std::collections::HashMap;

/// Idle buffers of one length, and the step that last took or returned one.
struct Shelf<T> {
    idle: Vec<CudaSlice<T>>,
    used: u64,
}

#[derive(Default)]
pub struct Pool {
    bf16: HashMap<usize, Shelf<bf16>>,
    f32: HashMap<usize, Shelf<f32>>,
    u32: HashMap<usize, Shelf<u32>>,
    /// Counts `retire` calls: the steps so far.
    step: u64,
    /// Bytes held here, not in use.
    pub idle_bytes: usize,
}

fn take<T>(shelves: &mut HashMap<usize, Shelf<T>>, n: usize, step: u64) -> Option<CudaSlice<T>> {
    let shelf = shelves.get_mut(&n)?;
    shelf.used = step;
    shelf.idle.pop()
}

fn give<T>(shelves: &mut HashMap<usize, Shelf<T>>, x: CudaSlice<T>, step: u64) {
    let shelf = shelves.entry(x.len()).or_insert(Shelf {
        idle: Vec::new(),
        used: step,
    });
    shelf.used = step;
    shelf.idle.push(x);
}

/// Frees the shelves last used before `oldest`; returns the bytes freed.
fn evict<T>(shelves: &mut HashMap<usize, Shelf<T>>, oldest: u64, bytes: usize) -> usize {
    let mut freed = 0;
    shelves.retain(|&n, shelf| {
        let keep = shelf.used >= oldest;
        if !keep {
            freed += n * bytes * shelf.idle.len();
        }
        keep
    });
    freed
}

impl Pool {
    pub fn take_bf16(&mut self, n: usize) -> Option<CudaSlice<bf16>> {
        let x = take(&mut self.bf16, n, self.step)?;
        self.idle_bytes -= 2 * n;
        Some(x)
    }
    pub fn take_f32(&mut self, n: usize) -> Option<CudaSlice<f32>> {
        let x = take(&mut self.f32, n, self.step)?;
        self.idle_bytes -= 4 * n;
        Some(x)
    }
    pub fn take_u32(&mut self, n: usize) -> Option<CudaSlice<u32>> {
        let x = take(&mut self.u32, n, self.step)?;
        self.idle_bytes -= 4 * n;
        Some(x)
    }
    pub fn give_u32(&mut self, x: CudaSlice<u32>) {
        self.idle_bytes += 4 * x.len();
        give(&mut self.u32, x, self.step);
    }
    pub fn give_bf16(&mut self, x: CudaSlice<bf16>) {
        self.idle_bytes += 2 * x.len();
        give(&mut self.bf16, x, self.step);
    }
    pub fn give_f32(&mut self, x: CudaSlice<f32>) {
        self.idle_bytes += 4 * x.len();
        give(&mut self.f32, x, self.step);
    }
    /// One step is over: frees the lengths the last three steps did not use.
    pub fn retire(&mut self) {
        self.step += 1;
        let oldest = self.step.saturating_sub(2);
        self.idle_bytes -= evict(&mut self.bf16, oldest, 2)
            + evict(&mut self.f32, oldest, 4)
            + evict(&mut self.u32, oldest, 4);
    }
    /// Frees every idle buffer.
    pub fn trim(&mut self) {
        self.bf16.clear();
        self.f32.clear();
        self.u32.clear();
        self.idle_bytes = 0;
    }
}
