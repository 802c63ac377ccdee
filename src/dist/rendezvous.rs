//! The rendezvous: every rank meets rank 0 over TCP at MASTER_ADDR:MASTER_PORT before any
//! collective, and rank 0 hands each the bytes they all need (NCCL's unique id). Rank 0 listens;
//! the others connect, retrying until the deadline, and say who they are and which job they run.
//!
//! Failures are errors that say what happened, never a hang:
//! - a rank that never arrives: rank 0's error names the address and which ranks arrived;
//! - no rank 0: the others' error names the address they tried and the last reason;
//! - a rank of another job (a different world size or command line), or a rank number twice.
//!
//! The sockets stay open after the rendezvous (`Rendezvous::peers`), for the heartbeat that
//! tells the survivors a rank died.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"prefer-1";
/// Longest payload or message either side sends, so a stray connection cannot make a rank
/// allocate without bound.
const MAX_MESSAGE: usize = 1 << 20;

/// What one rank knows after the rendezvous.
pub struct Rendezvous {
    /// Rank 0's bytes, the same on every rank.
    pub payload: Vec<u8>,
    /// Rank 0: one stream per other rank, indexed by rank (none at 0). Others: the stream to rank
    /// 0 alone.
    pub peers: Vec<Option<TcpStream>>,
}

/// The job's identity as the ranks compare it: any text all ranks of one job share (the command
/// line), hashed.
pub fn job_key(text: &str) -> u64 {
    // FNV-1a: stable across builds and machines, unlike std's hasher.
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn write_message(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(&(bytes.len() as u32).to_le_bytes())?;
    s.write_all(bytes)?;
    s.flush()
}

fn read_message(s: &mut TcpStream) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        bail!("a message of {len} bytes, more than the {MAX_MESSAGE} a rendezvous sends");
    }
    let mut bytes = vec![0u8; len];
    s.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Who a connecting rank says it is: magic, rank, world size, job key.
fn hello(rank: usize, world: usize, job: u64) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&(rank as u32).to_le_bytes());
    h.extend_from_slice(&(world as u32).to_le_bytes());
    h.extend_from_slice(&job.to_le_bytes());
    h
}

fn parse_hello(h: &[u8]) -> Option<(usize, usize, u64)> {
    if h.len() != 24 || &h[..8] != MAGIC {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap()) as usize;
    Some((
        word(8),
        word(12),
        u64::from_le_bytes(h[16..24].try_into().unwrap()),
    ))
}

/// Meets the other ranks at `addr`:`port`. Rank 0 gives `payload`; the others get it back.
pub fn rendezvous(
    rank: usize,
    world: usize,
    addr: &str,
    port: u16,
    job: u64,
    payload: &[u8],
    timeout: Duration,
) -> Result<Rendezvous> {
    if rank >= world {
        bail!("rank {rank} is not below the world size {world}");
    }
    if payload.len() > MAX_MESSAGE {
        bail!(
            "a rendezvous payload of {} bytes is too large",
            payload.len()
        );
    }
    let deadline = Instant::now() + timeout;
    if rank == 0 {
        serve(world, addr, port, job, payload, deadline, timeout)
    } else {
        join(rank, world, addr, port, job, deadline, timeout)
    }
}

