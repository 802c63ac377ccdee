//! Many processes, one per GPU: which process this is (world.rs), the rendezvous with rank 0
//! (rendezvous.rs), collectives on host values over its sockets (host_comm.rs), the process group
//! a trainer holds (group.rs), and NCCL for device buffers (nccl_lib.rs finds it, nccl.rs drives
//! it). The data-parallel step itself is the trainers' (src/train/offline_stages.rs,
//! src/rl/ppo_epochs.rs): micro-batches split over ranks, `TrainState::all_reduce_grads` before
//! each optimiser step.

pub mod group;
pub mod heartbeat;
pub mod host_comm;
pub mod nccl;
pub mod nccl_lib;
pub mod rendezvous;
pub mod world;

use anyhow::{bail, Result};

/// A TCP port on 127.0.0.1 that was free a moment ago, for tests of the rendezvous and the host
/// collectives.
#[cfg(test)]
pub(crate) fn free_local_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
use world::World;

/// Refuses a command that does not split its work over several processes, when a launcher
/// started more than one: each would repeat the whole job and write the same output. World size
/// 1 (a plain run, or `prefer launch --nproc-per-node 1`) passes.
pub fn refuse_many_processes(command: &str) -> Result<()> {
    let world = World::from_env()?;
    if world.is_single() {
        return Ok(());
    }
    bail!(
        "prefer {command} runs as one process, and this is {}: it does not split its work over \
         ranks (prefer rm, dpo and ppo do), so every rank would repeat the whole job into the same \
         output. Run one process: without a launcher, or with --nproc-per-node 1",
        world.describe()
    )
}
