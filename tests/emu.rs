//! The software GPU's own tests: each built-in against a result computed here, each planted fault
//! caught by the check named, and cuBLASLt against a plain triple loop. The kernels are
//! emu/tests/selftest.cu; they run through cudarc and the stand-in driver like the engine's.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;
use prefer::ops::cuda::matmul::{Gemm, GemmShape};
use prefer::ops::cuda::CudaEngine;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Tests change the schedule seed and the race check, which are process-wide: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn engine() -> Option<(&'static CudaEngine, MutexGuard<'static, ()>)> {
    static ENGINE: OnceLock<Result<CudaEngine, String>> = OnceLock::new();
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let eng = ENGINE.get_or_init(|| {
        prefer::emu::activate()
            .and_then(|_| CudaEngine::new())
            .map_err(|e| format!("{e:#}"))
    });
    match eng {
        Ok(e) => {
            prefer::emu::set_schedule(1, true).unwrap();
            Some((e, guard))
        }
        Err(why) if std::env::var("PREFER_REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
            panic!("PREFER_REQUIRE_CUDA=1 but the software GPU is unusable: {why}")
        }
        Err(why) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: no software GPU: {why}");
            None
        }
    }
}

fn cfg(grid: u32, block: u32, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: shared,
    }
}

/// Launches `name` with one device buffer argument; the error text on failure.
fn launch1<T: cudarc::driver::DeviceRepr>(
    eng: &CudaEngine,
    name: &str,
    c: LaunchConfig,
    buf: &mut CudaSlice<T>,
) -> Result<(), String> {
    let f = eng.function(name).map_err(|e| format!("{e:#}"))?;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(buf);
    // SAFETY: every test kernel named this way takes one pointer of this type.
    finished(eng, unsafe { l.launch(c) }.map(|_| ()))
}

/// A launch's outcome as the GPU reports it: refused at the launch, or, since the engine's stream
/// runs its work asynchronously (later, under a nonzero schedule seed), failed at the next sync.
fn finished(
    eng: &CudaEngine,
    launched: Result<(), cudarc::driver::DriverError>,
) -> Result<(), String> {
    launched
        .and_then(|_| eng.stream.synchronize())
        .map_err(|e| format!("{e:?}"))
}

#[test]
fn barrier_orders_shared_memory() {
    let Some((eng, _g)) = engine() else { return };
    let (n, blocks) = (256usize, 3usize);
    let mut out = eng.zeros::<i32>(n * blocks).unwrap();
    launch1(
        eng,
        "emu_test_barrier",
        cfg(blocks as u32, n as u32, 0),
        &mut out,
    )
    .unwrap();
    let got = eng.download(&out).unwrap();
    for b in 0..blocks {
        for t in 0..n {
            assert_eq!(
                got[b * n + t],
                (((t + 1) % n) * 7 + b) as i32,
                "block {b} thread {t}"
            );
        }
    }
}

#[test]
fn a_missing_barrier_is_reported_as_a_race_naming_the_array() {
    let Some((eng, _g)) = engine() else { return };
    let mut out = eng.zeros::<i32>(256).unwrap();
    let err = launch1(eng, "emu_test_missing_barrier", cfg(1, 256, 0), &mut out).unwrap_err();
    assert!(err.contains("shared-memory race"), "{err}");
    assert!(err.contains("emu_test_missing_barrier::s"), "{err}");
    assert!(err.contains("kernel emu_test_missing_barrier"), "{err}");
}

#[test]
fn warp_synchronous_code_needs_syncwarp() {
    let Some((eng, _g)) = engine() else { return };
    let mut out = eng.zeros::<i32>(64).unwrap();
    let err = launch1(eng, "emu_test_missing_syncwarp", cfg(1, 64, 0), &mut out).unwrap_err();
    assert!(err.contains("shared-memory race"), "{err}");
    launch1(eng, "emu_test_syncwarp", cfg(1, 64, 0), &mut out).unwrap();
    assert!(eng.download(&out).unwrap().iter().all(|&v| v == 42));
}

/// The source lane of each shuffle, as the CUDA programming guide defines it for sub-warps.
fn expected_shuffles(n: usize, width: usize) -> Vec<i32> {
    let mut out = vec![0; 5 * n];
    for t in 0..n {
        let (warp, lane) = (t / 32, t % 32);
        let value = |src: usize| 1000 + (warp * 32 + src) as i32;
        let base = lane - lane % width;
        out[t] = value(base + (3 * lane + 1) % width);
        out[n + t] = value(if lane % width >= 3 { lane - 3 } else { lane });
        out[2 * n + t] = value(if lane % width + 5 < width {
            lane + 5
        } else {
            lane
        });
        let x = lane ^ 6;
        out[3 * n + t] = value(if x >= (lane / width + 1) * width {
            lane
        } else {
            x
        });
        let d = lane ^ 1;
        let d = if d >= (lane / width + 1) * width {
            lane
        } else {
            d
        };
        out[4 * n + t] = (2.0 * (0.5 + (warp * 32 + d) as f64)) as i32;
    }
    out
}

