//! The heartbeat: one TCP connection between rank 0 and each other rank, watched by a thread on
//! both ends, so a rank that dies is noticed even while this rank is blocked where no host
//! collective can tell it (a device synchronisation behind an NCCL kernel that waits for the dead
//! rank forever, on a GPU).
//!
//! A rank that ends its command cleanly says goodbye ([`Heartbeat::finish`]); a connection that
//! closes without one means the rank exited on an error, was killed (kill -9, out of memory) or
//! lost its node. The watcher then waits `grace` (the main thread usually fails by itself first,
//! with a better message: a host collective names the rank), and if this rank is still running,
//! calls `on_death`: by default, abort the NCCL communicators (which frees a blocked stream) and
//! exit non-zero, naming the rank.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BYE: u8 = 0xB7;

/// What a watcher does when rank `r` is gone.
pub type OnDeath = Arc<dyn Fn(usize) + Send + Sync>;

pub struct Heartbeat {
    /// (rank at the other end, a handle to write the goodbye on).
    peers: Vec<(usize, TcpStream)>,
    finished: Arc<AtomicBool>,
}

/// Rank 0: listens on `addr` (any port) and returns the port, for the others to connect to.
pub fn listen(addr: &str) -> Result<(TcpListener, u16)> {
    let l = TcpListener::bind((addr, 0))
        .with_context(|| format!("rank 0: listening at {addr} for the heartbeat"))?;
    let port = l.local_addr()?.port();
    Ok((l, port))
}

/// Rank 0: the connection of every other rank, each saying which it is.
pub fn accept_all(
    l: TcpListener,
    size: usize,
    timeout: Duration,
) -> Result<Vec<(usize, TcpStream)>> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut peers: Vec<(usize, TcpStream)> = Vec::with_capacity(size.saturating_sub(1));
    while peers.len() + 1 < size {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut r = [0u8; 4];
                s.read_exact(&mut r).context("a rank's heartbeat hello")?;
                s.set_read_timeout(None)?;
                let rank = u32::from_le_bytes(r) as usize;
                if rank == 0 || rank >= size || peers.iter().any(|(p, _)| *p == rank) {
                    bail!("a heartbeat connection says it is rank {rank}");
                }
                peers.push((rank, s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<String> = (1..size)
                        .filter(|r| !peers.iter().any(|(p, _)| p == r))
                        .map(|r| r.to_string())
                        .collect();
                    bail!(
                        "the heartbeat: ranks {} did not connect within {:.0} s",
                        missing.join(", "),
                        timeout.as_secs_f64()
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accepting a heartbeat connection"),
        }
    }
    Ok(peers)
}

/// Another rank: its connection to rank 0's heartbeat port.
pub fn connect(addr: &str, port: u16, rank: usize) -> Result<TcpStream> {
    let mut s = TcpStream::connect((addr, port)).with_context(|| {
        format!("rank {rank}: connecting to rank 0's heartbeat at {addr}:{port}")
    })?;
    s.write_all(&(rank as u32).to_le_bytes())?;
    Ok(s)
}

impl Heartbeat {
    /// Watches `peers` (rank 0: every other rank; the others: rank 0), one thread each.
    pub fn watch(
        peers: Vec<(usize, TcpStream)>,
        grace: Duration,
        on_death: OnDeath,
    ) -> Result<Heartbeat> {
        let finished = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::with_capacity(peers.len());
        for (rank, stream) in peers {
            writers.push((rank, stream.try_clone()?));
            let (finished, on_death) = (finished.clone(), on_death.clone());
            std::thread::Builder::new()
                .name(format!("heartbeat-{rank}"))
                .spawn(move || watch_one(rank, stream, grace, &finished, &*on_death))?;
        }
        Ok(Heartbeat {
            peers: writers,
            finished,
        })
    }

    /// This rank ends cleanly: the others are told, and its watchers stand down.
    pub fn finish(&mut self) {
        self.finished.store(true, Ordering::SeqCst);
        for (_, s) in &mut self.peers {
            let _ = s.write_all(&[BYE]);
            let _ = s.flush();
        }
    }
}

fn watch_one(
    rank: usize,
    mut s: TcpStream,
    grace: Duration,
    finished: &AtomicBool,
    on_death: &(dyn Fn(usize) + Send + Sync),
) {
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] == BYE => return,
            Ok(1) => continue,
            // Closed without a goodbye, or broken.
            _ => break,
        }
    }
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if finished.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !finished.load(Ordering::SeqCst) {
        on_death(rank);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// (watching rank, rank it found gone), as reported.
    type Seen = Arc<Mutex<Vec<(usize, usize)>>>;

    /// Rank 0 and two others over localhost; what each watcher reported.
    fn three_ranks(grace: Duration) -> (Heartbeat, Vec<Heartbeat>, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let report = |me: usize| -> OnDeath {
            let seen = seen.clone();
            Arc::new(move |r| seen.lock().unwrap().push((me, r)))
        };
        let (l, port) = listen("127.0.0.1").unwrap();
        let others: Vec<TcpStream> = (1..3)
            .map(|r| connect("127.0.0.1", port, r).unwrap())
            .collect();
        let peers = accept_all(l, 3, Duration::from_secs(5)).unwrap();
        let root = Heartbeat::watch(peers, grace, report(0)).unwrap();
        let leaves = others
            .into_iter()
            .enumerate()
            .map(|(i, s)| Heartbeat::watch(vec![(0, s)], grace, report(i + 1)).unwrap())
            .collect();
        (root, leaves, seen)
    }

    #[test]
    fn a_rank_gone_without_a_goodbye_is_reported_after_the_grace() {
        let (_root, mut leaves, seen) = three_ranks(Duration::from_millis(100));
        leaves[0].finish(); // rank 1 ends cleanly
                            // Rank 2 vanishes: its connection closes as a killed process's would.
        for (_, s) in &leaves[1].peers {
            s.shutdown(std::net::Shutdown::Both).unwrap();
        }
        std::thread::sleep(Duration::from_millis(600));
        let seen = seen.lock().unwrap().clone();
        assert!(seen.contains(&(0, 2)), "{seen:?}");
        assert!(!seen.iter().any(|&(a, b)| a == 1 || b == 1), "{seen:?}");
    }

    #[test]
    fn a_clean_finish_everywhere_reports_nothing() {
        let (mut root, mut leaves, seen) = three_ranks(Duration::from_millis(100));
        for l in &mut leaves {
            l.finish();
        }
        root.finish();
        drop(leaves);
        drop(root);
        std::thread::sleep(Duration::from_millis(400));
        assert!(seen.lock().unwrap().is_empty());
    }
}
