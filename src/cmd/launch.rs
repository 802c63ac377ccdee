//! `prefer launch`: one process per GPU on this node, as `torchrun --nproc-per-node N --no-python
//! prefer ...` starts them, with the same variables (RANK, WORLD_SIZE, LOCAL_RANK,
//! LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; see src/dist/world.rs).
//!
//! - Rank 0 keeps the terminal (its progress bar draws as in a plain run); every line the other
//!   ranks print is prefixed with `[rank R]`.
//! - The ranks run in their own process group, so a Ctrl-C at the terminal reaches the launcher
//!   alone, which forwards it once to every rank: each saves once and exits 130, and so does the
//!   launcher. SIGTERM, SIGHUP and SIGUSR1 are forwarded the same way.
//! - When a rank fails, the others are sent SIGTERM (they save and stop), and the launcher exits
//!   with the status of the first rank that failed, naming it.
//! - If the launcher itself is killed, the kernel sends every rank SIGTERM (PR_SET_PDEATHSIG).

use crate::dist::world::DEFAULT_MASTER_PORT;
use crate::signals;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

#[derive(clap::Args, Clone, Debug)]
pub struct LaunchArgs {
    /// Processes to start on this node: one per GPU.
    #[arg(long, alias = "nproc_per_node", value_parser = crate::train::bounds::whole_number, allow_negative_numbers = true)]
    pub nproc_per_node: usize,
    /// Nodes in the job (each runs its own `prefer launch` with its --node-rank).
    #[arg(long, default_value_t = 1, value_parser = crate::train::bounds::whole_number, allow_negative_numbers = true)]
    pub nnodes: usize,
    /// This node's index, 0 to --nnodes − 1; node 0 holds rank 0.
    #[arg(long, alias = "node_rank", default_value_t = 0)]
    pub node_rank: usize,
    /// Rank 0's host, where the others meet it (required with several nodes).
    #[arg(long, alias = "master_addr")]
    pub master_addr: Option<String>,
    /// Rank 0's TCP port for the rendezvous.
    #[arg(long, alias = "master_port", default_value_t = DEFAULT_MASTER_PORT)]
    pub master_port: u16,
    /// The prefer command every rank runs, after `--`: `prefer launch --nproc-per-node 4 -- dpo ...`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// One started rank.
struct Rank {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
}

/// The exit code a finished process reports to a shell: its code, or 128 + the signal that
/// killed it.
fn shell_status(status: &ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(signals::exit_status))
        .unwrap_or(1)
}

fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "an unknown status".into(),
    }
}

/// The CPU thread counts each rank gets, as torchrun sets OMP_NUM_THREADS: the node's cores
/// shared among its ranks, for every pool a rank runs (rayon, matrixmultiply, the software GPU's
/// workers), unless the user set one. Ranks that each take every core thrash a small machine.
fn cpu_threads_per_rank(n: usize) -> Vec<(String, String)> {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let each = (cores / n.max(1)).max(1);
    let vars = [
        "OMP_NUM_THREADS",
        "RAYON_NUM_THREADS",
        "MATMUL_NUM_THREADS",
        "PREFER_EMU_THREADS",
    ];
    let set: Vec<(String, String)> = vars
        .iter()
        .filter(|v| std::env::var_os(v).is_none())
        .map(|v| (v.to_string(), each.to_string()))
        .collect();
    if n > 1 && !set.is_empty() {
        eprintln!(
            "prefer launch: {each} CPU thread{} per rank ({cores} cores over {n} ranks; set {} to change)",
            if each == 1 { "" } else { "s" },
            set.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    set
}

/// Copies `from` to `to` line by line, each line prefixed (partial last lines too).
fn prefix_lines(from: impl Read, prefix: String, mut to: impl Write) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let mut out = prefix.clone().into_bytes();
                out.extend_from_slice(&line);
                if !line.ends_with(b"\n") {
                    out.push(b'\n');
                }
                let _ = to.write_all(&out);
                let _ = to.flush();
            }
        }
    }
}

