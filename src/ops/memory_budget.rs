//! Sizes from input checked against the memory there is, before anything is allocated: an
//! allocation that cannot succeed aborts the process (Rust's allocator does not return errors),
//! so a huge vocab_size, prompt or `--kv-memory` must be refused by name first.

use anyhow::{bail, Result};

/// Bytes the host can still allocate: `MemAvailable` of /proc/meminfo. `None` where the file is
/// absent (not Linux), and then only arithmetic overflow is caught.
pub fn host_available_bytes() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

/// `MemAvailable:   1234 kB` → 1234 × 1024.
fn parse_mem_available(meminfo: &str) -> Option<u128> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses `bytes` of `what` when more than `available` (from [`host_available_bytes`] or the
/// device's free memory), naming both sizes and `hint`, what the user can change.
pub fn ensure_fits(what: &str, bytes: u128, available: Option<u128>, hint: &str) -> Result<()> {
    if let Some(free) = available {
        if bytes > free {
            bail!(
                "{what} needs {}, but only {} is available: {hint}",
                human_bytes(bytes),
                human_bytes(free)
            );
        }
    }
    Ok(())
}

/// [`ensure_fits`] against the host's available memory.
pub fn ensure_fits_host(what: &str, bytes: u128, hint: &str) -> Result<()> {
    ensure_fits(what, bytes, host_available_bytes(), hint)
}

/// 1536 → "1.5 KiB"; sizes past usize print in full.
pub fn human_bytes(b: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {} ({b} bytes)", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available_and_refuses_what_does_not_fit() {
        let info = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(info), Some(2048 * 1024));
        assert!(ensure_fits("x", 10, Some(10), "").is_ok());
        let e = ensure_fits("the KV cache", 3 << 30, Some(1 << 30), "lower --kv-memory")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "the KV cache needs 3.0 GiB (3221225472 bytes), but only 1.0 GiB (1073741824 bytes) is available: lower --kv-memory"
        );
        assert!(host_available_bytes().is_some_and(|b| b > 0));
    }
}
