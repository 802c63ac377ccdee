//! What the user sees of a run: metrics.jsonl (one object per optimiser step), and PNG plots of
//! the curves at the end.

use anyhow::{Context, Result};
use plotters::prelude::*;
use std::io::{BufRead, Write};
use std::path::Path;

pub struct MetricsLog {
    /// None: a rank other than 0 of a data-parallel run, whose rows rank 0 writes.
    file: Option<std::fs::File>,
}

impl MetricsLog {
    /// A log that writes nothing.
    pub fn nowhere() -> Self {
        MetricsLog { file: None }
    }

    /// [`MetricsLog::open`] on rank 0 (`writes`), [`MetricsLog::nowhere`] on the others.
    pub fn open_if(writes: bool, path: &Path, from_step: usize) -> Result<Self> {
        if writes {
            Self::open(path, from_step)
        } else {
            Ok(Self::nowhere())
        }
    }

    /// Opens `path` for appending, first dropping rows with step ≥ `from_step` (a resumed run
    /// rewrites the steps after its checkpoint).
    pub fn open(path: &Path, from_step: usize) -> Result<Self> {
        let kept: Vec<String> = match std::fs::File::open(path) {
            Ok(f) => std::io::BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| (s as usize) < from_step)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        // The kept rows replace the file whole (a crash here keeps the old rows), then new rows
        // are appended.
        let mut rewrite = crate::output::AtomicFile::create(path)?;
        for l in kept {
            writeln!(rewrite, "{l}")?;
        }
        rewrite.commit()?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsLog { file: Some(file) })
    }

    pub fn write(&mut self, row: &serde_json::Value) -> Result<()> {
        if let Some(file) = &mut self.file {
            writeln!(file, "{row}")?;
            file.flush()?;
        }
        Ok(())
    }
}

/// Reads `key` against `step` from a metrics file.
fn series(path: &Path, key: &str) -> Vec<(f64, f64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?)))
        .collect()
}

/// A font for the plots' labels, from the usual system places; without one the plots are drawn
/// without text.
fn register_font() -> bool {
    const CANDIDATES: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
    ];
    for path in CANDIDATES {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Draws each of `keys` (from `metrics`, and from `eval` when it has the key) against the step
/// into one PNG of panels under `title`, with a legend (training per step, held-out points).
/// Writes nothing and returns false when no key has a single point.
pub fn plot_curves(
    metrics: &Path,
    eval: &Path,
    keys: &[&str],
    out: &Path,
    title: &str,
) -> Result<bool> {
    let any_point = keys
        .iter()
        .any(|k| !series(metrics, k).is_empty() || !series(eval, &format!("eval_{k}")).is_empty());
    if !any_point {
        return Ok(false);
    }
    let text = register_font();
    let root = BitMapBackend::new(out, (1200, 60 + 400 * keys.len().div_ceil(2) as u32))
        .into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = if text {
        root.titled(title, ("sans-serif", 26))
            .map_err(|e| anyhow::anyhow!("{e}"))?
    } else {
        root
    };
    let panels = root.split_evenly((keys.len().div_ceil(2), 2));
    for (panel, key) in panels.iter().zip(keys) {
        let train = series(metrics, key);
        let held_out = series(eval, &format!("eval_{key}"));
        let all: Vec<_> = train.iter().chain(&held_out).collect();
        if all.is_empty() {
            continue;
        }
        let (x0, x1) = all
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = all
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let pad = ((y1 - y0) * 0.05).max(1e-6);
        let mut chart = ChartBuilder::on(panel);
        chart.margin(10);
        if text {
            chart
                .caption(*key, ("sans-serif", 22))
                .x_label_area_size(30)
                .y_label_area_size(80);
        }
        let mut chart = chart
            .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Small values (a learning rate of 5e-7) in scientific notation, not as "0.0".
        // and enough decimals to tell the ticks of a narrow range apart (0.69312 vs 0.69309).
        let small = y0.abs().max(y1.abs()) < 1e-2;
        let decimals = (-(y1 - y0).max(1e-12).log10()).ceil().clamp(0.0, 7.0) as usize + 1;
        let y_fmt = |v: &f64| {
            if small {
                format!("{v:.2e}")
            } else {
                format!("{v:.decimals$}")
            }
        };
        let mut mesh = chart.configure_mesh();
        if !text {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.x_desc("step")
            .y_desc(*key)
            .y_label_formatter(&y_fmt)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let few = train.len() < 3; // a line of one point draws nothing: mark the points too
        if !train.is_empty() {
            chart
                .draw_series(LineSeries::new(train.clone(), &BLUE))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label("training, per step")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
            if few {
                chart
                    .draw_series(train.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        if !held_out.is_empty() {
            chart
                .draw_series(LineSeries::new(held_out.clone(), RED.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chart
                .draw_series(held_out.iter().map(|&p| Circle::new(p, 4, RED.filled())))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label("held-out evaluation")
                .legend(|(x, y)| Circle::new((x + 10, y), 4, RED.filled()));
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    root.present()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(true)
}
