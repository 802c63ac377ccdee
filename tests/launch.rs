//! `prefer launch` and the launcher variables, as a user meets them: the ranks' environment, the
//! prefixed output, a failing rank, a forwarded Ctrl-C, and commands that refuse several ranks
//! until they are data parallel. No torchrun needed: the variables are set by hand.

use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, prefer_alone as prefer};

#[test]
fn launch_starts_each_rank_with_torchruns_variables_and_prefixes_the_others_lines() {
    let out = prefer()
        .args([
            "launch",
            "--nproc-per-node",
            "3",
            "--master-port",
            "29617",
            "--",
            "info",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |rank: usize| {
        format!("processes: rank {rank} of 3 (local {rank} of 3, from torchrun's variables), rank 0 at 127.0.0.1:29617")
    };
    // Rank 0 writes to the terminal as a plain run would; the others' lines carry their rank.
    assert!(text.lines().any(|l| l == line(0)), "{text}");
    for rank in [1, 2] {
        let want = format!("[rank {rank}] {}", line(rank));
        assert!(text.lines().any(|l| l == want), "{text}");
    }
}

#[test]
fn the_first_failing_rank_is_named_and_its_status_is_the_launchers() {
    // Both ranks refuse (dpo without --model): the launcher exits 1, naming a rank.
    let out = prefer()
        .args(["launch", "--nproc-per-node", "2", "--", "dpo"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("failed first (exit status 1)"), "{err}");
    assert!(err.contains("--model is required"), "{err}");
}

#[test]
fn commands_that_are_not_data_parallel_yet_refuse_several_ranks_by_hand() {
    let out = prefer()
        .args(["generate", "--model", "x", "--prompts", "y", "--out", "z"])
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .env("LOCAL_RANK", "1")
        .env("LOCAL_WORLD_SIZE", "2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("rank 1 of 2 (local 1 of 2, from torchrun's variables)"),
        "{err}"
    );
    // A bad variable is named, not ignored.
    let out = prefer()
        .args(["info"])
        .env("RANK", "2")
        .env("WORLD_SIZE", "2")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RANK=2 is not below WORLD_SIZE=2"), "{text}");
    // One rank through the launcher is a plain run.
    let out = prefer()
        .args([
            "launch",
            "--nproc-per-node",
            "1",
            "--",
            "info",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("processes: one process"),
        "{text}"
    );
}

#[test]
fn bad_launch_options_are_refused_before_any_rank_starts() {
    for (args, want) in [
        (vec!["--nproc-per-node", "0"], "--nproc-per-node 0"),
        (
            vec!["--nproc-per-node", "2", "--nnodes", "2"],
            "give --master-addr",
        ),
        (
            vec![
                "--nproc-per-node",
                "2",
                "--nnodes",
                "2",
                "--node-rank",
                "2",
                "--master-addr",
                "h",
            ],
            "--node-rank 2 is not below --nnodes 2",
        ),
    ] {
        let out = prefer()
            .arg("launch")
            .args(&args)
            .args(["--", "info"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(!err.contains("[rank"), "{args:?}: a rank started: {err}");
    }
    let out = prefer()
        .args(["launch", "--nproc-per-node", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no command after --");
}

/// Ctrl-C reaches the launcher alone (the ranks have their own process group); it forwards it
/// once to every rank and exits 130 when they have stopped.
#[test]
fn ctrl_c_is_forwarded_once_to_every_rank_and_the_launcher_exits_130() {
    // Two ranks of a long command that stops at SIGINT: the software GPU's model check (when
    // this build has no software GPU, `check` fails at once, which the test reports).
    let mut child = prefer()
        .args([
            "launch",
            "--nproc-per-node",
            "2",
            "--",
            "check",
            "--device",
            "emu",
            "--op",
            "model",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    if let Ok(Some(status)) = child.try_wait() {
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("software GPU") && !prefer_requires_cuda() {
            eprintln!("SKIPPED: no software GPU in this build: {err}");
            return;
        }
        panic!("the ranks stopped before the signal ({status}): {err}");
    }
    let t0 = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("SIGINT: forwarding it to every rank"), "{err}");
    assert_eq!(err.matches("forwarding it").count(), 1, "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

fn prefer_requires_cuda() -> bool {
    std::env::var("PREFER_REQUIRE_CUDA").is_ok_and(|v| v == "1")
}

/// A data-parallel trainer under `prefer launch` (two ranks) stops on the launcher's Ctrl-C as
/// it would alone: every rank stops at the same step, rank 0 saves once and says
/// "interrupted by SIGINT", every rank and the launcher exit 130; the run resumes from its
/// checkpoint.
#[test]
fn a_trainer_under_launch_saves_once_on_ctrl_c_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let init = prefer()
        .args(["init", "--preset", "tiny", "--out"])
        .arg(root.join("base"))
        .output()
        .unwrap();
    assert!(init.status.success());
    std::fs::write(
        root.join("train.jsonl"),
        prefer::data::synthetic::synthetic_preferences(512, 4),
    )
    .unwrap();
    let run = root.join("run");
    let child = prefer()
        .args([
            "launch",
            "--nproc-per-node",
            "2",
            "--master-port",
            &free_port().to_string(),
            "--",
            "dpo",
            "--device",
            "cpu",
            "--model",
        ])
        .arg(root.join("base"))
        .arg("--data")
        .arg(root.join("train.jsonl"))
        .arg("--out")
        .arg(&run)
        .args(["--batch-size", "4", "--epochs", "3", "--log-every", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a few logged steps, then Ctrl-C the launcher alone.
    let t0 = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|m| m.lines().count() < 3)
        .unwrap_or(true)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the run logged nothing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert_eq!(
        err.matches("interrupted by SIGINT at step").count(),
        1,
        "{err}"
    );
    assert!(run.join("checkpoint/config.json").is_file(), "{err}");
    let resumed = prefer()
        .args(["dpo", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
}
