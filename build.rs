//! Compiles kernels/*.cu twice from the same text:
//! - by nvcc into one fatbin (SASS for sm_80 and sm_90a, PTX for compute_90) that the binary
//!   embeds, with ptxas's register, spill and shared-memory report for sm_90a;
//! - by the system C++ compiler into the software GPU (emu/): a stand-in libcuda.so and
//!   libcublasLt.so that run the kernels on the CPU, and a stand-in libnccl.so for collectives
//!   between rank processes, also embedded.
//!
//! Without nvcc (or g++) the crate builds without that part, unless PREFER_REQUIRE_CUDA=1 makes a
//! missing or failing compiler an error (CI sets it).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const ARCHS: &str = "sm_80,sm_90a,compute_90";

fn find_nvcc() -> Option<PathBuf> {
    let candidates = [
        env::var_os("NVCC").map(PathBuf::from),
        env::var_os("CUDA_HOME").map(|h| Path::new(&h).join("bin/nvcc")),
        env::var_os("PATH").and_then(|paths| {
            env::split_paths(&paths)
                .map(|p| p.join("nvcc"))
                .find(|p| p.is_file())
        }),
        Some(PathBuf::from("/usr/local/cuda/bin/nvcc")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=emu");
    println!("cargo:rerun-if-env-changed=CXX");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=PREFER_REQUIRE_CUDA");
    let required = env::var("PREFER_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let fatbin = out.join("prefer_kernels.fatbin");

    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }

    let resources = out.join("kernel_resources.tsv");
    let built = match find_nvcc() {
        None => Err("no nvcc found ($NVCC, $CUDA_HOME/bin, PATH, /usr/local/cuda/bin)".to_string()),
        Some(nvcc) => compile(&nvcc, &sources, &out, &fatbin, &resources),
    };
    match built {
        Ok(()) => {
            println!("cargo:rustc-cfg=prefer_kernels");
            println!("cargo:rustc-env=PREFER_KERNEL_ARCHS={ARCHS}");
        }
        Err(why) if required => {
            panic!("PREFER_REQUIRE_CUDA=1 but the kernels did not build: {why}")
        }
        Err(why) => {
            println!("cargo:warning=building without CUDA kernels: {why}");
            std::fs::write(&fatbin, []).unwrap();
            std::fs::write(&resources, "").unwrap();
        }
    }
    println!("cargo:rustc-check-cfg=cfg(prefer_kernels)");

    match emu::build(&sources, &out) {
        Ok(()) => println!("cargo:rustc-cfg=prefer_emu"),
        Err(why) if required => {
            panic!("PREFER_REQUIRE_CUDA=1 but the software GPU did not build: {why}")
        }
        Err(why) => {
            for (i, line) in why.lines().take(40).enumerate() {
                let head = if i == 0 {
                    "building without the software GPU: "
                } else {
                    "  "
                };
                println!("cargo:warning={head}{line}");
            }
            for lib in ["libcuda.so", "libcublasLt.so", "libnccl.so"] {
                std::fs::write(out.join(lib), []).unwrap();
            }
            std::fs::write(out.join("emu_build_error.txt"), why).unwrap();
        }
    }
    println!("cargo:rustc-check-cfg=cfg(prefer_emu)");
}

/// One translation unit that includes every kernel file, so the fatbin is a single module.
/// nvcc, with ptxas's per-kernel report for sm_90a written to `resources` as TSV.
fn compile(
    nvcc: &Path,
    sources: &[PathBuf],
    out: &Path,
    fatbin: &Path,
    resources: &Path,
) -> Result<(), String> {
    let root = env::var("CARGO_MANIFEST_DIR").unwrap();
    let unit = out.join("prefer_kernels.cu");
    let includes: String = sources
        .iter()
        .map(|s| format!("#include \"{}/{}\"\n", root, s.display()))
        .collect();
    std::fs::write(&unit, includes).map_err(|e| e.to_string())?;
    let output = Command::new(nvcc)
        // No --use_fast_math: rotary angles reach 1e5 radians, where the fast sin/cos are useless.
        // Kernels that want an intrinsic (__expf) ask for it by name.
        .args(["-fatbin", "-O3", "-std=c++17", "-lineinfo", "-Xptxas", "-v"])
        .args(["-gencode", "arch=compute_80,code=sm_80"])
        .args(["-gencode", "arch=compute_90a,code=sm_90a"])
        .args(["-gencode", "arch=compute_90,code=compute_90"])
        .arg(format!("-I{root}/kernels"))
        .arg("-o")
        .arg(fatbin)
        .arg(&unit)
        .output()
        .map_err(|e| format!("running {}: {e}", nvcc.display()))?;
    let report = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "{} exited with {}:\n{report}",
            nvcc.display(),
            output.status
        ));
    }
    std::fs::write(resources, ptxas_table(&report, "sm_90a")).map_err(|e| e.to_string())
}