#[test]
fn shuffles_follow_cudas_lane_rules_at_every_width() {
    let Some((eng, _g)) = engine() else { return };
    let n = 64usize;
    for width in [32i32, 16, 8, 4, 2] {
        let mut out = eng.zeros::<i32>(5 * n).unwrap();
        let f = eng.function("emu_test_shuffles").unwrap();
        let mut l = eng.stream.launch_builder(&f);
        l.arg(&mut out).arg(&width);
        // SAFETY: (int*, int), as the kernel takes.
        unsafe { l.launch(cfg(1, n as u32, 0)) }.unwrap();
        assert_eq!(
            eng.download(&out).unwrap(),
            expected_shuffles(n, width as usize),
            "width {width}"
        );
    }
}

#[test]
fn votes_and_reductions_combine_the_whole_warp() {
    let Some((eng, _g)) = engine() else { return };
    let n = 96usize;
    let values: Vec<u32> = (0..n as u32)
        .map(|t| t.wrapping_mul(2_654_435_761u32) % 5000)
        .collect();
    let vals = eng.upload(&values).unwrap();
    let mut out = eng.zeros::<u32>(8 * 3).unwrap();
    let f = eng.function("emu_test_votes").unwrap();
    let mut l = eng.stream.launch_builder(&f);
    l.arg(&mut out).arg(&vals);
    // SAFETY: (unsigned*, const unsigned*), as the kernel takes.
    unsafe { l.launch(cfg(1, n as u32, 0)) }.unwrap();
    let got = eng.download(&out).unwrap();
    let evens = values.iter().filter(|v| *v % 2 == 0).count() as u32;
    for w in 0..3 {
        let v = &values[w * 32..w * 32 + 32];
        let ballot = v
            .iter()
            .enumerate()
            .fold(0u32, |b, (l, x)| b | (((x % 3 == 0) as u32) << l));
        let want = [
            ballot,
            v.iter().any(|&x| x > 1000) as u32,
            v.iter().all(|&x| x < 100_000) as u32,
            v.iter().fold(0u32, |a, &x| a.wrapping_add(x)),
            *v.iter().min().unwrap(),
            *v.iter().max().unwrap(),
            v.iter().fold(0, |a, &x| a ^ x),
            evens,
        ];
        for (k, w_k) in want.iter().enumerate() {
            assert_eq!(got[k * 3 + w], *w_k, "result {k} of warp {w}");
        }
    }
}

/// The same butterfly (v = op(v, v of lane ^ o) for each offset o) written out in plain Rust.
fn butterfly<T: Copy>(v: &[T], offsets: &[usize], op: impl Fn(T, T) -> T) -> Vec<T> {
    let mut v = v.to_vec();
    for &o in offsets {
        v = (0..v.len())
            .map(|l| op(v[l], v[(l / 32) * 32 + ((l % 32) ^ o)]))
            .collect();
    }
    v
}

/// Runs a selftest kernel `(float* out, double* out64, const float* in)` that compares CUDA code
/// with its software-GPU twin, on one block of `n` threads: the inputs (mixed signs and sizes, so
/// that another order of adds would change the bits), `out` (`f32_rows` × n) and `out64` (2 × n).
fn twin_kernel(
    eng: &CudaEngine,
    name: &str,
    n: usize,
    f32_rows: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f64>) {
    let values: Vec<f32> = (0..n)
        .map(|t| ((t * 7919) % 1000) as f32 * if t % 3 == 0 { -1.37e-3 } else { 2.9 })
        .collect();
    let vals = eng.upload(&values).unwrap();
    let mut out = eng.zeros::<f32>(f32_rows * n).unwrap();
    let mut out64 = eng.zeros::<f64>(2 * n).unwrap();
    let f = eng.function(name).unwrap();
    let mut l = eng.stream.launch_builder(&f);
    l.arg(&mut out).arg(&mut out64).arg(&vals);
    // SAFETY: (float*, double*, const float*), as the selftest kernels take.
    unsafe { l.launch(cfg(1, n as u32, 0)) }.unwrap();
    (
        values,
        eng.download(&out).unwrap(),
        eng.download(&out64).unwrap(),
    )
}

#[test]
fn a_butterfly_twin_gives_the_shuffles_bits() {
    let Some((eng, _g)) = engine() else { return };
    let n = 64usize;
    let (values, got, got64) = twin_kernel(eng, "emu_test_butterfly", n, 8);
    let halving = [16, 8, 4, 2, 1];
    let want = [
        butterfly(&values, &halving, |a, b| a + b),
        butterfly(&values, &halving, f32::max),
        butterfly(&values, &[1, 2], |a, b| a + b),
    ];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (k, w) in want.iter().enumerate() {
        assert_eq!(
            bits(&got[k * n..(k + 1) * n]),
            bits(w),
            "shuffles, shape {k}"
        );
        assert_eq!(
            bits(&got[(k + 4) * n..(k + 5) * n]),
            bits(w),
            "twin, shape {k}"
        );
    }
    let d: Vec<f64> = values.iter().map(|&v| v as f64 * 1e-3).collect();
    let want64 = butterfly(&d, &halving, |a, b| a + b);
    assert_eq!(got64[..n], want64[..], "f64 shuffles");
    assert_eq!(got64[n..], want64[..], "f64 twin");
}

