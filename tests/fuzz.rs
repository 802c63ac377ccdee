//! Fuzzing, in-process, of every reader of user input and of the option sets: preference and
//! prompt JSONL, the safetensors reader, config.json, and `prefer rm`/`dpo`, `ppo` and `generate`
//! options from argument vectors and `--config` TOML files. No input may panic (proptest catches
//! a panic and reports the smallest input that causes it); what is accepted must also be sane
//! (token ids inside the vocabulary, pairs within the length limits, finite weights, options in
//! range).
//!
//! `PREFER_FUZZ_CASES` sets the inputs per target (default 20000: about 30 s for all seven in
//! release on 2 cores). The figure in the README came from
//! `PREFER_FUZZ_CASES=1500000 cargo test --release --test fuzz -- --nocapture`.

use clap::Parser;
use prefer::data::chat_template::ChatTemplate;
use prefer::data::preference::{load_preferences, DataOptions, Encoder, Overflow};
use prefer::data::prompts::read_prompts;
use prefer::data::tokenizer::{byte_tokenizer_json, TextTokenizer};
use prefer::model::init::init_params;
use prefer::model::weights::{load_params, save_checkpoint, SaveDtype};
use prefer::model::{LlamaConfig, ParamLayout};
use prefer::rl::PpoArgs;
use prefer::train::TrainerArgs;
use prefer::train::{TrainArgs, TrainerKind};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use std::path::Path;

fn cases() -> u32 {
    std::env::var("PREFER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Runs `check` on `cases()` inputs from `strategy`; a panic or a failed check fails the test
/// with the (shrunk) input. `check` says whether the input was accepted; the count of accepted
/// inputs and the time are printed, for the README's figure and to show the generators reach
/// past the first error.
fn fuzz<S: Strategy>(
    target: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<bool, TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = AtomicUsize::new(0);
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    let start = std::time::Instant::now();
    let mut runner = TestRunner::new(config);
    let counted = |v| {
        let ok = check(v)?;
        accepted.fetch_add(usize::from(ok), Ordering::Relaxed);
        Ok(())
    };
    if let Err(e) = runner.run(&strategy, counted) {
        panic!("{target}: {e}");
    }
    eprintln!(
        "fuzz {target}: {} inputs ({} accepted) in {:.1} s",
        cases(),
        accepted.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
}

/// A folder for the files each input is written to: in memory (/dev/shm) where there is one, as
/// a disk's file-system journal makes each rewrite cost half a millisecond.
fn scratch() -> tempfile::TempDir {
    match Path::new("/dev/shm") {
        shm if shm.is_dir() => tempfile::tempdir_in(shm).unwrap(),
        _ => tempfile::tempdir().unwrap(),
    }
}

// ---- values -----------------------------------------------------------------------------------

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "prompt",
            "chosen",
            "rejected",
            "prompt_ids",
            "chosen_ids",
            "rejected_ids",
            "margin",
            "messages",
            "role",
            "content",
            "answer",
        ])
        .prop_map(String::from),
        "[a-z_]{1,8}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ".{0,24}",
        1 => Just(String::new()),
        1 => Just(" ".into()),
        1 => (1usize..4000).prop_map(|n| "ab ".repeat(n)),
        1 => "[<|>/a-z\\\\{}%\n]{0,16}", // template and tokenizer specials
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            0i64,
            -1,
            1,
            2,
            255,
            256,
            258,
            259,
            1 << 31,
            u32::MAX as i64,
            i64::MAX,
            i64::MIN,
        ])
        .prop_map(|i| json!(i)),
        any::<u64>().prop_map(|i| json!(i)),
        any::<f64>().prop_map(|f| json!(f)), // non-finite becomes null
        (-1e40f64..1e40).prop_map(|f| json!(f)),
    ]
}

fn message() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["user", "assistant", "system", "tool", ""]),
        text(),
    )
        .prop_map(|(role, content)| json!({"role": role, "content": content}))
}

fn ids() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        prop_oneof![8 => (0u32..259).prop_map(|i| json!(i)), 1 => number()],
        0..40,
    )
    .prop_map(Value::Array)
}