/// One line per kernel compiled for `arch`: name, registers, spill stores, spill loads, static
/// shared memory and stack frame bytes, from `ptxas -v`:
///   ptxas info    : Compiling entry function 'rmsnorm_forward' for 'sm_90a'
///       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
///   ptxas info    : Used 18 registers, used 1 barriers, 128 bytes smem, 400 bytes cmem[0]
fn ptxas_table(report: &str, arch: &str) -> String {
    let number_before = |line: &str, unit: &str| -> u64 {
        line.find(unit)
            .and_then(|at| line[..at].split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut rows: Vec<[String; 6]> = Vec::new();
    let mut current: Option<usize> = None;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("");
            current = line.contains(&format!("for '{arch}'")).then(|| {
                rows.push([
                    name.to_string(),
                    "0".into(),
                    "0".into(),
                    "0".into(),
                    "0".into(),
                    "0".into(),
                ]);
                rows.len() - 1
            });
        } else if let Some(i) = current {
            if line.contains("bytes spill stores") {
                rows[i][2] = number_before(line, "bytes spill stores").to_string();
                rows[i][3] = number_before(line, "bytes spill loads").to_string();
                rows[i][5] = number_before(line, "bytes stack frame").to_string();
            } else if line.contains("Used") && line.contains("registers") {
                rows[i][1] = number_before(line, "registers").to_string();
                rows[i][4] = number_before(line, "bytes smem").to_string();
            }
        }
    }
    rows.iter().map(|r| r.join("\t") + "\n").collect()
}

/// The software GPU: kernels/*.cu (and emu/tests/*.cu) compiled by the system C++ compiler through
/// emu/include/emu_cuda.h, instrumented for the race check, linked with the runtime into a
/// stand-in libcuda.so; and the stand-in libcublasLt.so and libnccl.so.
mod emu {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn cxx() -> String {
        std::env::var("CXX").unwrap_or_else(|_| "g++".to_string())
    }

    fn run(cmd: &mut Command) -> Result<(), String> {
        let output = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    fn cu_files(dir: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|e| e == "cu"));
        v.sort();
        v
    }

    /// `extern "C" __global__ void NAME(` and `extern __shared__ [__align__(N)] TYPE NAME[]`.
    fn declarations(text: &str) -> (Vec<String>, Vec<(String, String)>) {
        let words = |s: &str| -> Vec<String> {
            s.split(|c: char| c.is_whitespace() || c == '(' || c == '[')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect()
        };
        let mut kernels = Vec::new();
        let mut shared = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("extern \"C\" __global__ void ") {
                if let Some(name) = words(rest).first() {
                    kernels.push(name.clone());
                }
            } else if let Some(rest) = line.strip_prefix("extern __shared__ ") {
                let mut w = words(rest);
                w.retain(|x| !x.starts_with("__align__") && !x.ends_with(')'));
                if w.len() >= 2 {
                    let name = w[w.len() - 2].clone();
                    let ty = w[..w.len() - 2].join(" ");
                    shared.push((ty, name.trim_end_matches(']').to_string()));
                }
            }
        }
        (kernels, shared)
    }

    /// Calls a kernel from its parameter array with its real C++ signature, and records the sizes
    /// of its parameters; in every kernel object.
    const CALL_TEMPLATES: &str = r#"