#[test]
fn a_block_reduction_twin_gives_the_cuda_codes_bits() {
    let Some((eng, _g)) = engine() else { return };
    for n in [32usize, 96, 256, 1024] {
        let (values, got, got64) = twin_kernel(eng, "emu_test_block_reduce", n, 4);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for k in 0..2 {
            let cuda = &got[k * n..(k + 1) * n];
            assert!(cuda.iter().all(|x| x.to_bits() == cuda[0].to_bits()));
            assert_eq!(
                bits(cuda),
                bits(&got[(k + 2) * n..(k + 3) * n]),
                "n {n}, op {k}"
            );
        }
        assert_eq!(got64[..n], got64[n..], "n {n}, f64");
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        assert!(
            (got[0] as f64 - sum).abs() < 1e-3 * sum.abs().max(1.0),
            "n {n}"
        );
        assert_eq!(got[n], values.iter().cloned().fold(f32::MIN, f32::max));
    }
    // A thread that exits before the reduction: reported, as the CUDA butterflies would hang.
    let mut out = eng.zeros::<f32>(64).unwrap();
    let e = launch1(eng, "emu_test_block_reduce_exited", cfg(1, 64, 0), &mut out).unwrap_err();
    assert!(
        e.contains("thread 0 exited while the others wait in a block reduction"),
        "{e}"
    );
}

#[test]
fn atomics_are_atomic_across_blocks_on_several_threads() {
    let Some((eng, _g)) = engine() else { return };
    let (blocks, threads) = (40u32, 256u32);
    let total = blocks * threads;
    let mut fsum = eng.zeros::<f32>(1).unwrap();
    let mut isum = eng.zeros::<i32>(1).unwrap();
    let mut umax = eng.zeros::<u32>(1).unwrap();
    let mut winner = eng.upload(&[u32::MAX]).unwrap();
    let f = eng.function("emu_test_atomics").unwrap();
    let mut l = eng.stream.launch_builder(&f);
    l.arg(&mut fsum)
        .arg(&mut isum)
        .arg(&mut umax)
        .arg(&mut winner);
    // SAFETY: (float*, int*, unsigned*, unsigned*), as the kernel takes.
    unsafe { l.launch(cfg(blocks, threads, 0)) }.unwrap();
    assert_eq!(eng.download(&fsum).unwrap()[0], 0.5 * total as f32);
    assert_eq!(
        eng.download(&isum).unwrap()[0] as i64,
        (total as i64) * (total as i64 - 1) / 2
    );
    assert_eq!(eng.download(&umax).unwrap()[0], 3 * (total - 1));
    assert!(eng.download(&winner).unwrap()[0] < total);
}

#[test]
fn dynamic_shared_memory_is_shared_and_bounded() {
    let Some((eng, _g)) = engine() else { return };
    let n = 128usize;
    let mut out = eng.zeros::<f32>(n).unwrap();
    launch1(
        eng,
        "emu_test_dynamic_shared",
        cfg(2, n as u32, (2 * n * 4) as u32),
        &mut out,
    )
    .unwrap();
    let got = eng.download(&out).unwrap();
    for (t, g) in got.iter().enumerate() {
        let r = (n - 1 - t) as f32;
        assert_eq!(*g, 0.25 * r - r, "thread {t}");
    }
    // Over the 48 KB default without cuFuncSetAttribute: refused, as the GPU refuses it.
    let err = launch1(
        eng,
        "emu_test_dynamic_shared",
        cfg(1, 32, 64 * 1024),
        &mut out,
    )
    .unwrap_err();
    assert!(
        err.contains("65536 bytes of dynamic shared memory"),
        "{err}"
    );
    // Reading past what the launch asked for.
    let f = eng.function("emu_test_dynamic_overrun").unwrap();
    let mut l = eng.stream.launch_builder(&f);
    let count = 64i32;
    l.arg(&mut out).arg(&count);
    // SAFETY: (float*, int), as the kernel takes.
    let err = finished(eng, unsafe { l.launch(cfg(1, 64, 64 * 4)) }.map(|_| ())).unwrap_err();
    assert!(
        err.contains("past the 256 bytes the launch asked for"),
        "{err}"
    );
}

