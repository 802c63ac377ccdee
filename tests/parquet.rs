//! Hugging Face datasets' parquet files as data (tests/fixtures/parquet, written by pyarrow with
//! tests/reference/make_parquet_fixture.py): the same rows as JSONL train bit for bit the same,
//! shards read as one set in name order, nested message lists read, bad files are clear errors.

mod common;
use common::{path_arg as s, prefer_output as prefer, stderr_text as stderr};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parquet")
        .join(name)
}

fn init(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut args = vec!["init", "--preset", "tiny", "--out", s(&path)];
    args.extend(extra);
    let out = prefer(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    path
}

/// metrics.jsonl without its timings, and the trained weights' bytes.
fn dpo_run(model: &Path, data: &Path, out: &Path) -> (Vec<serde_json::Value>, Vec<u8>) {
    let o = prefer(&[
        "dpo",
        "--device",
        "cpu",
        "--model",
        s(model),
        "--data",
        s(data),
        "--out",
        s(out),
        "--batch-size",
        "4",
        "--max-steps",
        "4",
        "--log-every",
        "1",
        "--lr",
        "1e-3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let m = v.as_object_mut().unwrap();
            m.retain(|k, _| !k.contains("time") && !k.contains("per_s") && !k.contains("elapsed"));
            v
        })
        .collect();
    (
        metrics,
        std::fs::read(out.join("model.safetensors")).unwrap(),
    )
}

#[test]
fn the_same_rows_as_jsonl_and_as_parquet_train_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let model = init(dir.path(), "base", &[]);
    let (want_metrics, want_weights) =
        dpo_run(&model, &fixture("prefs.jsonl"), &dir.path().join("jsonl"));
    assert_eq!(want_metrics.len(), 4);
    let inputs = [
        fixture("prefs.parquet"),
        fixture("zstd.parquet"),
        fixture("shards"),
        fixture("shards/train-*.parquet"),
    ];
    for (i, data) in inputs.iter().enumerate() {
        let (metrics, weights) = dpo_run(&model, data, &dir.path().join(format!("pq{i}")));
        assert_eq!(metrics, want_metrics, "{}", data.display());
        assert!(weights == want_weights, "{}: other weights", data.display());
    }
}

#[test]
fn nested_message_lists_read_from_parquet_as_from_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let rm = init(dir.path(), "rm", &["--scalar-head"]);
    let report = |data: &Path| {
        let o = prefer(&[
            "eval-rm",
            "--device",
            "cpu",
            "--model",
            s(&rm),
            "--data",
            s(data),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let from_jsonl = report(&fixture("messages.jsonl"));
    assert_eq!(from_jsonl["pairs"], 6);
    assert_eq!(report(&fixture("messages.parquet")), from_jsonl);
}

#[test]
fn bad_parquet_is_a_clear_error_naming_the_file_or_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let rm = init(dir.path(), "rm", &["--scalar-head"]);
    // Not parquet at all.
    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, b"this is not parquet").unwrap();
    let o = prefer(&[
        "eval-rm",
        "--device",
        "cpu",
        "--model",
        s(&rm),
        "--data",
        s(&junk),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("junk.parquet: not a readable parquet file"),
        "{}",
        stderr(&o)
    );
    // Cut short: the footer is gone.
    let bytes = std::fs::read(fixture("prefs.parquet")).unwrap();
    let cut = dir.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let o = prefer(&[
        "eval-rm",
        "--device",
        "cpu",
        "--model",
        s(&rm),
        "--data",
        s(&cut),
    ]);
    assert!(
        stderr(&o).contains("cut.parquet: not a readable parquet file"),
        "{}",
        stderr(&o)
    );
    // A glob that matches nothing, and a folder with no parquet in it.
    let none = dir.path().join("train-*.parquet");
    let o = prefer(&[
        "eval-rm",
        "--device",
        "cpu",
        "--model",
        s(&rm),
        "--data",
        s(&none),
    ]);
    assert!(
        stderr(&o).contains("no parquet file matches"),
        "{}",
        stderr(&o)
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = prefer(&[
        "eval-rm",
        "--device",
        "cpu",
        "--model",
        s(&rm),
        "--data",
        s(&empty),
    ]);
    assert!(
        stderr(&o).contains("a folder with no parquet files"),
        "{}",
        stderr(&o)
    );
    // A missing column: preference rows given as GSM8K's, named by file, row and column.
    let o = prefer(&[
        "eval",
        "--task",
        "gsm8k",
        "--data",
        s(&fixture("prefs.parquet")),
        "--responses",
        s(&fixture("prefs.jsonl")),
    ]);
    let e = stderr(&o);
    assert!(
        e.contains("prefs.parquet:1") && e.contains("no \"question\""),
        "{e}"
    );
}

/// google/IFEval's parquet (kwargs a list of structs carrying every argument, mostly null) scores
/// as the same rows in JSONL do.
#[test]
fn ifeval_rows_read_from_parquet_as_from_jsonl() {
    let jsonl = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ifeval/rows.jsonl");
    let run = |data: &Path| {
        let out = prefer(&[
            "eval",
            "--task",
            "ifeval",
            "--data",
            s(data),
            "--responses",
            s(&jsonl),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let from_parquet = run(&fixture("ifeval.parquet"));
    assert_eq!(from_parquet, run(&jsonl));
    assert_eq!(from_parquet["rows"], 60);
    assert_eq!(from_parquet["instructions"], 79);
}
