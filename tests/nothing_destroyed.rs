//! Issue #17's guarantees, each tried as an adversary would: no command deletes or replaces what
//! it did not create; an output that is an input is refused; output files are replaced only when
//! whole, only over a regular file (a link is followed, a device written through); one run per
//! folder; every scheduler signal saves and exits 128 + the signal; a resume refuses changed
//! inputs; eval-rm's numbers mean what they say.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::signal_after_rows;

fn prefer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prefer"))
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_fails_with(o: &Output, needle: &str) {
    let e = stderr_of(o);
    assert!(!o.status.success(), "succeeded; stderr:\n{e}");
    assert!(e.contains(needle), "no {needle:?} in:\n{e}");
}

/// Every file under `dir` with its bytes, to prove a folder untouched.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

fn init(out: &Path, extra: &[&str]) -> Output {
    prefer()
        .args(["init", "--preset", "tiny", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// `root/base` (tiny) and `root/train.jsonl` (`pairs` synthetic pairs).
fn base_and_data(root: &Path, pairs: usize) {
    let o = init(&root.join("base"), &[]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    std::fs::write(
        root.join("train.jsonl"),
        prefer::data::synthetic::synthetic_preferences(pairs, 4),
    )
    .unwrap();
}

fn rm_run(root: &Path, out: &Path, extra: &[&str]) -> Output {
    prefer()
        .args(["rm", "--device", "cpu", "--model"])
        .arg(root.join("base"))
        .arg("--data")
        .arg(root.join("train.jsonl"))
        .arg("--out")
        .arg(out)
        .args(["--batch-size", "8", "--grad-accum", "1"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn init_writes_only_into_a_new_or_empty_folder_or_its_own_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A user's folder, and a user's model folder that looks like a checkpoint.
    let user = root.join("user");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("notes.txt"), "mine").unwrap();
    std::fs::write(user.join("config.json"), "{}").unwrap();
    let before = snapshot(&user);
    for extra in [&[][..], &["--overwrite"]] {
        let o = init(&user, extra);
        assert_fails_with(&o, "prefer init did not write it");
        assert_fails_with(&o, "config.json, notes.txt");
        assert_eq!(
            snapshot(&user),
            before,
            "init {extra:?} touched a user's folder"
        );
    }
    // A sibling named like a staging folder is never touched either.
    std::fs::create_dir(root.join("base.tmp")).unwrap();
    std::fs::write(root.join("base.tmp/keep"), "mine").unwrap();
    let o = init(&root.join("base"), &[]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(std::fs::read(root.join("base.tmp/keep")).unwrap(), b"mine");

    // Its own checkpoint: refused without --overwrite, replaced with it.
    let weights = || std::fs::read(root.join("base/model.safetensors")).unwrap();
    let first = weights();
    assert_fails_with(
        &init(&root.join("base"), &["--seed", "9"]),
        "--overwrite replaces it",
    );
    assert_eq!(weights(), first);
    let o = init(&root.join("base"), &["--seed", "9", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_ne!(weights(), first, "--overwrite wrote the new seed's weights");

    // A path that is a file.
    std::fs::write(root.join("file"), "mine").unwrap();
    assert_fails_with(&init(&root.join("file"), &[]), "is not a folder");
    assert_eq!(std::fs::read(root.join("file")).unwrap(), b"mine");
}

#[test]
fn trainers_refuse_an_output_that_is_an_input_or_a_users_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    base_and_data(root, 16);
    let base_before = snapshot(&root.join("base"));

    // --out is the starting model (also through another spelling of the path).
    assert_fails_with(&rm_run(root, &root.join("base"), &[]), "is also --model");
    let o = rm_run(root, &root.join("base/../base"), &["--overwrite"]);
    assert_fails_with(&o, "is also --model");
    // PPO: --out is the policy.
    let o = prefer()
        .args(["ppo", "--device", "cpu", "--policy"])
        .arg(root.join("base"))
        .arg("--reward-model")
        .arg(root.join("base"))
        .arg("--prompts")
        .arg(root.join("train.jsonl"))
        .arg("--out")
        .arg(root.join("base"))
        .output()
        .unwrap();
    assert_fails_with(&o, "is also --policy");
    assert_eq!(snapshot(&root.join("base")), base_before);

    // A user's folder with a value/ inside (PPO writes OUT/value): refused, untouched.
    let user = root.join("user");
    std::fs::create_dir_all(user.join("value")).unwrap();
    std::fs::write(user.join("value/weights.bin"), "mine").unwrap();
    let before = snapshot(&user);
    for extra in [&[][..], &["--overwrite"]] {
        let o = rm_run(root, &user, extra);
        assert_fails_with(
            &o,
            "is not empty and not a prefer run folder (it holds value)",
        );
        assert_eq!(snapshot(&user), before);
    }
}

#[test]
fn overwrite_replaces_an_earlier_run_and_removes_only_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    base_and_data(root, 16);
    let run = root.join("run");
    let o = rm_run(root, &run, &["--max-steps", "1"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    std::fs::write(run.join("my-notes.txt"), "mine").unwrap();
    std::fs::create_dir(run.join("analysis")).unwrap();
    std::fs::write(run.join("analysis/plot.py"), "mine").unwrap();

    assert_fails_with(&rm_run(root, &run, &[]), "already holds a run");
    let o = rm_run(root, &run, &["--max-steps", "2"]);
    assert_fails_with(&o, "--overwrite");
    let o = rm_run(root, &run, &["--max-steps", "2", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let rows = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 2, "the new run's rows only:\n{rows}");
    assert_eq!(std::fs::read(run.join("my-notes.txt")).unwrap(), b"mine");
    assert_eq!(
        std::fs::read(run.join("analysis/plot.py")).unwrap(),
        b"mine"
    );
    // --overwrite with --resume is a contradiction.
    let o = prefer()
        .args(["rm", "--overwrite", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    assert_fails_with(&o, "give one of them");
}

#[test]
fn a_second_run_in_the_same_folder_fails_at_once_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    base_and_data(root, 512);
    let run = root.join("run");
    let first = prefer()
        .args(["rm", "--device", "cpu", "--model"])
        .arg(root.join("base"))
        .arg("--data")
        .arg(root.join("train.jsonl"))
        .arg("--out")
        .arg(&run)
        .args(["--batch-size", "1", "--grad-accum", "1", "--epochs", "50"])
        .args(["--log-every", "1", "--save-every", "100000"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    // Wait until the first run is training, then try a second one, fresh and as a resume.
    let wait_rows = std::time::Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |m| m.lines().count()) < 2 {
        assert!(
            wait_rows.elapsed().as_secs() < 120,
            "the first run never logged"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let resume = prefer()
        .args(["rm", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    assert_fails_with(
        &resume,
        &format!("is in use by another prefer run (pid {pid}"),
    );
    let overwrite = rm_run(root, &run, &["--overwrite"]);
    assert_fails_with(&overwrite, &format!("(pid {pid}"));
    let out = signal_after_rows(first, &run.join("metrics.jsonl"), 2, "TERM");
    assert_eq!(out.status.code(), Some(143), "{}", stderr_of(&out));
    // Once the first has ended, the folder is free again.
    let again = rm_run(root, &run, &["--overwrite", "--max-steps", "1"]);
    assert!(again.status.success(), "{}", stderr_of(&again));
}

fn dpo(root: &Path, out: &str) -> Command {
    let mut c = prefer();
    c.args(["dpo", "--device", "cpu", "--model"])
        .arg(root.join("base"))
        .arg("--data")
        .arg(root.join("train.jsonl"))
        .arg("--out")
        .arg(root.join(out))
        .args(["--lr", "1e-3", "--batch-size", "8", "--epochs", "3"])
        .args(["--save-every", "1000", "--log-every", "1"])
        .arg("--ref-cache-dir")
        .arg(root.join("cache"));
    c
}

#[test]
fn every_scheduler_signal_saves_exits_128_plus_it_and_resumes_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    base_and_data(root, 256);
    let straight = dpo(root, "straight").output().unwrap();
    assert!(straight.status.success(), "{}", stderr_of(&straight));
    let weights = |out: &str| std::fs::read(root.join(out).join("model.safetensors")).unwrap();
    for (sig, name, code) in [
        ("TERM", "SIGTERM", 143),
        ("HUP", "SIGHUP", 129),
        ("USR1", "SIGUSR1", 138),
    ] {
        let out = format!("run-{sig}");
        let child = dpo(root, &out)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let o = signal_after_rows(child, &root.join(&out).join("metrics.jsonl"), 3, sig);
        let e = stderr_of(&o);
        assert_eq!(o.status.code(), Some(code), "{sig}: {e}");
        assert!(
            e.contains(&format!("interrupted by {name} at step ")),
            "{e}"
        );
        assert!(root.join(&out).join("checkpoint/config.json").is_file());
        let resumed = prefer()
            .args(["dpo", "--resume"])
            .arg(root.join(&out))
            .output()
            .unwrap();
        assert!(resumed.status.success(), "{}", stderr_of(&resumed));
        assert!(
            weights(&out) == weights("straight"),
            "{sig}: the resumed run differs"
        );
    }
}

#[test]
fn a_resume_refuses_a_changed_model_data_or_tokenizer_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    base_and_data(root, 64);
    let run = root.join("run");
    let o = dpo(root, "run")
        .args(["--stop-after", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr_of(&o));
    let resume = || {
        prefer()
            .args(["dpo", "--resume"])
            .arg(&run)
            .output()
            .unwrap()
    };
    // A copy with the same bytes (new mtime) still resumes; each changed input is named.
    let data = root.join("train.jsonl");
    let original = std::fs::read(&data).unwrap();
    let tokenizer = root.join("base/tokenizer.json");
    let original_tok = std::fs::read(&tokenizer).unwrap();
    let cases: [(&Path, Vec<u8>); 2] = [
        (&data, [original.as_slice(), b"\n"].concat()),
        (
            &tokenizer,
            original_tok.iter().copied().chain(*b" ").collect(),
        ),
    ];
    for (file, changed) in cases {
        let keep = std::fs::read(file).unwrap();
        std::fs::write(file, &changed).unwrap();
        let o = resume();
        assert_fails_with(
            &o,
            &format!("{} changed since this run started", file.display()),
        );
        std::fs::write(file, &keep).unwrap();
    }
    // A new base model in place (another seed): the DPO reference would silently change.
    let o = init(&root.join("base"), &["--seed", "5", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let o = resume();
    assert_fails_with(&o, "base/model.safetensors changed since this run started");
    let o = init(&root.join("base"), &["--overwrite"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let o = resume();
    assert!(o.status.success(), "same bytes again: {}", stderr_of(&o));
}

fn logprobs(model: &Path, input: &Path, out: &Path) -> Output {
    prefer()
        .args(["logprobs", "--device", "cpu", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn output_files_are_replaced_whole_only_over_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    base_and_data(root, 4);
    let base = root.join("base");
    let input = root.join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"hello\"}\n{\"text\": \"there\"}\n").unwrap();

    // --input x --out x: refused, the input kept.
    let o = logprobs(&base, &input, &input);
    assert_fails_with(&o, "is also --input");
    assert_eq!(std::fs::read_to_string(&input).unwrap().lines().count(), 2);

    // A failing run leaves the previous output as it was, and no temporary file.
    let out = root.join("out.jsonl");
    std::fs::write(&out, "previous\n").unwrap();
    let bad = root.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"ok\"}\n{\"input_ids\": [999999]}\n").unwrap();
    assert_fails_with(&logprobs(&base, &bad, &out), "bad.jsonl:2");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous\n");
    let leftovers = || {
        std::fs::read_dir(root)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("prefer-tmp")
            })
            .count()
    };
    assert_eq!(leftovers(), 0);

    // A symbolic link: the file it points to is replaced, the link stays a link.
    let target = root.join("target.jsonl");
    std::fs::write(&target, "previous\n").unwrap();
    let link = root.join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = logprobs(&base, &input, &link);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap().lines().count(), 2);

    // A device is written through, never replaced.
    let o = logprobs(&base, &input, Path::new("/dev/null"));
    assert!(o.status.success(), "{}", stderr_of(&o));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    // A folder is not a file.
    assert_fails_with(&logprobs(&base, &input, root), "is a folder");
    assert_eq!(leftovers(), 0);

    // generate: --out equal to --prompts is refused; a link is followed.
    let prompts = root.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"hi\"}\n").unwrap();
    let gen = |out: &Path| {
        prefer()
            .args([
                "generate",
                "--device",
                "cpu",
                "--max-new-tokens",
                "4",
                "--model",
            ])
            .arg(&base)
            .arg("--prompts")
            .arg(&prompts)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    assert_fails_with(&gen(&prompts), "is also --prompts");
    assert_eq!(
        std::fs::read_to_string(&prompts).unwrap(),
        "{\"prompt\": \"hi\"}\n"
    );
    let o = gen(&link);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read_to_string(&target)
        .unwrap()
        .contains("completion_ids"));
    assert_eq!(leftovers(), 0);
}

/// Waits until process `pid` catches SIGTERM (its handler is installed: bit 15 of SigCgt in
/// /proc/PID/status), so the signal tests do not depend on how fast it starts.
fn wait_until_it_handles_sigterm(pid: u32) {
    let start = std::time::Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0);
        if caught & (1 << (15 - 1)) != 0 {
            return;
        }
        assert!(
            start.elapsed().as_secs() < 120,
            "pid {pid} never handled SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn generate_stops_cleanly_on_sigterm_leaving_its_output_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    base_and_data(root, 4);
    let prompts = root.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"hello\"}\n".repeat(2000)).unwrap();
    let out = root.join("out.jsonl");
    std::fs::write(&out, "previous\n").unwrap();
    let child = prefer()
        .args([
            "generate",
            "--device",
            "cpu",
            "--max-new-tokens",
            "200",
            "--n",
            "4",
        ])
        .args(["--model"])
        .arg(root.join("base"))
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(&out)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_it_handles_sigterm(child.id());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let o = child.wait_with_output().unwrap();
    let e = stderr_of(&o);
    assert_eq!(o.status.code(), Some(143), "{e}");
    assert!(e.contains("stopped by SIGTERM"), "{e}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous\n");
    let names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("prefer-tmp")), "{names:?}");
}

#[test]
fn eval_rm_refuses_no_pairs_and_counts_pairs_cut_to_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let rm = root.join("rm");
    let o = init(&rm, &["--scalar-head"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let eval = |data: &Path| {
        prefer()
            .args(["eval-rm", "--device", "cpu", "--model"])
            .arg(&rm)
            .arg("--data")
            .arg(data)
            .output()
            .unwrap()
    };
    let empty = root.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    assert_fails_with(&eval(&empty), "no preference pairs to score");

    // One pair longer than the model's context: scored within the context, and counted.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rm.join("config.json")).unwrap()).unwrap();
    let context = cfg["max_position_embeddings"].as_u64().unwrap() as usize;
    let long = "a".repeat(context * 2);
    let data = root.join("long.jsonl");
    std::fs::write(
        &data,
        format!(
            "{{\"prompt\": \"{long}\", \"chosen\": \" yes\", \"rejected\": \" no\"}}\n{{\"prompt\": \"q\", \"chosen\": \" yes\", \"rejected\": \" no\"}}\n"
        ),
    )
    .unwrap();
    let o = eval(&data);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(stderr_of(&o).contains("1 truncated"), "{}", stderr_of(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["pairs"], 2);
}