#[test]
fn bf16_and_f16_conversions_match_the_half_crate_bit_for_bit() {
    let Some((eng, _g)) = engine() else { return };
    // Every bf16 value, the midpoint above each (ties round to even), a value just past each
    // midpoint, and edge cases for f16.
    let mut inputs: Vec<f32> = Vec::new();
    for bits in 0..=u16::MAX {
        let x = f32::from_bits((bits as u32) << 16);
        inputs.push(x);
        inputs.push(f32::from_bits(((bits as u32) << 16) | 0x8000));
        inputs.push(f32::from_bits(((bits as u32) << 16) | 0x8001));
    }
    inputs.extend([
        65504.0, 65519.0, 65520.0, 65536.0, 6.0e-8, 3.0e-8, 2.98e-8, 6.1e-5, -0.0,
    ]);
    let n = inputs.len();
    let input = eng.upload(&inputs).unwrap();
    let mut rounded = eng.zeros::<u16>(n).unwrap();
    let mut widened = eng.zeros::<u32>(65536).unwrap();
    let mut halves = eng.zeros::<u16>(n).unwrap();
    let f = eng.function("emu_test_conversions").unwrap();
    let mut l = eng.stream.launch_builder(&f);
    let n_i = n as i32;
    l.arg(&mut rounded)
        .arg(&mut widened)
        .arg(&mut halves)
        .arg(&input)
        .arg(&n_i);
    // SAFETY: matches the kernel's signature; every buffer holds n (or 65536) values.
    unsafe { l.launch(LaunchConfig::for_num_elems(n as u32)) }.unwrap();
    let (rounded, widened, halves) = (
        eng.download(&rounded).unwrap(),
        eng.download(&widened).unwrap(),
        eng.download(&halves).unwrap(),
    );
    for (i, &x) in inputs.iter().enumerate() {
        let want = bf16::from_f32(x);
        if x.is_nan() {
            assert!(
                bf16::from_bits(rounded[i]).is_nan(),
                "bf16 of NaN {:#x}",
                x.to_bits()
            );
            assert!(half::f16::from_bits(halves[i]).is_nan());
            continue;
        }
        assert_eq!(
            rounded[i],
            want.to_bits(),
            "bf16 of {x:e} ({:#x})",
            x.to_bits()
        );
        assert_eq!(
            halves[i],
            half::f16::from_f32(x).to_bits(),
            "f16 of {x:e} ({:#x})",
            x.to_bits()
        );
    }
    for (bits, &w) in widened.iter().enumerate() {
        let want = bf16::from_bits(bits as u16).to_f32();
        if want.is_nan() {
            assert!(f32::from_bits(w).is_nan());
        } else {
            assert_eq!(w, want.to_bits(), "bf16 bits {bits:#x}");
        }
    }
}

#[test]
fn a_write_past_the_end_is_caught_by_the_guard_fill() {
    let Some((eng, _g)) = engine() else { return };
    let mut buf = eng.zeros::<f32>(100).unwrap();
    let f = eng.function("emu_test_write_past_end").unwrap();
    let mut l = eng.stream.launch_builder(&f);
    let n = 100i32;
    l.arg(&mut buf).arg(&n);
    // SAFETY: (float*, int), as the kernel takes.
    let err = finished(eng, unsafe { l.launch(cfg(1, 32, 0)) }.map(|_| ())).unwrap_err();
    assert!(
        err.contains("emu_test_write_past_end wrote outside its buffers"),
        "{err}"
    );
    assert!(
        err.contains("0 bytes past the end of a 400-byte buffer"),
        "{err}"
    );
}

#[test]
fn a_far_write_faults_names_the_buffer_and_the_process_lives_on() {
    let Some((eng, _g)) = engine() else { return };
    let mut buf = eng.zeros::<f32>(100).unwrap();
    let f = eng.function("emu_test_write_far").unwrap();
    let n = 100i32;
    let mut l = eng.stream.launch_builder(&f);
    l.arg(&mut buf).arg(&n);
    // SAFETY: (float*, int), as the kernel takes.
    let err = finished(eng, unsafe { l.launch(cfg(1, 64, 0)) }.map(|_| ())).unwrap_err();
    assert!(err.contains("out-of-bounds write"), "{err}");
    assert!(err.contains("past the end of a 400-byte buffer"), "{err}");
    assert!(err.contains("thread (3,0,0)"), "{err}");
    // The next launch runs normally.
    let mut out = eng.zeros::<i32>(64).unwrap();
    launch1(eng, "emu_test_barrier", cfg(1, 64, 0), &mut out).unwrap();
}

#[test]
fn a_lane_that_exits_before_a_shuffle_is_a_reported_deadlock() {
    let Some((eng, _g)) = engine() else { return };
    let mut out = eng.zeros::<i32>(64).unwrap();
    let err = launch1(eng, "emu_test_exited_lane", cfg(1, 64, 0), &mut out).unwrap_err();
    assert!(err.contains("deadlock"), "{err}");
    assert!(err.contains("0x00000020 of them exited"), "{err}");
}