/// Any JSON, weighted towards the shapes the readers look for.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
        message(),
        ids(),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(message(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One JSONL line: a well-formed shape with random contents, an object of random keys, or text
/// that need not be JSON at all.
fn line(shapes: Vec<Value>) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(shapes).prop_flat_map(|shape| {
            let keys: Vec<String> = shape.as_object().unwrap().keys().cloned().collect();
            prop::collection::vec(
                prop_oneof![
                    2 => text().prop_map(Value::String),
                    1 => prop::collection::vec(message(), 0..4).prop_map(Value::Array),
                    1 => ids(),
                    1 => json_value(),
                ],
                keys.len(),
            )
            .prop_map(move |vals| {
                Value::Object(keys.iter().cloned().zip(vals).collect()).to_string()
            })
        }),
        2 => prop::collection::vec((key(), json_value()), 0..5)
            .prop_map(|kv| Value::Object(kv.into_iter().collect()).to_string()),
        1 => ".{0,64}",
        1 => prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn jsonl(shapes: Vec<Value>) -> impl Strategy<Value = String> {
    prop::collection::vec(line(shapes), 1..5).prop_map(|lines| lines.join("\n"))
}

/// The tiny model, its byte tokenizer and the Tulu template, shared by the data targets.
struct Tiny {
    cfg: LlamaConfig,
    tokenizer: TextTokenizer,
    template: ChatTemplate,
    dir: tempfile::TempDir,
}

fn tiny() -> Tiny {
    let dir = scratch();
    Tiny {
        cfg: LlamaConfig::preset("tiny").unwrap(),
        tokenizer: TextTokenizer::from_json(&byte_tokenizer_json()).unwrap(),
        template: ChatTemplate::for_model(dir.path()).unwrap(),
        dir,
    }
}

// ---- data readers -----------------------------------------------------------------------------

#[test]
fn preference_jsonl_never_panics_and_keeps_pairs_within_limits() {
    let t = tiny();
    let enc = Encoder {
        tokenizer: &t.tokenizer,
        template: &t.template,
        cfg: &t.cfg,
    };
    let path = t.dir.path().join("prefs.jsonl");
    let shapes = vec![
        json!({"prompt": 0, "chosen": 0, "rejected": 0}),
        json!({"chosen": 0, "rejected": 0}),
        json!({"prompt": 0, "chosen": 0, "rejected": 0, "margin": 0}),
        json!({"prompt_ids": 0, "chosen_ids": 0, "rejected_ids": 0}),
    ];
    let opts = (
        1usize..40,
        1usize..80,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(prompt, extra, truncate, skip_bad, chat_template)| DataOptions {
                max_prompt_len: prompt,
                max_len: prompt + extra,
                overflow: if truncate {
                    Overflow::Truncate
                } else {
                    Overflow::Drop
                },
                skip_bad,
                chat_template,
            },
        );
    fuzz("preference JSONL", (jsonl(shapes), opts), |(text, opts)| {
        std::fs::write(&path, &text).unwrap();
        let read = load_preferences(&path, &enc, &opts);
        if let Ok((pairs, report)) = &read {
            prop_assert_eq!(pairs.len(), report.pairs);
            for p in pairs {
                prop_assert!(p.prompt.len() <= opts.max_prompt_len, "{p:?}");
                prop_assert!(p.max_len() <= opts.max_len, "{p:?}");
                prop_assert!(!p.chosen.is_empty() && !p.rejected.is_empty());
                let all = p.prompt.iter().chain(&p.chosen).chain(&p.rejected);
                prop_assert!(all.copied().all(|id| (id as usize) < t.cfg.vocab_size));
            }
        }
        Ok(read.is_ok())
    });
}

#[test]
fn prompt_jsonl_never_panics_and_keeps_ids_in_the_vocabulary() {
    let t = tiny();
    let enc = Encoder {
        tokenizer: &t.tokenizer,
        template: &t.template,
        cfg: &t.cfg,
    };
    let path = t.dir.path().join("prompts.jsonl");
    let shapes = vec![
        json!({"prompt": 0}),
        json!({"messages": 0}),
        json!({"prompt_ids": 0}),
        json!({"prompt": 0, "answer": 0}),
    ];
    fuzz("prompt JSONL", jsonl(shapes), |text| {
        std::fs::write(&path, &text).unwrap();
        let read = read_prompts(&path, &enc);
        if let Ok(prompts) = &read {
            for p in prompts {
                prop_assert!(!p.ids.is_empty());
                prop_assert!(p.ids.iter().all(|&id| (id as usize) < t.cfg.vocab_size));
            }
        }
        Ok(read.is_ok())
    });
}

// ---- checkpoints ------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Mutation {
    /// Overwrite bytes at (position, value) pairs.
    Bytes(Vec<(usize, u8)>),
    Truncate(usize),
    /// A new 8-byte header length.
    HeaderLen(u64),
    /// One tensor's entry in the header: a field replaced by any JSON.
    Entry(usize, String, Value),
    Random(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => prop::collection::vec((any::<usize>(), any::<u8>()), 1..8).prop_map(Mutation::Bytes),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => prop_oneof![any::<u64>(), 0u64..4096].prop_map(Mutation::HeaderLen),
        3 => (
            any::<usize>(),
            prop::sample::select(vec!["dtype", "shape", "data_offsets", "__metadata__", "x"]),
            prop_oneof![
                json_value(),
                prop::sample::select(vec!["F32", "BF16", "F16", "F64", "I64", "U8", "BOOL", "F8_E4M3"])
                    .prop_map(|d| json!(d)),
                prop::collection::vec(prop_oneof![0u64..300, any::<u64>()], 0..4)
                    .prop_map(|v| json!(v)),
            ]
        )
            .prop_map(|(i, f, v)| Mutation::Entry(i, f.to_string(), v)),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Mutation::Random),
    ]
}

