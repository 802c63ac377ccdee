//! The process group a command runs in: this process's place ([`World`]) and the host
//! collectives it shares with the other ranks ([`HostComm`]). World size 1 opens no socket and
//! every collective returns its input, so a plain run pays nothing.
//!
//! A data-parallel trainer asks the group three kinds of question:
//! - sums: gradients on the CPU, metrics, statistics ([`Group::all_reduce_sum`]);
//! - agreement: whether any rank got a signal, so all stop at the same step ([`Group::any`]);
//! - rank 0's bytes: the NCCL unique id, a run's start ([`Group::broadcast_bytes`]).

use super::heartbeat::{self, Heartbeat};
use super::host_comm::{HostComm, DEFAULT_TIMEOUT};
use super::rendezvous::{job_key, rendezvous, serve_on};
use super::world::World;
use anyhow::{Context, Result};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the ranks wait for each other at the rendezvous by default (`PREFER_RENDEZVOUS_TIMEOUT`
/// in seconds overrides it): long enough for a slow node to load a large model first.
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Group {
    pub world: World,
    host: Mutex<HostComm>,
    /// Watches the other ranks (none for one process); told when this rank ends cleanly.
    heartbeat: Mutex<Option<Heartbeat>>,
}

/// How long a watcher waits, once a rank is gone, for this rank to fail by itself (a host
/// collective names the rank) before it stops it: a rank blocked in a device synchronisation
/// behind a collective that can never finish.
const HEARTBEAT_GRACE: Duration = Duration::from_secs(10);

/// The heartbeat connections (rank 0 to each other rank) and their watchers. A rank found gone
/// stops this one after [`HEARTBEAT_GRACE`]: its NCCL communicators aborted, exit status 1.
/// The connections are a second rendezvous, on a port rank 0 lets the system choose and
/// tells the others.
fn start_heartbeat(
    world: &World,
    host: &mut HostComm,
    job: u64,
    timeout: Duration,
) -> Result<Heartbeat> {
    let addr = &world.master_addr;
    let mut port = [0.0];
    let listener = if world.rank == 0 {
        let l = std::net::TcpListener::bind((addr.as_str(), 0))
            .with_context(|| format!("rank 0: listening at {addr} for the heartbeat"))?;
        port[0] = l.local_addr()?.port() as f64;
        Some(l)
    } else {
        None
    };
    host.all_reduce_sum("heartbeat port", &mut port)?;
    let met = match listener {
        Some(l) => {
            let deadline = std::time::Instant::now() + timeout;
            serve_on(l, world.size, addr, job, b"", deadline, timeout)
        }
        None => rendezvous(
            world.rank,
            world.size,
            addr,
            port[0] as u16,
            job,
            b"",
            timeout,
        ),
    }
    .context("the heartbeat's connections")?;
    let peers = heartbeat::peers_of(met);
    let me = world.describe();
    let on_death: heartbeat::OnDeath = Arc::new(move |rank| {
        eprintln!(
            "error: {me}: rank {rank} ended without finishing (its heartbeat connection closed: it \
             exited on an error or was killed); stopping this rank"
        );
        crate::dist::nccl::abort_all();
        std::process::exit(1);
    });
    Heartbeat::watch(peers, HEARTBEAT_GRACE, on_death)
}

fn seconds_from_env(name: &str, default: Duration) -> Result<Duration> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => {
            let s: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s > 0.0)
                .with_context(|| format!("{name}={v:?} is not a number of seconds above 0"))?;
            Ok(Duration::from_secs_f64(s))
        }
    }
}

impl Group {
    /// One process, rank 0 of 1.
    pub fn single() -> Group {
        Group {
            world: World::single(),
            host: Mutex::new(HostComm::single()),
            heartbeat: Mutex::new(None),
        }
    }

    /// The group the launcher's variables describe (torchrun, Slurm, Open MPI, `prefer launch`),
    /// met at MASTER_ADDR:MASTER_PORT; one process without them. `job` is text every rank of
    /// one job shares (the command line), so a rank of another job is refused at the rendezvous.
    pub fn join(job: &str) -> Result<Group> {
        let world = World::from_env()?;
        if world.is_single() {
            return Ok(Group::single());
        }
        crate::ops::cuda::device::set_local_rank(world.local_rank);
        let meet = seconds_from_env("PREFER_RENDEZVOUS_TIMEOUT", RENDEZVOUS_TIMEOUT)?;
        let collective = seconds_from_env("PREFER_COLLECTIVE_TIMEOUT", DEFAULT_TIMEOUT)?;
        let met = rendezvous(
            world.rank,
            world.size,
            &world.master_addr,
            world.master_port,
            job_key(job),
            b"",
            meet,
        )
        .with_context(|| format!("{}: the rendezvous", world.describe()))?;
        let mut host = HostComm::new(world.rank, world.size, met, collective);
        let heartbeat = start_heartbeat(&world, &mut host, job_key(job), meet)?;
        Ok(Group {
            world,
            host: Mutex::new(host),
            heartbeat: Mutex::new(Some(heartbeat)),
        })
    }

