//! Range checks for option values, shared by every command's options (`prefer rm`/`dpo`, `ppo`,
//! `generate`, ...): each check names the option and its allowed range, so a bad value from a
//! flag, a `--config` TOML or a run.toml is one clear error, never a panic further on.

use anyhow::{bail, Result};
use std::ops::RangeInclusive;

/// `value` must lie in `range`; the error names `option` and the range.
pub fn check_int(option: &str, value: usize, range: RangeInclusive<usize>) -> Result<()> {
    if !range.contains(&value) {
        bail!(
            "{option} {value} is out of range: give a whole number from {} to {}",
            range.start(),
            range.end()
        );
    }
    Ok(())
}

/// Where a float option may lie: its ends, each included or not.
#[derive(Clone, Copy, Debug)]
pub struct FloatRange {
    pub min: f64,
    pub min_included: bool,
    pub max: f64,
    pub max_included: bool,
}

impl FloatRange {
    /// [min, max]
    pub const fn closed(min: f64, max: f64) -> Self {
        FloatRange {
            min,
            min_included: true,
            max,
            max_included: true,
        }
    }
    /// (min, max]
    pub const fn open_closed(min: f64, max: f64) -> Self {
        FloatRange {
            min,
            min_included: false,
            max,
            max_included: true,
        }
    }
    /// [min, max)
    pub const fn closed_open(min: f64, max: f64) -> Self {
        FloatRange {
            min,
            min_included: true,
            max,
            max_included: false,
        }
    }
    /// (min, max)
    pub const fn open(min: f64, max: f64) -> Self {
        FloatRange {
            min,
            min_included: false,
            max,
            max_included: false,
        }
    }

    fn contains(&self, v: f64) -> bool {
        let above = if self.min_included {
            v >= self.min
        } else {
            v > self.min
        };
        let below = if self.max_included {
            v <= self.max
        } else {
            v < self.max
        };
        above && below
    }
}

impl std::fmt::Display for FloatRange {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        // 1e38, not 100000000000000000000000000000000000000.
        let short = |x: f64| {
            if x != 0.0 && !(1e-3..1e6).contains(&x.abs()) {
                format!("{x:e}")
            } else {
                x.to_string()
            }
        };
        write!(
            f,
            "{}{}, {}{}",
            if self.min_included { '[' } else { '(' },
            short(self.min),
            short(self.max),
            if self.max_included { ']' } else { ')' }
        )
    }
}

/// The largest step count or cadence any option takes (a billion steps).
pub const BIG: usize = 1_000_000_000;

/// Learning rates: any finite non-negative f32 (a test drives a run to divergence with 1e30).
pub const LR_RANGE: FloatRange = FloatRange::closed(0.0, 1e38);

/// `value` must be a finite number in `range`: NaN and infinities are refused by name, as they
/// would otherwise pass every comparison-based check silently or poison the run.
pub fn check_float(option: &str, value: f32, range: FloatRange) -> Result<()> {
    if !value.is_finite() {
        bail!("{option} {value} is not a finite number: give a number in {range}");
    }
    if !range.contains(value as f64) {
        bail!("{option} {value} is out of range: give a number in {range}");
    }
    Ok(())
}

/// One option's value and its allowed range, for a table of checks run in order.
pub enum Bound<'a> {
    Int(&'a str, usize, RangeInclusive<usize>),
    Float(&'a str, f32, FloatRange),
}

/// Runs every check of `table`; the first that fails is the error.
pub fn check_all(table: &[Bound]) -> Result<()> {
    for b in table {
        match b {
            Bound::Int(name, v, r) => check_int(name, *v, r.clone())?,
            Bound::Float(name, v, r) => check_float(name, *v, *r)?,
        }
    }
    Ok(())
}

/// clap's value parser for whole-number options: `-1` reaches it (with `allow_negative_numbers`)
/// and is refused as negative, and a number past the machine's `usize` is refused as too large,
/// instead of clap's "unexpected argument '-1'" or a bare parse error.
pub fn whole_number(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    match t.parse::<i128>() {
        Ok(v) if v < 0 => Err(format!("{v} is negative; give a whole number >= 0")),
        // TOML (run.toml, --config) holds integers up to i64::MAX: a larger one could not be
        // saved for --resume.
        Ok(v) if v > i64::MAX as i128 => Err(format!("{v} is too large (at most {})", i64::MAX)),
        Ok(v) => usize::try_from(v).map_err(|_| format!("{v} is too large")),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// clap's value parser for `--seed`: [`whole_number`]'s messages, as a u64.
pub fn seed(s: &str) -> std::result::Result<u64, String> {
    whole_number(s).map(|v| v as u64)
}

/// Steps of a run: `epochs` passes of `per_epoch` steps, an error naming both (never a wrapped
/// count of 0 that would train nothing and exit 0).
pub fn total_steps(epochs: usize, per_epoch: usize, what: &str) -> Result<usize> {
    match epochs.checked_mul(per_epoch) {
        Some(n) => Ok(n),
        None => bail!(
            "--epochs {epochs} x {per_epoch} {what} per epoch overflows a step count; give fewer epochs or --max-steps"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_name_the_option_and_refuse_nan() {
        let e = check_int("--epochs", 0, 1..=1000).unwrap_err().to_string();
        assert_eq!(
            e,
            "--epochs 0 is out of range: give a whole number from 1 to 1000"
        );
        let e = check_float("--gamma", f32::NAN, FloatRange::closed(0.0, 1.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--gamma NaN is not a finite number"), "{e}");
        assert!(e.contains("[0, 1]"), "{e}");
        assert!(check_float("--clip", 1.0, FloatRange::open(0.0, 1.0)).is_err());
        assert!(check_float("--clip", 0.5, FloatRange::open(0.0, 1.0)).is_ok());
        assert!(check_float("--lr", f32::INFINITY, FloatRange::closed(0.0, 1.0)).is_err());
        assert_eq!(LR_RANGE.to_string(), "[0, 1e38]");
        assert_eq!(whole_number("12"), Ok(12));
        assert!(whole_number("-1").unwrap_err().contains("negative"));
        assert!(whole_number("99999999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(total_steps(usize::MAX, 2, "batches").is_err());
        assert_eq!(total_steps(3, 4, "batches").unwrap(), 12);
    }
}
