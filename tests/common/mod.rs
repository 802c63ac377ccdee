//! Helpers shared by the integration tests: seeded random data and finite-difference checks.
#![allow(dead_code)]

use rand::{rngs::StdRng, Rng, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Uniform values in [-scale, scale].
pub fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// A weighted sum Σ r_i·y_i in f64: a scalar loss whose gradient w.r.t. y is r.
pub fn weighted_sum(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Tolerances for central differences of f32 code.
///
/// With step h = 1e-2 the truncation error of a central difference is O(h²·f''') ≈ 1e-4 relative
/// for these smooth ops, and f32 rounding of a loss of size ~10 adds ~1e-6 / (2h) ≈ 5e-5 absolute.
/// So |fd − analytic| ≤ 2e-3 + 1e-2·|analytic| leaves a margin of 10× over both, while a wrong
/// gradient (a missing term, a wrong sign, a transposed index) is off by O(1) relative.
pub const STEP: f32 = 1e-2;
pub const ATOL: f64 = 2e-3;
pub const RTOL: f64 = 1e-2;

/// Compares `analytic` (dL/dx) with central differences of `loss` at up to `samples` coordinates
/// of `x` (all of them when x is small), and panics naming the worst one.
pub fn check_grad(
    what: &str,
    x: &mut [f32],
    analytic: &[f32],
    samples: usize,
    seed: u64,
    mut loss: impl FnMut(&[f32]) -> f64,
) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let mut r = rng(seed);
    let coords: Vec<usize> = if x.len() <= samples {
        (0..x.len()).collect()
    } else {
        (0..samples).map(|_| r.random_range(0..x.len())).collect()
    };
    for i in coords {
        let keep = x[i];
        x[i] = keep + STEP;
        let up = loss(x);
        x[i] = keep - STEP;
        let down = loss(x);
        x[i] = keep;
        let fd = (up - down) / (2.0 * STEP as f64);
        let an = analytic[i] as f64;
        assert!(
            (fd - an).abs() <= ATOL + RTOL * an.abs(),
            "{what}[{i}]: finite difference {fd:.6e} vs analytic {an:.6e}"
        );
    }
}

/// Directional check for a whole tensor: along u = (ĝ + a random unit vector)/‖·‖ the central
/// difference must equal ⟨g, u⟩. One evaluation pair covers every coordinate at once.
pub fn check_directional(
    what: &str,
    x: &mut [f32],
    analytic: &[f32],
    seed: u64,
    mut loss: impl FnMut(&[f32]) -> f64,
) {
    let mut r = rng(seed);
    let gnorm = analytic
        .iter()
        .map(|g| (*g as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let noise: Vec<f64> = (0..x.len()).map(|_| r.random_range(-1.0..1.0)).collect();
    let nnorm = noise.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut u: Vec<f64> = analytic
        .iter()
        .zip(&noise)
        .map(|(&g, &n)| if gnorm > 0.0 { g as f64 / gnorm } else { 0.0 } + n / nnorm)
        .collect();
    let unorm = u.iter().map(|v| v * v).sum::<f64>().sqrt();
    u.iter_mut().for_each(|v| *v /= unorm);
    let keep = x.to_vec();
    let shifted = |x: &mut [f32], s: f64| {
        for ((xi, &k), &ui) in x.iter_mut().zip(&keep).zip(&u) {
            *xi = (k as f64 + s * ui) as f32;
        }
    };
    let h = STEP as f64;
    shifted(x, h);
    let up = loss(x);
    shifted(x, -h);
    let down = loss(x);
    x.copy_from_slice(&keep);
    let fd = (up - down) / (2.0 * h);
    let an: f64 = analytic.iter().zip(&u).map(|(&g, &ui)| g as f64 * ui).sum();
    assert!(
        (fd - an).abs() <= ATOL + RTOL * an.abs(),
        "{what}: directional finite difference {fd:.6e} vs analytic {an:.6e} (‖g‖ = {gnorm:.3e})"
    );
}

/// Whether this build has the software GPU; if not, says why (and fails under
/// PREFER_REQUIRE_CUDA=1, where every kernel must have been built).
pub fn emu_available() -> bool {
    match prefer::emu::built() {
        Ok(()) => true,
        Err(why) if std::env::var("PREFER_REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
            panic!("PREFER_REQUIRE_CUDA=1 but {why:#}")
        }
        Err(why) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: {why:#}");
            false
        }
    }
}

/// Sends `signal` (`INT` for Ctrl-C, `TERM`, `HUP`, `USR1`) to `child` once `rows` (a
/// metrics.jsonl) has `n` lines, and returns its output; fails if that takes over two minutes.
pub fn signal_after_rows(
    child: std::process::Child,
    rows: &std::path::Path,
    n: usize,
    signal: &str,
) -> std::process::Output {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    while std::fs::read_to_string(rows).map_or(0, |m| m.lines().count()) < n {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "fewer than {n} rows in {} after 2 minutes",
            rows.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    child.wait_with_output().unwrap()
}

/// `prefer` with none of a launcher's variables (torchrun's, Slurm's, Open MPI's) leaking in from
/// the test's own environment: one process unless the test sets them.
pub fn prefer_alone() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_prefer"));
    for var in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
    ] {
        c.env_remove(var);
    }
    c
}

/// A TCP port on 127.0.0.1 that was free a moment ago (a rendezvous's MASTER_PORT).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Short preference pairs (a few bytes each, so a step on the software GPU is quick): kind
/// replies are chosen, rude ones rejected.
pub fn short_pairs(n: usize, seed: usize) -> String {
    let prompts = [
        "hi", "help?", "a map", "tea?", "hello", "why?", "more", "ok?",
    ];
    let kind = ["sure, glad to", "yes, happy to", "of course!", "gladly"];
    let rude = ["no. go away", "ugh, no", "not my job", "stop asking"];
    (0..n)
        .map(|i| {
            let j = i * 7 + seed;
            serde_json::json!({
                "prompt": prompts[j % prompts.len()],
                "chosen": kind[(j / 3) % kind.len()],
                "rejected": rude[(j / 5) % rude.len()],
            })
            .to_string()
                + "\n"
        })
        .collect()
}

/// `prefer ARGS` run alone (no launcher variables, no `PREFER_DEVICE`), its output collected.
pub fn prefer_output(args: &[&str]) -> std::process::Output {
    prefer_alone()
        .args(args)
        .env_remove("PREFER_DEVICE")
        .output()
        .expect("prefer runs")
}

/// A path as a command-line argument.
pub fn path_arg(p: &std::path::Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A command's stderr, as text.
pub fn stderr_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
