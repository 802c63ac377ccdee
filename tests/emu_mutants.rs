//! Planted bugs: each mutant is one textual change to a copy of kernels/, rebuilt into a stand-in
//! driver by OUT_DIR's emu_rebuild.sh (build.rs; only the changed kernel file recompiles), loaded
//! with PREFER_EMU_LIBRARY, and `prefer check --device emu --op ...` must fail on it, for the
//! reason named. A mutant whose search text no longer occurs exactly once fails the test, so the
//! list cannot rot silently when the kernels change.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

struct Mutant {
    name: &'static str,
    /// The file changed, in kernels/.
    file: &'static str,
    /// The kernels/*.cu (without .cu) recompiled: `file` itself, or one that includes it.
    rebuild: &'static str,
    /// `prefer check --op`.
    op: &'static str,
    from: &'static str,
    to: &'static str,
    /// What the check's output must say: the reason it failed.
    expect: &'static str,
    /// Whether the rebuild runs common.cuh's CUDA block reductions as written
    /// (PREFER_EMU_FAITHFUL_BLOCK_REDUCE) rather than as the software GPU's one-barrier twin.
    faithful: bool,
}

const FAITHFUL: &str = "-DPREFER_EMU_FAITHFUL_BLOCK_REDUCE";

const RACE_ON_TILES: &str = "shared-memory race on __shared__ fa_smem";
const IN_FLIGHT: &str = "cp.async to it is still in flight";

const MUTANTS: &[Mutant] = &[
    Mutant {
        name: "missing barrier between block_sum's scratch write and read",
        file: "common.cuh",
        rebuild: "rmsnorm",
        op: "rmsnorm",
        from: "    if (lane == 0) scratch[warp] = v;\n    __syncthreads();\n    v = lane < warps ? scratch[lane] : 0.0f;",
        to: "    if (lane == 0) scratch[warp] = v;\n    v = lane < warps ? scratch[lane] : 0.0f;",
        expect: "shared-memory race on __shared__",
        faithful: true,
    },
    Mutant {
        name: "missing cp_async_wait in the flash forward's tile loop",
        file: "flash_attention.cu",
        rebuild: "flash_attention",
        op: "attention",
        from: "cp_async_wait<0>();\n        __syncthreads();  // tile `tile` is here",
        to: "__syncthreads();  // tile `tile` is here",
        expect: IN_FLIGHT,
        faithful: false,
    },
    Mutant {
        name: "missing cp_async_wait in the flash dq backward's tile loop",
        file: "flash_attention.cu",
        rebuild: "flash_attention",
        op: "attention",
        from: "cp_async_wait<0>();\n        __syncthreads();\n        if (tile + 1 < tiles) {\n            load_kv(",
        to: "__syncthreads();\n        if (tile + 1 < tiles) {\n            load_kv(",
        expect: IN_FLIGHT,
        faithful: false,
    },
    Mutant {
        name: "missing cp_async_wait in the flash dk/dv backward's tile loop",
        file: "flash_attention.cu",
        rebuild: "flash_attention",
        op: "attention",
        from: "cp_async_wait<0>();\n        __syncthreads();\n        if (tile + 1 < tiles) {\n            load_q(",
        to: "__syncthreads();\n        if (tile + 1 < tiles) {\n            load_q(",
        expect: IN_FLIGHT,
        faithful: false,
    },
    Mutant {
        name: "cp_async_wait<1> where the tile just committed is the one used",
        file: "flash_attention.cu",
        rebuild: "flash_attention",
        op: "attention",
        from: "cp_async_wait<0>();\n        __syncthreads();  // tile `tile` is here",
        to: "cp_async_wait<1>();\n        __syncthreads();  // tile `tile` is here",
        expect: IN_FLIGHT,
        faithful: false,
    },
    Mutant {
        name: "barrier before the wait: other threads read tiles this thread just landed",
        file: "flash_attention.cu",
        rebuild: "flash_attention",
        op: "attention",
        from: "cp_async_wait<0>();\n        __syncthreads();  // tile `tile` is here, and every warp is done with the other buffer\n",
        to: "__syncthreads();  // tile `tile` is here, and every warp is done with the other buffer\n        cp_async_wait<0>();\n",
        expect: RACE_ON_TILES,
        faithful: false,
    },
    Mutant {
        name: "off-by-one causal mask in the flash forward (a query misses itself)",
        file: "flash_attention.cu",
        rebuild: "flash_attention",
        op: "attention",
        from: "const bool valid = j <= t && kmask[buf * BN + jj];",
        to: "const bool valid = j < t && kmask[buf * BN + jj];",
        expect: "FAIL",
        faithful: false,
    },
    Mutant {
        name: "wrong GQA head map (query heads interleaved across KV heads)",
        file: "flash_attention.cu",
        rebuild: "flash_attention",
        op: "attention",
        from: "h = kvh * s.group + R % s.group;\n    return (((size_t)b * s.T + t) * s.H + h) * HD;",
        to: "h = kvh + (R % s.group) * s.Hkv;\n    return (((size_t)b * s.T + t) * s.H + h) * HD;",
        expect: "FAIL",
        faithful: false,
    },
    Mutant {
        name: "halved gradient: swiglu's dup",
        file: "swiglu.cu",
        rebuild: "swiglu",
        op: "swiglu",
        from: "dup[i] = __float2bfloat16(d * g * s);",
        to: "dup[i] = __float2bfloat16(0.5f * d * g * s);",
        expect: "FAIL",
        faithful: false,
    },
    Mutant {
        // On the software GPU the butterfly runs as one collective (kernels/common.cuh), with
        // the kernel's own offsets: a wrong one must still fail.
        name: "a warp sum that leaves out the lanes 16 apart",
        file: "common.cuh",
        rebuild: "rmsnorm",
        op: "rmsnorm",
        from: "return xor_butterfly(v, WARP_SIZE / 2, 1, BUTTERFLY_ADD); }",
        to: "return xor_butterfly(v, WARP_SIZE / 4, 1, BUTTERFLY_ADD); }",
        expect: "FAIL",
        faithful: true,
    },
    Mutant {
        name: "rmsnorm's mean square over d - 1",
        file: "rmsnorm.cu",
        rebuild: "rmsnorm",
        op: "rmsnorm",
        from: "rsqrtf(block_sum(ss, scratch) / d + eps)",
        to: "rsqrtf(block_sum(ss, scratch) / (d - 1) + eps)",
        expect: "FAIL",
        faithful: false,
    },
];

