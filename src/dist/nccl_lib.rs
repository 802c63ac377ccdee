//! Finding NCCL (libnccl.so.2) on a GPU machine without the user setting a path, in this order:
//! 1. `$PREFER_NCCL`: the library file, or a folder holding it;
//! 2. the dynamic loader's own search (`LD_LIBRARY_PATH`, ld.so.cache), as `dlopen` sees it;
//! 3. the `nvidia-nccl-cu13` / `nvidia-nccl-cu12` wheels (PyTorch's NCCL comes from one of them):
//!    `site-packages/nvidia/nccl/lib` under the active virtual or conda environment, the user's
//!    site, and the system Pythons.
//!
//! A world of one process never looks. When nothing is found, the error lists every place tried.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub const LIBRARY: &str = "libnccl.so.2";

/// Where NCCL was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NcclLocation {
    /// An absolute path (from `$PREFER_NCCL` or a wheel).
    File(PathBuf),
    /// The loader finds it by name.
    Loader,
}

impl std::fmt::Display for NcclLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NcclLocation::File(p) => write!(f, "{}", p.display()),
            NcclLocation::Loader => write!(f, "{LIBRARY} (the dynamic loader's search path)"),
        }
    }
}

/// Whether the dynamic loader can open `name` by itself.
fn loader_finds(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: dlopen/dlclose of a library by name; the handle is closed at once (NCCL has no
    // constructors that matter here, and the loader keeps a library opened elsewhere).
    unsafe {
        let handle = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if handle.is_null() {
            return false;
        }
        libc::dlclose(handle);
    }
    true
}

/// The system prefixes whose Pythons may hold the wheel.
const SYSTEM_PREFIXES: [&str; 3] = ["/usr/local", "/usr", "/opt/conda"];

/// The folders where pip puts the NCCL wheels' library, for the environment `var` describes and
/// the `system` prefixes.
fn wheel_dirs(var: &dyn Fn(&str) -> Option<String>, system: &[&str]) -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = Vec::new();
    for v in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) = var(v).filter(|p| !p.is_empty()) {
            prefixes.push(PathBuf::from(p));
        }
    }
    if let Some(home) = var("HOME").filter(|h| !h.is_empty()) {
        prefixes.push(Path::new(&home).join(".local"));
    }
    prefixes.extend(system.iter().map(PathBuf::from));
    let mut dirs = Vec::new();
    for prefix in prefixes {
        let lib = prefix.join("lib");
        let Ok(entries) = std::fs::read_dir(&lib) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path())
            .collect();
        pythons.sort();
        for py in pythons {
            for site in ["site-packages", "dist-packages"] {
                dirs.push(py.join(site).join("nvidia/nccl/lib"));
            }
        }
    }
    dirs
}

/// Finds NCCL as the module says, reading the environment through `var` and asking the loader
/// through `loader` (the real ones: [`find_nccl`]).
pub fn find_nccl_with(
    var: &dyn Fn(&str) -> Option<String>,
    loader: &dyn Fn(&str) -> bool,
    system: &[&str],
) -> Result<NcclLocation> {
    if let Some(given) = var("PREFER_NCCL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(&given);
        let file = if path.is_dir() {
            path.join(LIBRARY)
        } else {
            path
        };
        if !file.is_file() {
            bail!(
                "PREFER_NCCL={given}: no such file{}",
                if Path::new(&given).is_dir() {
                    format!(" ({LIBRARY} is not in that folder)")
                } else {
                    String::new()
                }
            );
        }
        return Ok(NcclLocation::File(file));
    }
    if loader(LIBRARY) {
        return Ok(NcclLocation::Loader);
    }
    let dirs = wheel_dirs(var, system);
    for d in &dirs {
        let file = d.join(LIBRARY);
        if file.is_file() {
            return Ok(NcclLocation::File(file));
        }
    }
    let tried: Vec<String> = dirs
        .iter()
        .map(|d| d.display().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    bail!(
        "NCCL ({LIBRARY}) not found: not in PREFER_NCCL, not on the loader's path (LD_LIBRARY_PATH, \
         ld.so.cache), and not in a pip wheel's folder{}. Install it with `pip install \
         nvidia-nccl-cu13==2.28.9` (or point PREFER_NCCL at libnccl.so.2)",
        if tried.is_empty() {
            String::new()
        } else {
            format!(" ({})", tried.join(", "))
        }
    )
}

/// Finds NCCL from this process's environment.
pub fn find_nccl() -> Result<NcclLocation> {
    find_nccl_with(
        &|name| std::env::var(name).ok(),
        &loader_finds,
        &SYSTEM_PREFIXES,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |name| m.get(name).cloned()
    }

    #[test]
    fn prefer_nccl_then_the_loader_then_a_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        let wheel = venv.join("lib/python3.12/site-packages/nvidia/nccl/lib");
        std::fs::create_dir_all(&wheel).unwrap();
        std::fs::write(wheel.join(LIBRARY), b"").unwrap();
        let in_venv = vars(&[("VIRTUAL_ENV", venv.display().to_string())]);
        let nowhere = |_: &str| false;
        assert_eq!(
            find_nccl_with(&in_venv, &nowhere, &[]).unwrap(),
            NcclLocation::File(wheel.join(LIBRARY))
        );
        // The loader's own search comes before a wheel.
        assert_eq!(
            find_nccl_with(&in_venv, &|_| true, &[]).unwrap(),
            NcclLocation::Loader
        );
        // PREFER_NCCL, a folder or a file, comes first; a wrong one is an error, not skipped.
        let given = vars(&[("PREFER_NCCL", wheel.display().to_string())]);
        assert_eq!(
            find_nccl_with(&given, &|_| true, &[]).unwrap(),
            NcclLocation::File(wheel.join(LIBRARY))
        );
        let wrong = vars(&[("PREFER_NCCL", dir.path().display().to_string())]);
        let msg = format!("{:#}", find_nccl_with(&wrong, &|_| true, &[]).unwrap_err());
        assert!(msg.contains("is not in that folder"), "{msg}");
    }

    #[test]
    fn nothing_found_says_where_it_looked_and_how_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        std::fs::create_dir_all(venv.join("lib/python3.11/site-packages")).unwrap();
        let v = vars(&[("VIRTUAL_ENV", venv.display().to_string())]);
        let msg = format!("{:#}", find_nccl_with(&v, &|_| false, &[]).unwrap_err());
        assert!(msg.contains("pip install nvidia-nccl-cu13"), "{msg}");
        assert!(
            msg.contains(
                &venv
                    .join("lib/python3.11/site-packages/nvidia/nccl/lib")
                    .display()
                    .to_string()
            ),
            "{msg}"
        );
    }
}