#[test]
fn launches_the_gpu_would_refuse_are_refused_by_name() {
    let Some((eng, _g)) = engine() else { return };
    let mut out = eng.zeros::<i32>(64).unwrap();
    let err = launch1(eng, "emu_test_barrier", cfg(1, 2048, 0), &mut out).unwrap_err();
    assert!(
        err.contains("kernel emu_test_barrier: a block of (2048,1,1)"),
        "{err}"
    );
    let c = LaunchConfig {
        grid_dim: (1, 70_000, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    let err = launch1(eng, "emu_test_barrier", c, &mut out).unwrap_err();
    assert!(err.contains("a grid of (1,70000,1)"), "{err}");
    let err = format!("{:#}", eng.function("no_such_kernel").unwrap_err());
    assert!(err.contains("no kernel named no_such_kernel"), "{err}");
}

#[test]
fn unsynchronised_results_change_with_the_schedule_seed() {
    let Some((eng, _g)) = engine() else { return };
    let blocks = 8usize;
    let run = |seed: u64, race_check: bool| {
        prefer::emu::set_schedule(seed, race_check).unwrap();
        let mut out = eng.zeros::<i32>(blocks).unwrap();
        let r = launch1(
            eng,
            "emu_test_last_writer",
            cfg(blocks as u32, 256, 0),
            &mut out,
        );
        r.map(|_| eng.download(&out).unwrap())
    };
    // With the race check on, the write-write race is the error.
    assert!(run(1, true).unwrap_err().contains("shared-memory race"));
    // With it off, seed 0 runs threads in order (the last thread writes last); other seeds differ.
    assert_eq!(run(0, false).unwrap(), vec![255; blocks]);
    let (a, b) = (run(1, false).unwrap(), run(2, false).unwrap());
    assert_ne!(a, vec![255; blocks]);
    assert_ne!(a, b);
    prefer::emu::set_schedule(1, true).unwrap();
}

/// How the consumer's stream is ordered after the producer's in [`two_streams`].
#[derive(Clone, Copy, Debug)]
enum Order {
    /// cuEventRecord on the producer's stream, cuStreamWaitEvent on the consumer's.
    Event,
    /// The host waits for the producer's stream before it launches the consumer.
    HostSync,
    /// Nothing: a cross-stream race.
    Nothing,
}

/// Producer (`emu_test_produce`) on stream 1 writes a 1024-float buffer, consumer
/// (`emu_test_consume`) on stream 2 doubles it into another; the consumer's result, or the first
/// error of any call. Two non-blocking streams of a context of its own, with cudarc's automatic
/// event tracking off, so the order is only what `order` says.
fn two_streams(order: Order, value: f32) -> Result<Vec<f32>, String> {
    two_streams_from(order, value, false)
}

/// [`two_streams`]; with `consumer_late`, the consumer's stream has no work at all (not even the
/// zeroing of its output) until the producer has been launched.
fn two_streams_from(order: Order, value: f32, consumer_late: bool) -> Result<Vec<f32>, String> {
    use cudarc::driver::CudaContext;
    let err = |e: cudarc::driver::DriverError| format!("{e:?}");
    let n = 1024usize;
    let ctx = CudaContext::new(0).map_err(err)?;
    // SAFETY: no slice of this context exists yet; the test orders its streams itself.
    unsafe { ctx.disable_event_tracking() };
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_binary(
            b"prefer software GPU".to_vec(),
        ))
        .map_err(err)?;
    let (produce, consume) = (
        module.load_function("emu_test_produce").map_err(err)?,
        module.load_function("emu_test_consume").map_err(err)?,
    );
    let (a, b) = (
        ctx.new_stream().map_err(err)?,
        ctx.new_stream().map_err(err)?,
    );
    // Not zeroed: a memset on stream 1 would be a second writer for the check to name.
    let mut buf = unsafe { a.alloc::<f32>(n) }.map_err(err)?;
    let mut out = if consumer_late {
        None
    } else {
        Some(b.alloc_zeros::<f32>(n).map_err(err)?)
    };
    let n_arg = n as i32;
    let mut errors = Vec::new();
    let mut l = a.launch_builder(&produce);
    l.arg(&mut buf).arg(&n_arg).arg(&value);
    // SAFETY: (float*, int, float), as the kernel takes.
    errors.push(unsafe { l.launch(cfg(4, 256, 0)) }.map(|_| ()));
    let mut out = match out.take() {
        Some(out) => out,
        None => b.alloc_zeros::<f32>(n).map_err(err)?,
    };
    match order {
        Order::Event => {
            let event = a.record_event(None).map_err(err)?;
            errors.push(b.wait(&event));
        }
        Order::HostSync => errors.push(a.synchronize()),
        Order::Nothing => {}
    }
    let mut l = b.launch_builder(&consume);
    l.arg(&buf).arg(&mut out).arg(&n_arg);
    // SAFETY: (const float*, float*, int), as the kernel takes.
    errors.push(unsafe { l.launch(cfg(4, 256, 0)) }.map(|_| ()));
    errors.push(b.synchronize());
    errors.push(a.synchronize());
    let got = b.clone_dtoh(&out);
    if let Some(e) = errors.into_iter().find_map(|r| r.err()) {
        return Err(err(e));
    }
    got.map_err(err)
}

#[test]
fn a_consumer_stream_waits_for_the_producer_only_when_told() {
    let Some((_eng, _g)) = engine() else { return };
    let want = |value: f32| -> Vec<f32> { (0..1024).map(|i| 2.0 * (value + i as f32)).collect() };
    // Ordered by an event or by the host: right under every schedule, with no report.
    for seed in 1..=20u64 {
        prefer::emu::set_schedule(seed, true).unwrap();
        let value = seed as f32 * 3.0;
        assert_eq!(
            two_streams(Order::Event, value),
            Ok(want(value)),
            "event, seed {seed}"
        );
    }
    for seed in [0u64, 3, 7] {
        prefer::emu::set_schedule(seed, true).unwrap();
        assert_eq!(
            two_streams(Order::HostSync, 1.5),
            Ok(want(1.5)),
            "host sync, seed {seed}"
        );
    }
    // Without the wait: the race check names both launches, their streams and the buffer.
    for seed in [0u64, 1, 2, 5, 7] {
        prefer::emu::set_schedule(seed, true).unwrap();
        let e = two_streams(Order::Nothing, 1.0).unwrap_err();
        for part in [
            "cross-stream race on the 4096-byte device buffer",
            "kernel emu_test_produce on stream",
            "kernel emu_test_consume on stream",
            "bytes [0, 4096)",
        ] {
            assert!(e.contains(part), "seed {seed}: no {part:?} in {e}");
        }
    }
    // With the check off, some schedule runs the consumer first and reads what was never written.
    let mut stale = 0;
    for seed in 1..=20u64 {
        prefer::emu::set_schedule(seed, false).unwrap();
        stale += (two_streams(Order::Nothing, 1.0).unwrap() != want(1.0)) as usize;
    }
    assert!(
        stale > 0,
        "no schedule out of 20 ran the consumer before the producer"
    );
    prefer::emu::set_schedule(1, true).unwrap();
}

/// Kernels follow their accesses only once work on two streams may run unordered; the producer
/// here runs before that (its stream alone has had work), so the check knows only which buffers
/// it was given. A fresh process (this test runs itself), since that state is the process's.
#[test]
fn work_before_a_second_stream_is_busy_is_still_checked() {
    const CHILD: &str = "PREFER_TEST_EMU_LATE_CONSUMER";
    if std::env::var_os(CHILD).is_none() {
        let Some((_eng, _g)) = engine() else { return };
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "work_before_a_second_stream_is_busy_is_still_checked",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the child failed:\n{text}");
        assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
        return;
    }
    prefer::emu::activate().unwrap();
    prefer::emu::set_schedule(0, true).unwrap();
    let e = two_streams_from(Order::Nothing, 1.0, true).unwrap_err();
    for part in [
        "cross-stream race on the 4096-byte device buffer",
        "kernel emu_test_produce on stream",
        "its exact bytes were not followed",
        "kernel emu_test_consume on stream",
    ] {
        assert!(e.contains(part), "no {part:?} in {e}");
    }
    // Ordered, the same program passes; its kernels are now followed exactly.
    let want: Vec<f32> = (0..1024).map(|i| 2.0 * (2.5 + i as f32)).collect();
    for seed in [0u64, 1, 2] {
        prefer::emu::set_schedule(seed, true).unwrap();
        assert_eq!(two_streams_from(Order::Event, 2.5, true), Ok(want.clone()));
    }
}

#[test]
fn a_queued_copy_from_the_host_takes_the_bytes_at_the_call() {
    use cudarc::driver::CudaContext;
    let Some((_eng, _g)) = engine() else { return };
    let original: Vec<u32> = (0..4096).collect();
    for seed in 1..=8u64 {
        prefer::emu::set_schedule(seed, true).unwrap();
        let ctx = CudaContext::new(0).unwrap();
        // SAFETY: one stream, and no slice of this context yet.
        unsafe { ctx.disable_event_tracking() };
        let s = ctx.new_stream().unwrap();
        let mut dev = unsafe { s.alloc::<u32>(original.len()) }.unwrap();
        let mut host = original.clone();
        s.memcpy_htod(&host, &mut dev).unwrap();
        // Pageable memory: CUDA staged the bytes before returning, so this cannot reach the copy.
        host.iter_mut().for_each(|v| *v = 7);
        assert_eq!(s.clone_dtoh(&dev).unwrap(), original, "seed {seed}");
    }
    prefer::emu::set_schedule(1, true).unwrap();
}

/// D = alpha·op(A)·op(B) + beta·C, column-major, in f64 from the same bf16 values.
#[allow(clippy::too_many_arguments)]
fn naive_gemm(
    s: &GemmShape,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &[f32],
    batch_a: usize,
    batch_b: usize,
    batch_c: usize,
    batch: usize,
) -> Vec<f64> {
    let mut d: Vec<f64> = c.iter().map(|&x| x as f64).collect();
    for q in 0..batch {
        for i in 0..s.m as usize {
            for j in 0..s.n as usize {
                let mut acc = 0.0f64;
                for p in 0..s.k as usize {
                    let av = if s.transa {
                        a[q * batch_a + p + i * s.lda as usize]
                    } else {
                        a[q * batch_a + i + p * s.lda as usize]
                    };
                    let bv = if s.transb {
                        b[q * batch_b + j + p * s.ldb as usize]
                    } else {
                        b[q * batch_b + p + j * s.ldb as usize]
                    };
                    acc += av as f64 * bv as f64;
                }
                let at = q * batch_c + i + j * s.ldc as usize;
                d[at] = alpha as f64 * acc + beta as f64 * c[at] as f64;
            }
        }
    }
    d
}

fn bf16_values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32;
            bf16::from_f32(x / (1u32 << 24) as f32 * 2.0 - 1.0).to_f32()
        })
        .collect()
}