fn out_dir() -> PathBuf {
    PathBuf::from(env!("OUT_DIR"))
}

/// Whether this build has the software GPU; panics without it when CI requires it.
fn emu_built() -> bool {
    let error = std::fs::read_to_string(out_dir().join("emu_build_error.txt")).unwrap_or_default();
    let built = error.is_empty() && out_dir().join("emu_rebuild.sh").is_file();
    if !built && std::env::var("PREFER_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
        panic!("PREFER_REQUIRE_CUDA=1 but the software GPU was not built: {error}");
    }
    if !built {
        eprintln!("SKIPPED: no software GPU: {error}");
    }
    built
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// kernels/ copied to `dir`, with `from` replaced by `to` in `file` (which must hold it once).
fn plant(dir: &Path, file: &str, from: &str, to: &str) -> Result<(), String> {
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels"), dir);
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{file}: {e}"))?;
    let n = text.matches(from).count();
    if n != 1 {
        return Err(format!(
            "{file} holds the search text {n} times, not once: {from:?}"
        ));
    }
    std::fs::write(&path, text.replacen(from, to, 1)).map_err(|e| e.to_string())
}

/// Rebuilds the stand-in driver from `dir` and runs the check on it: (passed, output).
fn rebuild_and_check(
    dir: &Path,
    rebuild: &str,
    op: &str,
    faithful: bool,
) -> Result<(bool, String), String> {
    let lib = dir.join("libcuda.so");
    let built = Command::new("sh")
        .arg(out_dir().join("emu_rebuild.sh"))
        .arg(dir)
        .arg(rebuild)
        .arg(&lib)
        .env("PREFER_EMU_CXXFLAGS", if faithful { FAITHFUL } else { "" })
        .output()
        .map_err(|e| e.to_string())?;
    if !built.status.success() {
        return Err(format!(
            "emu_rebuild.sh {rebuild} failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    let run = Command::new(env!("CARGO_BIN_EXE_prefer"))
        .args(["check", "--device", "emu", "--op", op])
        .env("PREFER_EMU_LIBRARY", &lib)
        .env("PREFER_EMU_SEED", "1")
        .output()
        .map_err(|e| e.to_string())?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    Ok((run.status.success(), output))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("prefer-mutant-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The acceptance of the software-GPU issue: removing any one `cp_async_wait` in
/// kernels/flash_attention.cu must fail the check. So every wait there is removed by a mutant
/// above; a wait added to the kernel without one fails this test (no build needed).
#[test]
fn every_cp_async_wait_in_flash_attention_is_removed_by_a_mutant() {
    let text = include_str!("../kernels/flash_attention.cu");
    let waits: Vec<usize> = text
        .match_indices("cp_async_wait<")
        .map(|(at, _)| at)
        .collect();
    assert!(!waits.is_empty(), "flash_attention.cu has no cp_async_wait");
    let removed: Vec<std::ops::Range<usize>> = MUTANTS
        .iter()
        .filter(|m| {
            m.file == "flash_attention.cu"
                && m.to.matches("cp_async_wait<").count() < m.from.matches("cp_async_wait<").count()
        })
        .filter_map(|m| text.find(m.from).map(|at| at..at + m.from.len()))
        .collect();
    for at in waits {
        let line = text[..at].lines().count();
        assert!(
            removed.iter().any(|r| r.contains(&at)),
            "kernels/flash_attention.cu:{line}: no mutant removes this cp_async_wait"
        );
    }
}

#[test]
fn the_unchanged_kernels_rebuilt_the_same_way_pass() {
    if !emu_built() {
        return;
    }
    let dir = scratch("control");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels"), &dir);
    let (passed, output) = rebuild_and_check(&dir, "swiglu", "swiglu", false).unwrap();
    assert!(passed, "the control failed:\n{output}");
    assert!(output.contains("9 checks, 0 failed"), "{output}");
    // common.cuh's block reductions as written pass too, with the same bits as the software
    // GPU's one-barrier twin: every row of rmsnorm's check (errors to three digits) the same.
    let (passed, faithful) = rebuild_and_check(&dir, "rmsnorm", "rmsnorm", true).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(passed, "the faithful control failed:\n{faithful}");
    let twin = Command::new(env!("CARGO_BIN_EXE_prefer"))
        .args(["check", "--device", "emu", "--op", "rmsnorm"])
        .env("PREFER_EMU_SEED", "1")
        .output()
        .unwrap();
    assert!(twin.status.success());
    // The rows without their last column (the time).
    let rows = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("rmsnorm"))
            .map(|l| {
                let mut cols: Vec<&str> = l.split_whitespace().collect();
                cols.pop();
                cols.join(" ")
            })
            .collect()
    };
    let twin = String::from_utf8_lossy(&twin.stdout).into_owned();
    assert!(!rows(&twin).is_empty(), "{twin}");
    assert_eq!(
        rows(&faithful),
        rows(&twin),
        "faithful:\n{faithful}\ntwin:\n{twin}"
    );
}

#[test]
fn every_planted_kernel_bug_fails_prefer_check() {
    if !emu_built() {
        return;
    }
    let start = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let survivors = std::sync::Mutex::new(Vec::new());
    // Two at a time: one mutant compiles while another runs its check.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(m) = MUTANTS.get(i) else { return };
                let t = Instant::now();
                let dir = scratch(&i.to_string());
                let outcome = plant(&dir, m.file, m.from, m.to)
                    .and_then(|()| rebuild_and_check(&dir, m.rebuild, m.op, m.faithful));
                let _ = std::fs::remove_dir_all(&dir);
                let verdict = match outcome {
                    Err(e) => Err(e),
                    Ok((true, out)) => Err(format!("the check passed:\n{out}")),
                    Ok((false, out)) if !out.contains(m.expect) => Err(format!(
                        "the check failed, but without {:?}:\n{out}",
                        m.expect
                    )),
                    Ok((false, _)) => Ok(()),
                };
                println!(
                    "mutant {:<72} {} in {:.1} s",
                    m.name,
                    if verdict.is_ok() {
                        "caught"
                    } else {
                        "SURVIVED"
                    },
                    t.elapsed().as_secs_f64()
                );
                if let Err(why) = verdict {
                    survivors.lock().unwrap().push(format!("{}: {why}", m.name));
                }
            });
        }
    });
    println!(
        "{} mutants in {:.1} s",
        MUTANTS.len(),
        start.elapsed().as_secs_f64()
    );
    let survivors = survivors.into_inner().unwrap();
    assert!(survivors.is_empty(), "{}", survivors.join("\n\n"));
}