/// A valid safetensors file with `m` applied.
fn mutate(valid: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = valid.to_vec();
    match m {
        Mutation::Bytes(edits) => {
            for &(at, v) in edits {
                let i = at % b.len();
                b[i] = v;
            }
        }
        Mutation::Truncate(at) => b.truncate(at % b.len()),
        Mutation::HeaderLen(n) => b[..8].copy_from_slice(&n.to_le_bytes()),
        Mutation::Entry(i, field, v) => {
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            let mut header: serde_json::Map<String, Value> =
                serde_json::from_slice(&b[8..8 + n]).unwrap();
            let names: Vec<String> = header.keys().cloned().collect();
            let name = &names[i % names.len()];
            if let Some(entry) = header.get_mut(name).and_then(Value::as_object_mut) {
                entry.insert(field.clone(), v.clone());
            }
            let text = Value::Object(header).to_string().into_bytes();
            let mut out = (text.len() as u64).to_le_bytes().to_vec();
            out.extend(text);
            out.extend(&b[8 + n..]);
            b = out;
        }
        Mutation::Random(bytes) => b = bytes.clone(),
    }
    b
}

#[test]
fn safetensors_reader_never_panics_and_loads_only_finite_weights() {
    let cfg = LlamaConfig {
        num_hidden_layers: 1,
        ..LlamaConfig::preset("tiny").unwrap()
    };
    let layout = ParamLayout::new(&cfg);
    let dir = scratch();
    let params = init_params(&cfg, &layout, 0);
    save_checkpoint(dir.path(), &cfg, &params, SaveDtype::Bf16, &[]).unwrap();
    let file = dir.path().join("model.safetensors");
    let valid = std::fs::read(&file).unwrap();
    assert_eq!(load_params(dir.path(), &layout).unwrap().len(), layout.len);
    fuzz("safetensors", mutation(), |m| {
        std::fs::write(&file, mutate(&valid, &m)).unwrap();
        let read = load_params(dir.path(), &layout);
        if let Ok(p) = &read {
            prop_assert_eq!(p.len(), layout.len);
            prop_assert!(p.iter().all(|x| x.is_finite()));
        }
        Ok(read.is_ok())
    });
}

#[test]
fn config_json_never_panics_and_accepts_only_sane_models() {
    let dir = scratch();
    let path = dir.path().join("config.json");
    let valid = LlamaConfig::preset("tiny").unwrap().to_hf_json("float32");
    let fields: Vec<String> = valid.as_object().unwrap().keys().cloned().collect();
    let edits = prop::collection::vec(
        (
            prop_oneof![prop::sample::select(fields), key()],
            prop_oneof![number(), json_value()],
        ),
        0..4,
    );
    let input = prop_oneof![
        6 => edits.prop_map(move |edits| {
            let mut v = valid.clone();
            for (k, x) in edits {
                v[k] = x;
            }
            v.to_string()
        }),
        1 => ".{0,64}",
    ];
    fuzz("config.json", input, |text| {
        std::fs::write(&path, &text).unwrap();
        let read = LlamaConfig::from_hf_json(&path);
        if let Ok(cfg) = &read {
            prop_assert!(cfg.validate().is_ok());
            prop_assert!(cfg.rms_norm_eps > 0.0 && cfg.rms_norm_eps.is_finite());
            prop_assert!(cfg.rope_theta > 0.0 && cfg.rope_theta.is_finite());
            // The layout's size is computed from these without overflow.
            let n = cfg.vocab_size as u128 * cfg.hidden_size as u128;
            prop_assert!(n < 1 << 40);
        }
        Ok(read.is_ok())
    });
}