#include <utility>
#include <type_traits>
#include "runtime/runtime.h"
template <typename... A, size_t... I>
static void emu_call(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}
template <typename... A>
static void emu_call(void (*f)(A...), void** p) { emu_call(f, p, std::index_sequence_for<A...>{}); }
template <typename... A>
struct EmuArgSizes {
    static constexpr size_t sizes[sizeof...(A) + 1] = {sizeof(std::remove_cv_t<std::remove_reference_t<A>>)..., 0};
};
template <typename... A>
static constexpr const size_t* emu_arg_sizes(void (*)(A...)) { return EmuArgSizes<A...>::sizes; }
template <typename... A>
static constexpr size_t emu_arg_count(void (*)(A...)) { return sizeof...(A); }
"#;

    /// One .cu file's unit: the file (found through the include path, so a copy of kernels/ in
    /// another folder can stand in for it) and the table of its kernels.
    fn kernel_unit(file_name: &str, table: &str, kernels: &[String]) -> String {
        let mut unit = format!(
            "// Generated by build.rs: {file_name} and the table of its kernels.\n#include \"{file_name}\"\n"
        );
        unit += CALL_TEMPLATES;
        unit += &format!(
            "extern \"C\" __attribute__((no_sanitize(\"thread\"))) const emu::Kernel* {table}(size_t* n) {{\n"
        );
        if kernels.is_empty() {
            unit += "    *n = 0;\n    return nullptr;\n}\n";
            return unit;
        }
        unit += "    static const emu::Kernel kernels[] = {\n";
        for k in kernels {
            unit += &format!("        {{\"{k}\", [](void** p) {{ emu_call(&{k}, p); }}, emu_arg_sizes(&{k}), emu_arg_count(&{k})}},\n");
        }
        unit += "    };\n    *n = sizeof kernels / sizeof kernels[0];\n    return kernels;\n}\n";
        unit
    }

    /// The unit that joins the files' tables into one, and holds every extern __shared__ array.
    fn table_unit(tables: &[String], shared: &[(String, String)]) -> String {
        let mut unit = String::from(
            "// Generated by build.rs: the kernel table, and the extern __shared__ arrays.\n#include \"runtime/runtime.h\"\n",
        );
        for (ty, name) in shared {
            unit += &format!(
                "alignas(128) thread_local {ty} {name}[emu::kMaxDynamicShared / sizeof({ty})];\n"
            );
        }
        for t in tables {
            unit += &format!("extern \"C\" const emu::Kernel* {t}(size_t* n);\n");
        }
        unit += "extern \"C\" __attribute__((no_sanitize(\"thread\"))) const emu::Kernel* emu_kernel_table(size_t* n) {\n";
        unit += "    static const std::vector<emu::Kernel> all = [] {\n        std::vector<emu::Kernel> v;\n        size_t k = 0;\n        const emu::Kernel* t = nullptr;\n";
        for t in tables {
            unit += &format!("        t = {t}(&k);\n        v.insert(v.end(), t, t + k);\n");
        }
        unit += "        return v;\n    }();\n    *n = all.size();\n    return all.data();\n}\n";
        unit += "extern \"C\" __attribute__((no_sanitize(\"thread\"))) size_t emu_dynamic_shared(void** bases, size_t max) {\n    size_t n = 0;\n";
        for (_, name) in shared {
            unit += &format!("    if (n < max) bases[n] = (void*){name};\n    ++n;\n");
        }
        unit += "    return n;\n}\n";
        unit
    }

    /// Single quotes for sh.
    fn quoted(p: &Path) -> String {
        format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
    }

    /// Runs the commands, as many at once as there are CPUs; the first failure, if any.
    fn run_all(commands: Vec<Command>) -> Result<(), String> {
        let queue = std::sync::Mutex::new(commands);
        let first_error = std::sync::Mutex::new(None);
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::thread::scope(|s| {
            for _ in 0..jobs {
                s.spawn(|| loop {
                    let Some(mut c) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    if let Err(e) = run(&mut c) {
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                });
            }
        });
        first_error.into_inner().unwrap().map_or(Ok(()), Err)
    }

    /// `-mfma` where this machine has FMA (every x86-64 since 2013): the kernels' `fmaf` and the
    /// emulated mma's become one instruction instead of a call into libm (a tenth of the
    /// software GPU's time in the demo). The software GPU runs where it is built; contraction
    /// stays off, so `a * b + c` is still two roundings, as written.
    fn host_fma() -> Vec<String> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("fma") {
            return vec!["-mfma".into(), "-ffp-contract=off".into()];
        }
        vec!["-ffp-contract=off".into()]
    }

    /// Every .cu file is its own object, so that a changed file recompiles alone: `emu_rebuild.sh`
    /// in OUT_DIR rebuilds libcuda.so with one kernels/*.cu taken from another folder (the
    /// planted-bug test, tests/emu_mutants.rs).
    pub fn build(kernel_sources: &[PathBuf], out: &Path) -> Result<(), String> {
        if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
            return Err("the software GPU runs on x86-64 Linux only".into());
        }
        let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
        let emu = root.join("emu");
        let include = emu.join("include");
        let kernels_dir = root.join("kernels");
        let flags: Vec<String> = [
            "-std=c++17",
            "-O2",
            "-fPIC",
            "-g1",
            "-Wall",
            "-Wno-unknown-pragmas",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("-I{}", include.display()),
            format!("-I{}", emu.display()),
        ])
        .chain(host_fma())
        .collect();
        // Kernel code: every load and store calls the race check's hooks (emu/runtime/race.cpp).
        let kernel_flags: Vec<String> = flags
            .iter()
            .cloned()
            .chain(
                [
                    "-fsanitize=thread",
                    "--param=tsan-instrument-func-entry-exit=0",
                    "-Wno-unused-function",
                    "-include",
                    "emu_cuda.h",
                ]
                .map(String::from),
            )
            .collect();
        let compile = |flags: &[String], dirs: &[&Path], src: &Path, obj: &Path| {
            let mut c = Command::new(cxx());
            c.args(flags);
            for d in dirs {
                c.arg(format!("-I{}", d.display()));
            }
            c.arg("-c").arg(src).arg("-o").arg(obj);
            c
        };

        let mut sources: Vec<(PathBuf, &str)> =
            kernel_sources.iter().map(|s| (root.join(s), "k")).collect();
        sources.extend(
            cu_files("emu/tests")
                .into_iter()
                .map(|s| (root.join(s), "t")),
        );
        let mut shared: Vec<(String, String)> = Vec::new();
        let mut tables = Vec::new();
        let mut commands = Vec::new();
        let mut objects = Vec::new();
        let mut kernel_objects = Vec::new(); // (file stem, unit, object), for emu_rebuild.sh
        for (path, kind) in &sources {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let (kernels, sh) = declarations(&text);
            for d in sh {
                if !shared.contains(&d) {
                    shared.push(d);
                }
            }
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            let file_name = path.file_name().unwrap().to_string_lossy().to_string();
            let table = format!("emu_table_{kind}_{stem}");
            let unit = out.join(format!("emu_{kind}_{stem}.cpp"));
            std::fs::write(&unit, kernel_unit(&file_name, &table, &kernels))
                .map_err(|e| e.to_string())?;
            let obj = out.join(format!("emu_{kind}_{stem}.o"));
            let dir = path.parent().unwrap();
            commands.push(compile(&kernel_flags, &[dir, &kernels_dir], &unit, &obj));
            if *kind == "k" {
                kernel_objects.push((stem, unit, obj.clone()));
            }
            objects.push(obj);
            tables.push(table);
        }
        let table = out.join("emu_table.cpp");
        std::fs::write(&table, table_unit(&tables, &shared)).map_err(|e| e.to_string())?;
        let table_obj = out.join("emu_table.o");
        // Not instrumented: the driver calls it off the fibers, where the race hooks cannot run.
        commands.push(compile(&flags, &[], &table, &table_obj));
        objects.push(table_obj);
        for name in [
            "fiber", "launch", "race", "cp_async", "fault", "memory", "driver", "graph", "streams",
        ] {
            let src = emu.join("runtime").join(format!("{name}.cpp"));
            let obj = out.join(format!("emu_{name}.o"));
            commands.push(compile(&flags, &[], &src, &obj));
            objects.push(obj);
        }
        let lt_flags: Vec<String> = flags
            .iter()
            .cloned()
            .chain(["-shared", "-pthread", "-Wl,-soname,libcublasLt.so"].map(String::from))
            .collect();
        let mut lt = Command::new(cxx());
        lt.args(&lt_flags)
            .arg(emu.join("cublaslt/cublaslt.cpp"))
            .arg("-o")
            .arg(out.join("libcublasLt.so"));
        commands.push(lt);
        // The stand-in NCCL: collectives between rank processes over shared memory. Its soname is
        // the real library's; prefer opens it by path (src/dist/nccl.rs).
        let nccl_flags: Vec<String> = flags
            .iter()
            .cloned()
            .chain(["-shared", "-pthread", "-Wl,-soname,libnccl.so.2"].map(String::from))
            .collect();
        let mut nccl = Command::new(cxx());
        nccl.args(&nccl_flags)
            .arg(emu.join("nccl/nccl.cpp"))
            .arg("-o")
            .arg(out.join("libnccl.so"))
            .args(["-lrt", "-ldl"]);
        commands.push(nccl);
        run_all(commands)?;

        let link_flags = ["-shared", "-Wl,-soname,libcuda.so", "-Wl,-z,defs"];
        let libs = ["-lpthread", "-ldl"];
        let mut link = Command::new(cxx());
        link.args(link_flags)
            .args(&objects)
            .args(libs)
            .arg("-o")
            .arg(out.join("libcuda.so"));
        run(&mut link)?;

        // emu_rebuild.sh KERNELS_DIR STEM LIBRARY: STEM.cu from KERNELS_DIR (its own includes
        // from there too) in place of kernels/STEM.cu, linked with every other object as built.
        let mut script = String::from(
            "#!/bin/sh\n# Generated by build.rs: rebuilds the software GPU's libcuda.so with one kernel file taken from\n\
             # another folder. Usage: emu_rebuild.sh KERNELS_DIR STEM LIBRARY (STEM: a kernels/*.cu without .cu);\n\
             # PREFER_EMU_CXXFLAGS (such as -DPREFER_EMU_FAITHFUL_BLOCK_REDUCE) are added to its compilation.\nset -e\n\
             dir=\"$1\"; stem=\"$2\"; lib=\"$3\"\ncase \"$stem\" in\n",
        );
        let cxx_q = quoted(Path::new(&cxx()));
        let kflags: String = kernel_flags
            .iter()
            .map(|f| quoted(Path::new(f)))
            .collect::<Vec<_>>()
            .join(" ");
        for (stem, unit, obj) in &kernel_objects {
            let others: String = objects
                .iter()
                .filter(|o| *o != obj)
                .map(|o| quoted(o))
                .collect::<Vec<_>>()
                .join(" ");
            script += &format!(
                "  {stem})\n    {cxx_q} {kflags} $PREFER_EMU_CXXFLAGS -I\"$dir\" -c {} -o \"$lib.o\"\n    {cxx_q} {} \"$lib.o\" {others} {} -o \"$lib\"\n    ;;\n",
                quoted(unit),
                link_flags.join(" "),
                libs.join(" "),
            );
        }
        script += "  *) echo \"emu_rebuild.sh: no kernel file $stem.cu\" >&2; exit 2 ;;\nesac\n";
        std::fs::write(out.join("emu_rebuild.sh"), script).map_err(|e| e.to_string())?;
        std::fs::write(out.join("emu_build_error.txt"), "").map_err(|e| e.to_string())
    }
}