#[test]
fn cublaslt_matches_a_triple_loop_for_every_transpose_pair() {
    let Some((eng, _g)) = engine() else { return };
    let gemm = Gemm::new(eng).unwrap();
    let (m, n, k) = (37u64, 23u64, 19u64);
    for (transa, transb) in [(false, false), (true, false), (false, true), (true, true)] {
        // Leading dimensions larger than the rows they hold.
        let (ar, ac) = if transa { (k, m) } else { (m, k) };
        let (br, bc) = if transb { (n, k) } else { (k, n) };
        let s = GemmShape {
            transa,
            transb,
            m,
            n,
            k,
            lda: ar as i64 + 3,
            ldb: br as i64 + 5,
            ldc: m as i64 + 2,
            c_f32: true,
        };
        let a = bf16_values((s.lda as u64 * ac) as usize, 1);
        let b = bf16_values((s.ldb as u64 * bc) as usize, 2);
        let c = bf16_values((s.ldc as u64 * n) as usize, 3);
        let a_d = eng
            .upload(&a.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())
            .unwrap();
        let b_d = eng
            .upload(&b.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())
            .unwrap();
        let mut c_d = eng.upload(&c).unwrap();
        gemm.gemm(eng, s, 0.75, &a_d, &b_d, 0.5, &mut c_d, "test")
            .unwrap();
        let got = eng.download(&c_d).unwrap();
        let want = naive_gemm(&s, 0.75, &a, &b, 0.5, &c, 0, 0, 0, 1);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // Padding rows (i % ldc >= m) keep C's value; the rest hold the f32 product.
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "transa {transa} transb {transb}: element {i}: {g} vs {w}"
            );
        }
        // bf16 output, beta 0: C is never read (it holds the NaN fill of fresh memory).
        let s16 = GemmShape { c_f32: false, ..s };
        let mut c16 = unsafe { eng.stream.alloc::<bf16>((s.ldc as u64 * n) as usize) }.unwrap();
        gemm.gemm(eng, s16, 1.0, &a_d, &b_d, 0.0, &mut c16, "test bf16")
            .unwrap();
        let got16 = eng.download(&c16).unwrap();
        let want16 = naive_gemm(&s, 1.0, &a, &b, 0.0, &vec![0.0; c.len()], 0, 0, 0, 1);
        for j in 0..n as usize {
            for i in 0..m as usize {
                let at = i + j * s.ldc as usize;
                let w = want16[at];
                assert!(
                    (got16[at].to_f32() as f64 - w).abs() <= 4e-3 * (1.0 + w.abs()),
                    "bf16 out, element ({i},{j})"
                );
            }
        }
    }
}

