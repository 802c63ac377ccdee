//! Compiles kernels/*.cu into one fatbin (SASS for sm_80 and sm_90a, PTX for compute_90) that the
//! binary embeds. Without nvcc the crate builds the CPU engine alone, unless
//! PREFER_REQUIRE_CUDA=1 makes a missing or failing nvcc an error (CI sets it).

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

    let built = match find_nvcc() {
        None => Err("no nvcc found ($NVCC, $CUDA_HOME/bin, PATH, /usr/local/cuda/bin)".to_string()),
        Some(nvcc) => compile(&nvcc, &sources, &out, &fatbin),
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
            println!("cargo:warning=building the CPU engine only: {why}");
            std::fs::write(&fatbin, []).unwrap();
        }
    }
    println!("cargo:rustc-check-cfg=cfg(prefer_kernels)");
}

/// One translation unit that includes every kernel file, so the fatbin is a single module.
fn compile(nvcc: &Path, sources: &[PathBuf], out: &Path, fatbin: &Path) -> Result<(), String> {
    let root = env::var("CARGO_MANIFEST_DIR").unwrap();
    let unit = out.join("prefer_kernels.cu");
    let includes: String = sources
        .iter()
        .map(|s| format!("#include \"{}/{}\"\n", root, s.display()))
        .collect();
    std::fs::write(&unit, includes).map_err(|e| e.to_string())?;
    let status = Command::new(nvcc)
        // No --use_fast_math: rotary angles reach 1e5 radians, where the fast sin/cos are useless.
        // Kernels that want an intrinsic (__expf) ask for it by name.
        .args(["-fatbin", "-O3", "-std=c++17", "-lineinfo"])
        .args(["-gencode", "arch=compute_80,code=sm_80"])
        .args(["-gencode", "arch=compute_90a,code=sm_90a"])
        .args(["-gencode", "arch=compute_90,code=compute_90"])
        .arg(format!("-I{root}/kernels"))
        .arg("-o")
        .arg(fatbin)
        .arg(&unit)
        .status()
        .map_err(|e| format!("running {}: {e}", nvcc.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} exited with {status}", nvcc.display()))
    }
}