    /// This rank's command ended cleanly: the others' heartbeat watchers are told, so its exit
    /// is not taken for a death. Call once the run's files are written.
    pub fn finish(&self) {
        if let Some(h) = self
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            h.finish();
        }
    }

    pub fn rank(&self) -> usize {
        self.world.rank
    }

    pub fn size(&self) -> usize {
        self.world.size
    }

    /// Items `0..n` dealt round-robin over the ranks (item i to rank i % size): this rank's, one
    /// a round, `Some(i)`, or `None` in a last round that has none for it. Where every pass is a
    /// collective (`--shard full`) a rank runs a pass that adds nothing for each `None`, so every
    /// rank runs as many rounds as the others.
    pub fn rounds(&self, n: usize) -> impl Iterator<Item = Option<usize>> {
        let (rank, size) = (self.rank(), self.size());
        (0..n.div_ceil(size)).map(move |round| Some(round * size + rank).filter(|&i| i < n))
    }

    /// Rank 0: the rank that writes the run's files.
    pub fn is_root(&self) -> bool {
        self.world.rank == 0
    }

    /// The host communicator, once this rank's queued device work has run: on the software GPU a
    /// queued NCCL collective runs only when the host drives it, and a peer may wait for it.
    fn comm(&self) -> std::sync::MutexGuard<'_, HostComm> {
        crate::emu::drain();
        // A panic while holding it leaves a communicator whose state is still whole.
        self.host.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Elementwise sums over the ranks, in rank order (the same bits on every rank).
    pub fn all_reduce_sum(&self, name: &str, values: &mut [f64]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        self.comm().all_reduce_sum(name, values)
    }

    /// Sums of f32 values (gradients on the CPU): added in f64, in rank order, then rounded once.
    pub fn all_reduce_sum_f32(&self, name: &str, values: &mut [f32]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        // In pieces, so a large model's gradients never need one huge message.
        let mut comm = self.comm();
        for piece in values.chunks_mut(1 << 22) {
            let mut wide: Vec<f64> = piece.iter().map(|&v| v as f64).collect();
            comm.all_reduce_sum(name, &mut wide)?;
            for (v, w) in piece.iter_mut().zip(wide) {
                *v = w as f32;
            }
        }
        Ok(())
    }

    /// Whether `flag` holds on any rank.
    pub fn any(&self, name: &str, flag: bool) -> Result<bool> {
        let mut v = [flag as u8 as f64];
        self.all_reduce_sum(name, &mut v)?;
        Ok(v[0] > 0.0)
    }

    /// Waits for every rank.
    pub fn barrier(&self, name: &str) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        self.comm().barrier(name)
    }

    /// Rank 0's `bytes` on every rank (the others' are replaced). At most 1 MiB.
    pub fn broadcast_bytes(&self, name: &str, bytes: &mut Vec<u8>) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let mut len = [bytes.len() as f64];
        self.broadcast_f64(&format!("{name} (length)"), &mut len)?;
        let len = len[0] as usize;
        anyhow::ensure!(len <= 1 << 20, "{name}: rank 0 sent {len} bytes");
        bytes.resize(len, 0);
        let mut wide: Vec<f64> = bytes.iter().map(|&b| b as f64).collect();
        self.broadcast_f64(name, &mut wide)?;
        *bytes = wide.iter().map(|&b| b as u8).collect();
        Ok(())
    }

    /// Every rank's `mine`, in rank order, on every rank (their lengths may differ).
    pub fn all_gather_f64(&self, name: &str, mine: &[f64]) -> Result<Vec<Vec<f64>>> {
        if self.size() == 1 {
            return Ok(vec![mine.to_vec()]);
        }
        let (rank, size) = (self.rank(), self.size());
        let mut lens = vec![0.0; size];
        lens[rank] = mine.len() as f64;
        self.all_reduce_sum(&format!("{name} (lengths)"), &mut lens)?;
        let lens: Vec<usize> = lens.iter().map(|&l| l as usize).collect();
        let start: usize = lens[..rank].iter().sum();
        let mut all = vec![0.0; lens.iter().sum()];
        all[start..start + mine.len()].copy_from_slice(mine);
        self.all_reduce_sum(name, &mut all)?;
        let mut parts = Vec::with_capacity(size);
        let mut at = 0;
        for l in lens {
            parts.push(all[at..at + l].to_vec());
            at += l;
        }
        Ok(parts)
    }

    /// Rank 0's `values` on every rank.
    pub fn broadcast_f64(&self, name: &str, values: &mut [f64]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        if !self.is_root() {
            values.fill(0.0);
        }
        self.all_reduce_sum(name, values)
    }
}