/// Starts the ranks, forwards signals, and returns the exit code `prefer launch` exits with.
pub fn run_launch(args: &LaunchArgs) -> Result<i32> {
    let n = args.nproc_per_node;
    if !(1..=1024).contains(&n) {
        bail!("--nproc-per-node {n}: 1 to 1024 processes (one per GPU)");
    }
    if !(1..=65_536).contains(&args.nnodes) || args.nnodes * n > 65_536 {
        bail!(
            "--nnodes {} × --nproc-per-node {n}: at most 65536 ranks",
            args.nnodes
        );
    }
    if args.node_rank >= args.nnodes {
        bail!(
            "--node-rank {} is not below --nnodes {}",
            args.node_rank,
            args.nnodes
        );
    }
    if args.master_port == 0 {
        bail!("--master-port 0: choose a free TCP port (torchrun's default is 29500)");
    }
    let master_addr = match (&args.master_addr, args.nnodes) {
        (Some(a), _) => a.clone(),
        (None, 1) => "127.0.0.1".to_string(),
        (None, _) => bail!(
            "--nnodes {}: give --master-addr, node 0's host, on every node",
            args.nnodes
        ),
    };
    if args.command.first().map(String::as_str) == Some("launch") {
        bail!("prefer launch -- launch ...: the ranks run a prefer command, not another launcher");
    }
    let exe =
        std::env::current_exe().context("finding the prefer executable to start the ranks")?;
    let world = args.nnodes * n;
    eprintln!(
        "prefer launch: {n} rank{} on this node (ranks {} to {} of {world}), rank 0 at {master_addr}:{}: prefer {}",
        if n == 1 { "" } else { "s" },
        args.node_rank * n,
        args.node_rank * n + n - 1,
        args.master_port,
        args.command.join(" ")
    );
    let threads = cpu_threads_per_rank(n);
    signals::install();
    let mut ranks: Vec<Rank> = Vec::with_capacity(n);
    let mut copiers = Vec::new();
    for local in 0..n {
        let rank = args.node_rank * n + local;
        let mut cmd = Command::new(&exe);
        cmd.args(&args.command)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("GROUP_RANK", args.node_rank.to_string())
            .env("MASTER_ADDR", &master_addr)
            .env("MASTER_PORT", args.master_port.to_string())
            .envs(threads.iter().cloned())
            // Its own process group: the terminal's Ctrl-C reaches the launcher only, which
            // forwards it once (a second signal would make a rank exit without saving).
            .process_group(0);
        // SAFETY: prctl(2) only, between fork and exec. If the launcher dies (kill -9), the
        // kernel sends each rank SIGTERM, so no rank outlives it unseen.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        if local > 0 {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                send(&ranks, libc::SIGTERM);
                return Err(e).with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        };
        if let Some(out) = child.stdout.take() {
            let prefix = format!("[rank {rank}] ");
            copiers.push(std::thread::spawn(move || {
                prefix_lines(out, prefix, std::io::stdout())
            }));
        }
        if let Some(err) = child.stderr.take() {
            let prefix = format!("[rank {rank}] ");
            copiers.push(std::thread::spawn(move || {
                prefix_lines(err, prefix, std::io::stderr())
            }));
        }
        ranks.push(Rank {
            rank,
            child,
            status: None,
        });
    }

    let mut forwarded: Option<i32> = None;
    let mut first_failure: Option<(usize, ExitStatus)> = None;
    loop {
        if forwarded.is_none() {
            if let Some(sig) = signals::received() {
                eprintln!(
                    "prefer launch: {}: forwarding it to every rank (each saves, then stops)",
                    signals::name(sig)
                );
                send(&ranks, sig);
                forwarded = Some(sig);
            }
        }
        for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
            if let Some(status) = r.child.try_wait().context("waiting for a rank")? {
                r.status = Some(status);
                if !status.success() && first_failure.is_none() && forwarded.is_none() {
                    eprintln!(
                        "prefer launch: rank {} failed first ({}); stopping the others with SIGTERM",
                        r.rank,
                        describe(&status)
                    );
                    first_failure = Some((r.rank, status));
                }
            }
        }
        if first_failure.is_some() && forwarded.is_none() {
            send(&ranks, libc::SIGTERM);
            forwarded = Some(libc::SIGTERM);
        }
        if ranks.iter().all(|r| r.status.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in copiers {
        let _ = c.join();
    }
    if let Some((rank, status)) = first_failure {
        eprintln!(
            "error: rank {rank} of {world} failed first ({}); prefer launch exits with its status",
            describe(&status)
        );
        return Ok(shell_status(&status));
    }
    if let Some(sig) = forwarded {
        return Ok(signals::exit_status(sig));
    }
    Ok(0)
}

/// Sends `sig` to every rank still running.
fn send(ranks: &[Rank], sig: i32) {
    for r in ranks.iter().filter(|r| r.status.is_none()) {
        // SAFETY: kill(2) on a child we started and have not reaped: its pid is still ours.
        unsafe { libc::kill(r.child.id() as i32, sig) };
    }
}
