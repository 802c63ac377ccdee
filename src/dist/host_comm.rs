//! Collectives on host values over the rendezvous's sockets: the logged metrics, PPO's whitening
//! and running reward statistics, the adaptive KL's measurement, a barrier before a checkpoint.
//! Small and rare, so a star through rank 0 is enough; device buffers go through NCCL.
//!
//! - **Deterministic:** a sum is rank 0's values, plus rank 1's, plus rank 2's, ... in that order,
//!   element by element, so the same per-rank values give the same bits on every run.
//! - **Checked:** every call carries its name and length; ranks that call different collectives,
//!   or the same one with different lengths, all fail with both named, instead of hanging or
//!   mixing unrelated numbers.
//! - **No hang:** a rank that died (its socket closed) or never arrives within the timeout is an
//!   error naming it, on rank 0 and, through rank 0's reply or its closed socket, on the others.

use super::rendezvous::{job_key, Rendezvous};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long a collective waits for the slowest rank by default: long enough for a rank that is
/// still saving a checkpoint or finishing a long generation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// The most values one collective carries (128 MiB): metrics and statistics are far fewer.
const MAX_VALUES: usize = 1 << 24;

pub struct HostComm {
    rank: usize,
    size: usize,
    /// Rank 0: the stream to every other rank (none at 0). Others: the stream to rank 0 at 0.
    peers: Vec<Option<TcpStream>>,
    timeout: Duration,
}

/// One collective's header: the name's hash and the element count.
fn header(name: &str, len: usize) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&job_key(name).to_le_bytes());
    h[8..].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

fn read_exact_or_dead(s: &mut TcpStream, buf: &mut [u8], who: &str, what: &str) -> Result<()> {
    s.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            anyhow!("{who} closed its connection during {what}: it exited or was killed")
        }
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            anyhow!("{who} did not reach {what} in time")
        }
        _ => anyhow!("{who} during {what}: {e}"),
    })
}