fn serve(
    world: usize,
    addr: &str,
    port: u16,
    job: u64,
    payload: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<Rendezvous> {
    let listener = TcpListener::bind((addr, port)).with_context(|| {
        format!("rank 0 cannot listen at {addr}:{port} for the rendezvous (MASTER_ADDR:MASTER_PORT; is the port in use by another job?)")
    })?;
    serve_on(listener, world, addr, job, payload, deadline, timeout)
}

/// Rank 0's side of a rendezvous on a listener it already holds (one on a port of the system's
/// choosing, say, which the other ranks learnt some other way): they connect to `addr` at its
/// port as [`rendezvous`] does.
pub fn serve_on(
    listener: TcpListener,
    world: usize,
    addr: &str,
    job: u64,
    payload: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<Rendezvous> {
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    let mut peers: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    let mut arrived = 1; // rank 0
    while arrived < world {
        let (mut stream, from) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (1..world)
                        .filter(|&r| peers[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    bail!(
                        "rendezvous at {addr}:{port} timed out after {:.0} s: {arrived} of {world} ranks arrived; \
                         missing rank{} {}",
                        timeout.as_secs_f64(),
                        if missing.len() == 1 { "" } else { "s" },
                        missing.join(", ")
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e).context(format!("accepting at {addr}:{port}")),
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        // A connection that is not a rank of ours (a port scan, another program) is dropped.
        let Some((r, w, key)) = read_message(&mut stream).ok().and_then(|h| parse_hello(&h)) else {
            continue;
        };
        let refuse = |stream: &mut TcpStream, why: String| -> anyhow::Error {
            let _ = write_message(stream, format!("refused: {why}").as_bytes());
            anyhow!("rendezvous at {addr}:{port}: {why} (from {from})")
        };
        if w != world {
            return Err(refuse(
                &mut stream,
                format!("rank {r} says the world has {w} ranks, rank 0 says {world}"),
            ));
        }
        if key != job {
            return Err(refuse(
                &mut stream,
                format!("rank {r} runs a different command line than rank 0"),
            ));
        }
        if r == 0 || r >= world || peers[r].is_some() {
            return Err(refuse(
                &mut stream,
                format!(
                    "rank {r} arrived twice, or is not a rank of 1 to {}",
                    world - 1
                ),
            ));
        }
        peers[r] = Some(stream);
        arrived += 1;
    }
    // Everyone is here: each gets the payload.
    let mut reply = b"ok".to_vec();
    reply.extend_from_slice(payload);
    for (r, s) in peers.iter_mut().enumerate() {
        if let Some(s) = s {
            write_message(s, &reply)
                .with_context(|| format!("sending rank {r} the rendezvous payload"))?;
        }
    }
    Ok(Rendezvous {
        payload: payload.to_vec(),
        peers,
    })
}

fn join(
    rank: usize,
    world: usize,
    addr: &str,
    port: u16,
    job: u64,
    deadline: Instant,
    timeout: Duration,
) -> Result<Rendezvous> {
    let mut stream = loop {
        let attempt = (addr, port)
            .to_socket_addrs()
            .map_err(|e| e.to_string())
            .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address".to_string()))
            .and_then(|a| {
                let left = deadline.saturating_duration_since(Instant::now());
                TcpStream::connect_timeout(&a, left.max(Duration::from_millis(10)))
                    .map_err(|e| e.to_string())
            });
        let last_error = match attempt {
            Ok(s) => break s,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!(
                "rank {rank} could not reach rank 0 at {addr}:{port} (MASTER_ADDR:MASTER_PORT) within {:.0} s: {last_error}",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    write_message(&mut stream, &hello(rank, world, job))
        .with_context(|| format!("rank {rank} saying hello to rank 0 at {addr}:{port}"))?;
    // Rank 0 answers once every rank has arrived, or refuses.
    let left = deadline.saturating_duration_since(Instant::now());
    stream.set_read_timeout(Some(left.max(Duration::from_millis(10))))?;
    let reply = read_message(&mut stream).map_err(|e| {
        anyhow!(
            "rank {rank}: rank 0 at {addr}:{port} did not complete the rendezvous within {:.0} s \
             (some rank never arrived, or rank 0 stopped): {e:#}",
            timeout.as_secs_f64()
        )
    })?;
    if let Some(payload) = reply.strip_prefix(b"ok") {
        stream.set_read_timeout(None)?;
        let mut peers: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
        let payload = payload.to_vec();
        peers[0] = Some(stream);
        return Ok(Rendezvous { payload, peers });
    }
    bail!(
        "rank {rank}: rank 0 at {addr}:{port} {}",
        String::from_utf8_lossy(&reply)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::free_local_port as free_port;

    #[test]
    fn four_ranks_meet_and_all_get_rank_zeros_bytes() {
        let port = free_port();
        let id: Vec<u8> = (0..128u8).collect();
        let handles: Vec<_> = (0..4)
            .map(|rank| {
                let id = id.clone();
                std::thread::spawn(move || {
                    let give = if rank == 0 { id } else { Vec::new() };
                    rendezvous(
                        rank,
                        4,
                        "127.0.0.1",
                        port,
                        7,
                        &give,
                        Duration::from_secs(20),
                    )
                })
            })
            .collect();
        for (rank, h) in handles.into_iter().enumerate() {
            let r = h.join().unwrap().unwrap();
            assert_eq!(r.payload, id, "rank {rank}");
            let open = r.peers.iter().filter(|p| p.is_some()).count();
            assert_eq!(open, if rank == 0 { 3 } else { 1 });
        }
    }

    #[test]
    fn a_missing_rank_is_named_within_the_timeout() {
        let port = free_port();
        let t0 = Instant::now();
        let other = std::thread::spawn(move || {
            rendezvous(2, 3, "127.0.0.1", port, 7, &[], Duration::from_secs(2))
        });
        let err = rendezvous(0, 3, "127.0.0.1", port, 7, b"id", Duration::from_secs(1))
            .err()
            .unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("missing rank 1"),
            "{msg}"
        );
        assert!(msg.contains("2 of 3 ranks arrived"), "{msg}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        // Rank 2 learns that the rendezvous did not complete, naming the address.
        let msg = format!("{:#}", other.join().unwrap().err().unwrap());
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    }

    #[test]
    fn no_rank_zero_is_named_within_the_timeout() {
        let port = free_port();
        let t0 = Instant::now();
        let err = rendezvous(1, 2, "127.0.0.1", port, 7, &[], Duration::from_millis(600))
            .err()
            .unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("could not reach rank 0 at 127.0.0.1:{port}")),
            "{msg}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_rank_of_another_job_is_refused_by_name() {
        let port = free_port();
        let other = std::thread::spawn(move || {
            rendezvous(1, 2, "127.0.0.1", port, 8, &[], Duration::from_secs(10))
        });
        let msg = format!(
            "{:#}",
            rendezvous(0, 2, "127.0.0.1", port, 7, b"id", Duration::from_secs(10))
                .err()
                .unwrap()
        );
        assert!(msg.contains("different command line"), "{msg}");
        let msg = format!("{:#}", other.join().unwrap().err().unwrap());
        assert!(
            msg.contains("refused") && msg.contains("different command line"),
            "{msg}"
        );
    }

    #[test]
    fn job_keys_are_stable() {
        assert_eq!(job_key(""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(job_key("dpo --lr 1e-6"), job_key("dpo --lr 2e-6"));
    }
}