// ---- options ----------------------------------------------------------------------------------

/// A value as a flag would carry it.
fn flag_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "1",
            "-1",
            "2",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "-9223372036854775808",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "1e40",
            "-0.5",
            "0.5",
            "1e-9",
            "true",
            "false",
            "",
            "cpu",
            "sigmoid",
            "grpo",
            "k3",
            "truncate",
        ])
        .prop_map(String::from),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f32>().prop_map(|f| f.to_string()),
        ".{0,8}",
    ]
}

/// A TOML value for the same keys.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "1",
            "-1",
            "9223372036854775807",
            "nan",
            "inf",
            "-inf",
            "1e40",
            "-0.5",
            "0.5",
            "true",
            "\"cpu\"",
            "\"sigmoid\"",
            "\"x\"",
            "[1]",
        ])
        .prop_map(String::from),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
    ]
}

/// An argument vector of `--flag value` pairs (and bare flags), plus a `--config` TOML text.
fn options(flags: &'static [&'static str]) -> impl Strategy<Value = (Vec<String>, Option<String>)> {
    let arg =
        (prop::sample::select(flags.to_vec()), flag_value(), 0u8..4).prop_map(|(f, v, bare)| {
            if bare == 0 {
                vec![format!("--{f}")]
            } else {
                vec![format!("--{f}"), v]
            }
        });
    let toml = prop::collection::vec((prop::sample::select(flags.to_vec()), toml_value()), 0..4)
        .prop_map(|kv| {
            kv.into_iter()
                .map(|(k, v)| format!("{k} = {v}\n"))
                .collect::<String>()
        });
    (
        prop::collection::vec(arg, 0..6).prop_map(|a| a.concat()),
        prop::option::of(toml),
    )
}

const TRAIN_FLAGS: &[&str] = &[
    "lr",
    "epochs",
    "max-steps",
    "batch-size",
    "grad-accum",
    "warmup-ratio",
    "decay",
    "weight-decay",
    "max-grad-norm",
    "recompute",
    "seed",
    "device",
    "save-every",
    "eval-every",
    "log-every",
    "max-prompt-len",
    "max-len",
    "overflow",
    "skip-bad",
    "loss",
    "beta",
    "label-smoothing",
    "simpo-gamma",
];

#[derive(Parser, Debug)]
struct TrainCli {
    #[command(flatten)]
    args: TrainArgs,
}

#[test]
fn train_options_never_panic_and_resolve_only_to_values_in_range() {
    let dir = scratch();
    let config = dir.path().join("run.toml");
    fuzz(
        "rm/dpo options",
        (options(TRAIN_FLAGS), any::<bool>()),
        |((argv, toml), dpo)| {
            let mut full = vec!["prefer".to_string()];
            full.extend(["--model", "m", "--data", "d", "--out", "o"].map(String::from));
            full.extend(argv);
            if let Some(t) = &toml {
                std::fs::write(&config, t).unwrap();
                full.extend(["--config".into(), config.display().to_string()]);
            }
            let Ok(cli) = TrainCli::try_parse_from(&full) else {
                return Ok(false);
            };
            let kind = if dpo {
                TrainerKind::Dpo
            } else {
                TrainerKind::RewardModel
            };
            let read = cli.args.with_files().and_then(|a| a.resolve(kind));
            if let Ok(o) = &read {
                prop_assert!((1..=1_000_000).contains(&o.run.epochs));
                prop_assert!(o.batch_size >= 1 && o.grad_accum >= 1 && o.run.save_every >= 1);
                prop_assert!(o.run.lr.is_finite() && o.run.lr >= 0.0);
                prop_assert_eq!(o.dpo.is_some(), dpo);
                if let Some(d) = &o.dpo {
                    prop_assert!(d.config.beta.is_finite() && d.config.beta > 0.0);
                }
                prop_assert!(o.data_opts.max_prompt_len < o.data_opts.max_len);
            }
            Ok(read.is_ok())
        },
    );
}

