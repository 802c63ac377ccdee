//! The signals a user or a scheduler sends to stop a job: SIGINT (Ctrl-C), SIGTERM (Slurm,
//! Kubernetes and systemd before they kill), SIGHUP (a closed terminal) and SIGUSR1 (Slurm's
//! `--signal=USR1@120` warning). Each one asks the running command to stop at its next safe
//! point: trainers save a checkpoint first, `generate`, `logprobs` and `eval-rm` leave their
//! output as it was. A second signal exits at once. The exit status is 128 + the signal's number,
//! as shells report a process killed by it.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

/// The signals that ask for a clean stop.
pub const STOP_SIGNALS: [i32; 4] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGUSR1,
];

/// The first stop signal received since [`install`], or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Routes every stop signal to the flag [`received`] reads. Idempotent; each call clears a signal
/// an earlier command of the same process (the demo's stages) already handled.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in STOP_SIGNALS {
            // SAFETY: the handler only touches an atomic and calls `_exit`, both async-signal-safe.
            let registered = unsafe {
                signal_hook::low_level::register(sig, move || {
                    if RECEIVED.swap(sig, Ordering::SeqCst) != 0 {
                        // The second signal: the user wants out now.
                        signal_hook::low_level::exit(128 + sig);
                    }
                })
            };
            if let Err(e) = registered {
                eprintln!("warning: cannot handle {}: {e}", name(sig));
            }
        }
    });
    RECEIVED.store(0, Ordering::SeqCst);
}

/// The stop signal received since [`install`], if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// The exit status of a command a signal stopped: 128 + its number (130 for SIGINT).
pub fn exit_status(sig: i32) -> i32 {
    128 + sig
}

/// The signal's name as `kill -l` and Slurm write it.
pub fn name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        signal_hook::consts::SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

/// How a run that stopped early says why: "interrupted by SIGTERM", or "stopped" (--stop-after).
pub fn stop_reason(signal: Option<i32>) -> String {
    match signal {
        Some(sig) => format!("interrupted by {}", name(sig)),
        None => "stopped".to_string(),
    }
}

/// The error a command returns when a signal stopped it before it finished; `main` prints it and
/// exits with [`exit_status`].
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    /// What was (or was not) left behind, for the message.
    pub what: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by {}: {}", name(self.signal), self.what)
    }
}

impl std::error::Error for Interrupted {}

/// Fails with [`Interrupted`] when a stop signal has arrived; `what` says what the command leaves.
pub fn check(what: impl FnOnce() -> String) -> anyhow::Result<()> {
    match received() {
        Some(signal) => Err(Interrupted {
            signal,
            what: what(),
        }
        .into()),
        None => Ok(()),
    }
}