#[test]
fn cublaslt_strided_batches_match_a_triple_loop() {
    use cudarc::cublaslt::{result as lt, sys};
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    use std::ffi::c_void;
    let Some((eng, _g)) = engine() else { return };
    let (m, n, k, batch) = (9u64, 7u64, 5u64, 3usize);
    let s = GemmShape {
        transa: true,
        transb: false,
        m,
        n,
        k,
        lda: k as i64,
        ldb: k as i64,
        ldc: m as i64,
        c_f32: true,
    };
    let (sa, sb, sc) = ((m * k + 4) as i64, (k * n + 2) as i64, (m * n + 1) as i64);
    let a = bf16_values(sa as usize * batch, 4);
    let b = bf16_values(sb as usize * batch, 5);
    let c = bf16_values(sc as usize * batch, 6);
    let a_d = eng
        .upload(&a.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())
        .unwrap();
    let b_d = eng
        .upload(&b.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())
        .unwrap();
    let mut c_d = eng.upload(&c).unwrap();
    let (alpha, beta) = (1.5f32, -0.25f32);
    let bf = sys::cudaDataType_t::CUDA_R_16BF;
    let f32t = sys::cudaDataType_t::CUDA_R_32F;
    // SAFETY: every handle is created here and used with buffers of the sizes the layouts reach.
    unsafe {
        let handle = lt::create_handle().unwrap();
        let la = lt::create_matrix_layout(bf, k, m, s.lda).unwrap();
        let lb = lt::create_matrix_layout(bf, k, n, s.ldb).unwrap();
        let lc = lt::create_matrix_layout(f32t, m, n, s.ldc).unwrap();
        use sys::cublasLtMatrixLayoutAttribute_t as A;
        for (l, stride) in [(la, sa), (lb, sb), (lc, sc)] {
            let count = batch as i32;
            lt::set_matrix_layout_attribute(
                l,
                A::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                &count as *const i32 as *const c_void,
                4,
            )
            .unwrap();
            lt::set_matrix_layout_attribute(
                l,
                A::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                &stride as *const i64 as *const c_void,
                8,
            )
            .unwrap();
        }
        let desc =
            lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f32t).unwrap();
        let op_t = 1i32;
        lt::set_matmul_desc_attribute(
            desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &op_t as *const i32 as *const c_void,
            4,
        )
        .unwrap();
        // An epilogue the stand-in does not model is refused, not ignored.
        let relu = 2i32;
        assert!(lt::set_matmul_desc_attribute(
            desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &relu as *const i32 as *const c_void,
            4,
        )
        .is_err());
        let pref = lt::create_matmul_pref().unwrap();
        let heur = lt::get_matmul_algo_heuristic(handle, desc, la, lb, lc, lc, pref).unwrap();
        let (ap, _ra) = a_d.device_ptr(&eng.stream);
        let (bp, _rb) = b_d.device_ptr(&eng.stream);
        let (cp, _rc) = c_d.device_ptr_mut(&eng.stream);
        lt::matmul(
            handle,
            desc,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            ap as *const c_void,
            la,
            bp as *const c_void,
            lb,
            cp as *const c_void,
            lc,
            cp as *mut c_void,
            lc,
            &heur.algo,
            std::ptr::null_mut(),
            0,
            eng.stream.cu_stream() as *mut _,
        )
        .unwrap();
    }
    let got = eng.download(&c_d).unwrap();
    let want = naive_gemm(
        &s,
        alpha,
        &a,
        &b,
        beta,
        &c,
        sa as usize,
        sb as usize,
        sc as usize,
        batch,
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "element {i}: {g} vs {w}"
        );
    }
}