const PPO_FLAGS: &[&str] = &[
    "algo",
    "reward",
    "math-weight",
    "kl-coef",
    "adaptive-kl",
    "target-kl",
    "kl-horizon",
    "kl-estimator",
    "kl-clamp",
    "eos-penalty",
    "no-eos-trick",
    "reward-norm",
    "reward-whiten",
    "no-advantage-whiten",
    "rollouts-per-prompt",
    "prompt-batch-size",
    "ppo-epochs",
    "minibatch-size",
    "grad-accum",
    "max-steps",
    "epochs",
    "max-new-tokens",
    "temperature",
    "max-batch",
    "kv-memory",
    "lr",
    "clip",
    "value-clip",
    "value-coef",
    "gamma",
    "lam",
    "max-grad-norm",
    "recompute",
    "seed",
    "save-every",
];

#[derive(Parser, Debug)]
struct PpoCli {
    #[command(flatten)]
    args: PpoArgs,
}

#[test]
fn ppo_options_never_panic_and_resolve_only_to_values_in_range() {
    let dir = scratch();
    let config = dir.path().join("ppo.toml");
    fuzz("ppo options", options(PPO_FLAGS), |(argv, toml)| {
        let mut full = vec!["prefer".to_string()];
        full.extend(
            [
                "--policy",
                "p",
                "--reward-model",
                "r",
                "--prompts",
                "q",
                "--out",
                "o",
            ]
            .map(String::from),
        );
        full.extend(argv);
        if let Some(t) = &toml {
            std::fs::write(&config, t).unwrap();
            full.extend(["--config".into(), config.display().to_string()]);
        }
        let Ok(cli) = PpoCli::try_parse_from(&full) else {
            return Ok(false);
        };
        let read = cli.args.with_files().and_then(PpoArgs::resolve);
        if let Ok(o) = &read {
            let g = o.switches.gae;
            prop_assert!((0.0..=1.0).contains(&g.gamma) && (0.0..=1.0).contains(&g.lambda));
            prop_assert!(o.value_clip > 0.0 && o.value_clip.is_finite());
            prop_assert!(o.value_coef >= 0.0 && o.value_coef.is_finite());
            prop_assert!(o.temperature > 0.0 && o.temperature.is_finite());
            prop_assert!(o.clip > 0.0 && o.clip < 1.0);
            prop_assert!((1..=1 << 24).contains(&o.max_new_tokens));
            prop_assert!(o.grad_accum >= 1 && o.minibatch_size % o.grad_accum == 0);
            prop_assert!(o
                .max_batch
                .is_none_or(|b| (o.rollouts_per_prompt..=65_536).contains(&b)));
            if let Some(mem) = &o.kv_memory {
                prop_assert!(prefer::generate::kv_budget::parse_bytes(mem).is_ok());
            }
        }
        Ok(read.is_ok())
    });
}

const GENERATE_FLAGS: &[&str] = &[
    "n",
    "temperature",
    "top-p",
    "top-k",
    "max-new-tokens",
    "stop",
    "seed",
    "max-batch",
    "kv-memory",
    "best-of",
    "reward-model",
];

#[derive(Parser, Debug)]
struct GenerateCli {
    #[command(flatten)]
    args: prefer::cmd::generate::GenerateArgs,
}

#[test]
fn generate_options_never_panic_and_validate_only_values_in_range() {
    fuzz("generate options", options(GENERATE_FLAGS), |(argv, _)| {
        let mut full = vec!["prefer".to_string()];
        full.extend(["--model", "m", "--prompts", "p", "--out", "o"].map(String::from));
        full.extend(argv);
        let Ok(mut cli) = GenerateCli::try_parse_from(&full) else {
            return Ok(false);
        };
        if let Some(mem) = &cli.args.kv_memory {
            let _ = prefer::cmd::generate::parse_bytes(mem);
        }
        let read = cli.args.validate();
        if read.is_ok() {
            let a = &cli.args;
            prop_assert!(a.temperature.is_finite() && a.temperature >= 0.0);
            prop_assert!(a.top_p > 0.0 && a.top_p <= 1.0);
            prop_assert!((1..=1 << 24).contains(&a.max_new_tokens));
            prop_assert!(a.n >= 1 && a.max_batch >= 1);
        }
        Ok(read.is_ok())
    });
}
