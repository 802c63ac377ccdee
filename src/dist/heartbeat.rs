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

use super::rendezvous::Rendezvous;
use anyhow::Result;
use std::io::{Read, Write};
use std::net::TcpStream;
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

/// The rendezvous's peers (rank 0: a stream per other rank; the others: the stream to rank 0) as
/// (rank at the other end, stream).
pub fn peers_of(met: Rendezvous) -> Vec<(usize, TcpStream)> {
    met.peers
        .into_iter()
        .enumerate()
        .filter_map(|(r, s)| s.map(|s| (r, s)))
        .collect()
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
            // A watcher waits as long as the run lasts (a rendezvous leaves a read timeout set).
            stream.set_read_timeout(None)?;
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
    use crate::dist::rendezvous::{rendezvous, serve_on};
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
        // The connections a second rendezvous makes, on a port of the system's choosing.
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let deadline = Instant::now() + Duration::from_secs(5);
        let leaf = |r| {
            std::thread::spawn(move || {
                rendezvous(r, 3, "127.0.0.1", port, 9, b"", Duration::from_secs(5)).unwrap()
            })
        };
        let joining = [leaf(1), leaf(2)];
        let root = serve_on(
            listener,
            3,
            "127.0.0.1",
            9,
            b"",
            deadline,
            Duration::from_secs(5),
        );
        let peers = peers_of(root.unwrap());
        let others: Vec<TcpStream> = joining
            .map(|h| peers_of(h.join().unwrap()).remove(0).1)
            .into();
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