#[test]
fn a_captured_graph_replays_launches_memsets_and_matmuls_with_their_captured_values() {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let Some((eng, _g)) = engine() else { return };
    let n = 37usize;
    let mut y = eng.upload(&vec![1.0f32; n]).unwrap();
    let mut z = eng.upload(&vec![5.0f32; n]).unwrap();
    let add = eng.function("emu_test_add").unwrap();
    // A 2x3 · 3x2 product through the cuBLASLt stand-in, inside the same capture.
    let gemm = Gemm::new(eng).unwrap();
    let a = eng
        .upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].map(bf16::from_f32))
        .unwrap();
    let b = eng
        .upload(&[1.0f32, 0.0, 1.0, 0.0, 1.0, 1.0].map(bf16::from_f32))
        .unwrap();
    let mut c = eng.zeros::<f32>(4).unwrap();
    let shape = GemmShape {
        transa: false,
        transb: false,
        m: 2,
        n: 2,
        k: 3,
        lda: 2,
        ldb: 3,
        ldc: 2,
        c_f32: true,
    };
    gemm.gemm(eng, shape, 1.0, &a, &b, 0.0, &mut c, "warm-up")
        .unwrap();
    eng.zero(&mut c).unwrap();
    let before = prefer::emu::counters().unwrap();

    eng.stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .unwrap();
    let mut v = 1.5f32;
    let ni = n as i32;
    let mut l = eng.stream.launch_builder(&add);
    l.arg(&mut y).arg(&v).arg(&ni);
    // SAFETY: emu_test_add(float*, float, int).
    unsafe { l.launch(cfg(1, 64, 0)) }.unwrap();
    v = 100.0; // changed after the launch was captured: the graph keeps 1.5
    let _ = v;
    eng.stream.memset_zeros(&mut z).unwrap();
    gemm.gemm(eng, shape, 2.0, &a, &b, 0.0, &mut c, "captured")
        .unwrap();
    // What CUDA refuses during capture is refused, by name.
    let refused = eng.stream.memcpy_htod(&[9.0f32], &mut z.slice_mut(0..1));
    let err = format!("{:?}", refused.unwrap_err());
    assert!(
        err.contains("CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"),
        "{err}"
    );
    let graph = eng
        .stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a graph");
    // Capture ran nothing.
    assert_eq!(eng.download(&y).unwrap(), vec![1.0; n]);
    assert_eq!(eng.download(&z).unwrap(), vec![5.0; n]);
    assert_eq!(eng.download(&c).unwrap(), vec![0.0; 4]);

    graph.launch().unwrap();
    graph.launch().unwrap();
    assert_eq!(eng.download(&y).unwrap(), vec![4.0; n], "1 + 2 × 1.5");
    assert_eq!(eng.download(&z).unwrap(), vec![0.0; n]);
    // A (2x3, column-major [[1,3,5],[2,4,6]]) times B (3x2 [[1,0],[0,1],[1,1]]), times alpha 2.
    assert_eq!(eng.download(&c).unwrap(), vec![12.0, 16.0, 16.0, 20.0]);
    let after = prefer::emu::counters().unwrap();
    assert_eq!(
        after.launches - before.launches,
        2,
        "one kernel node, replayed twice"
    );
}