impl HostComm {
    /// One process: every collective returns its input.
    pub fn single() -> HostComm {
        HostComm {
            rank: 0,
            size: 1,
            peers: vec![None],
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Over the sockets a rendezvous of `size` ranks left open.
    pub fn new(rank: usize, size: usize, rendezvous: Rendezvous, timeout: Duration) -> HostComm {
        HostComm {
            rank,
            size,
            peers: rendezvous.peers,
            timeout,
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Elementwise sums of `values` over the ranks, in rank order; every rank gets them. `name`
    /// says which collective this is (the same on every rank), for the checks and the errors.
    pub fn all_reduce_sum(&mut self, name: &str, values: &mut [f64]) -> Result<()> {
        if values.len() > MAX_VALUES {
            bail!(
                "all_reduce {name:?} of {} values: at most {MAX_VALUES}",
                values.len()
            );
        }
        if self.size == 1 {
            return Ok(());
        }
        let what = format!("all_reduce {name:?} of {} values", values.len());
        if self.rank == 0 {
            self.root_reduce(name, values, &what)
        } else {
            self.leaf_reduce(name, values, &what)
        }
    }

    /// Waits until every rank has called it with the same name.
    pub fn barrier(&mut self, name: &str) -> Result<()> {
        self.all_reduce_sum(name, &mut [])
    }

    fn root_reduce(&mut self, name: &str, values: &mut [f64], what: &str) -> Result<()> {
        let mine = header(name, values.len());
        let mut failure: Option<String> = None;
        let mut incoming: Vec<Vec<f64>> = Vec::with_capacity(self.size);
        for r in 1..self.size {
            let s = self.peers[r].as_mut().expect("rank 0 holds every peer");
            s.set_read_timeout(Some(self.timeout))?;
            let who = format!("rank {r}");
            let mut h = [0u8; 16];
            if let Err(e) = read_exact_or_dead(s, &mut h, &who, what) {
                failure.get_or_insert(format!("{e:#}"));
                incoming.push(Vec::new());
                continue;
            }
            let len = u64::from_le_bytes(h[8..].try_into().unwrap()) as usize;
            if len > MAX_VALUES {
                failure.get_or_insert(format!("rank {r} sent {len} values for {what}"));
                incoming.push(Vec::new());
                continue;
            }
            // Read the values even when they will be refused: a socket closed with unread bytes
            // is reset, and the rank would lose the reply that says why.
            let mut bytes = vec![0u8; len * 8];
            if let Err(e) = read_exact_or_dead(s, &mut bytes, &who, what) {
                failure.get_or_insert(format!("{e:#}"));
                incoming.push(Vec::new());
                continue;
            }
            if h != mine {
                let why = if h[..8] != mine[..8] {
                    format!("rank {r} called another collective than rank 0's {what}")
                } else {
                    format!(
                        "rank {r} called {name:?} with {len} values, rank 0 with {}",
                        values.len()
                    )
                };
                failure.get_or_insert(why);
                incoming.push(Vec::new());
                continue;
            }
            incoming.push(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            );
        }
        // Every live rank hears the outcome: the sums, or why there are none.
        let reply = match &failure {
            None => {
                for theirs in &incoming {
                    for (v, t) in values.iter_mut().zip(theirs) {
                        *v += t;
                    }
                }
                let mut b = vec![0u8];
                b.extend(values.iter().flat_map(|v| v.to_le_bytes()));
                b
            }
            Some(why) => {
                let mut b = vec![1u8];
                b.extend_from_slice(why.as_bytes());
                b
            }
        };
        for r in 1..self.size {
            if let Some(s) = self.peers[r].as_mut() {
                let _ = s
                    .write_all(&(reply.len() as u64).to_le_bytes())
                    .and_then(|()| s.write_all(&reply));
            }
        }
        match failure {
            None => Ok(()),
            Some(why) => bail!("{why}"),
        }
    }

    fn leaf_reduce(&mut self, name: &str, values: &mut [f64], what: &str) -> Result<()> {
        let s = self.peers[0]
            .as_mut()
            .expect("a rank holds its stream to rank 0");
        let mut out = header(name, values.len()).to_vec();
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        s.write_all(&out)
            .map_err(|e| anyhow!("rank 0 is gone ({e}) at {what}"))?;
        s.set_read_timeout(Some(self.timeout))?;
        let mut len = [0u8; 8];
        read_exact_or_dead(s, &mut len, "rank 0", what)?;
        let len = u64::from_le_bytes(len) as usize;
        if len > 1 + 8 * values.len().max(1 << 16) || len > 1 + 8 * MAX_VALUES {
            bail!("rank 0 answered {what} with {len} bytes");
        }
        let mut reply = vec![0u8; len];
        read_exact_or_dead(s, &mut reply, "rank 0", what)?;
        match reply.split_first() {
            Some((0, sums)) if sums.len() == 8 * values.len() => {
                for (v, c) in values.iter_mut().zip(sums.chunks_exact(8)) {
                    *v = f64::from_le_bytes(c.try_into().unwrap());
                }
                Ok(())
            }
            Some((1, why)) => Err(anyhow!("{}", String::from_utf8_lossy(why)))
                .with_context(|| format!("rank {}: {what} failed on rank 0", self.rank)),
            _ => bail!("rank 0 answered {what} with a malformed reply"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::free_local_port as free_port;
    use crate::dist::rendezvous::rendezvous;
    use std::time::Instant;

    /// `size` ranks in threads, each running `body` on its communicator.
    fn world<T: Send + 'static>(
        size: usize,
        timeout: Duration,
        body: impl Fn(usize, HostComm) -> T + Send + Sync + Clone + 'static,
    ) -> Vec<T> {
        let port = free_port();
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let body = body.clone();
                std::thread::spawn(move || {
                    let r = rendezvous(
                        rank,
                        size,
                        "127.0.0.1",
                        port,
                        1,
                        b"",
                        Duration::from_secs(20),
                    )
                    .unwrap();
                    body(rank, HostComm::new(rank, size, r, timeout))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn sums_are_in_rank_order_and_the_same_on_every_rank() {
        let inputs = |rank: usize| vec![0.1 * (rank + 1) as f64, 1e16, -(rank as f64), 1.0 / 3.0];
        let results = world(4, Duration::from_secs(20), move |rank, mut comm| {
            let mut v = inputs(rank);
            comm.all_reduce_sum("stats", &mut v).unwrap();
            comm.barrier("after").unwrap();
            v
        });
        let mut expected = inputs(0);
        for r in 1..4 {
            for (e, x) in expected.iter_mut().zip(inputs(r)) {
                *e += x;
            }
        }
        for (rank, v) in results.iter().enumerate() {
            let bits: Vec<u64> = v.iter().map(|x| x.to_bits()).collect();
            let want: Vec<u64> = expected.iter().map(|x| x.to_bits()).collect();
            assert_eq!(bits, want, "rank {rank}");
        }
        assert!(HostComm::single().all_reduce_sum("x", &mut [1.0]).is_ok());
    }

    #[test]
    fn different_lengths_or_collectives_fail_on_every_rank_naming_them() {
        let results = world(3, Duration::from_secs(20), |rank, mut comm| {
            let mut v = vec![1.0; if rank == 2 { 5 } else { 4 }];
            format!("{:#}", comm.all_reduce_sum("stats", &mut v).unwrap_err())
        });
        for (rank, msg) in results.iter().enumerate() {
            assert!(
                msg.contains("rank 2 called \"stats\" with 5 values, rank 0 with 4"),
                "rank {rank}: {msg}"
            );
        }
        let results = world(2, Duration::from_secs(20), |rank, mut comm| {
            let name = if rank == 0 { "metrics" } else { "whitening" };
            format!("{:#}", comm.all_reduce_sum(name, &mut [1.0]).unwrap_err())
        });
        for msg in &results {
            assert!(msg.contains("rank 1 called another collective"), "{msg}");
        }
    }

    #[test]
    fn a_dead_rank_is_named_at_once_not_waited_for() {
        let t0 = Instant::now();
        let results = world(3, Duration::from_secs(600), |rank, mut comm| {
            if rank == 1 {
                drop(comm); // a rank that exits (or is killed) closes its socket
                return String::new();
            }
            format!(
                "{:#}",
                comm.all_reduce_sum("stats", &mut [1.0]).unwrap_err()
            )
        });
        assert!(
            results[0].contains("rank 1 closed its connection"),
            "{}",
            results[0]
        );
        assert!(
            results[2].contains("rank 1 closed its connection"),
            "{}",
            results[2]
        );
        assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_rank_that_never_arrives_is_named_after_the_timeout() {
        let results = world(2, Duration::from_millis(500), |rank, mut comm| {
            if rank == 1 {
                std::thread::sleep(Duration::from_secs(2));
                return String::new();
            }
            format!(
                "{:#}",
                comm.all_reduce_sum("stats", &mut [1.0]).unwrap_err()
            )
        });
        assert!(
            results[0].contains("rank 1 did not reach all_reduce \"stats\""),
            "{}",
            results[0]
        );
    }
}
