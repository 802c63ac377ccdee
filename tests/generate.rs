//! The rollout engine on the CPU: greedy decode against the training forward and against
//! transformers, the paged KV cache against a full recompute, the sampler's distribution, seeded
//! rollouts that ignore their batch, continuous batching, and bad input.

use prefer::generate::philox::draw_uniform;
use prefer::generate::{Engine, EngineOptions, FinishReason, Rollout};
use prefer::model::init::init_params;
use prefer::model::weights::load_checkpoint;
use prefer::model::{Batch, DecodeView, Llama, LlamaConfig, ParamLayout, SlotMap};
use prefer::ops::cpu::sample::sample_row;
use prefer::ops::cpu::SamplingParams;
use std::path::Path;
use std::process::Command;

/// The tiny preset with a sharp random init (std 0.2), so logits are far from uniform.
fn tiny() -> Llama {
    let mut cfg = LlamaConfig::preset("tiny").unwrap();
    cfg.initializer_range = 0.2;
    let params = init_params(&cfg, &ParamLayout::new(&cfg), 3);
    Llama::new(cfg, params)
}

fn prompts() -> Vec<Vec<u32>> {
    // Lengths around the 16-token block: inside one block, exactly one, and across several.
    [3usize, 16, 17, 40, 9]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|t| ((t * 7 + i * 13) % 250) as u32).collect())
        .collect()
}

fn opts(n: usize, max_batch: usize, sampling: SamplingParams) -> EngineOptions {
    EngineOptions {
        n,
        sampling,
        max_new_tokens: 24,
        seed: 11,
        first_prompt: 0,
        max_batch,
        block_size: 16,
        kv_blocks: 256,
        eos: vec![],
        prefill_tokens: 8192,
        graphs: true,
    }
}

fn generate(model: &Llama, prompts: &[Vec<u32>], o: EngineOptions) -> Vec<Rollout> {
    let n = o.n;
    let mut engine = Engine::new(model, o).unwrap();
    let mut out: Vec<Option<Rollout>> = vec![None; prompts.len() * n];
    engine
        .run(prompts, &mut |_| false, &mut |r| {
            let i = r.prompt_index * n + r.rollout_index;
            assert!(out[i].is_none(), "rollout {i} returned twice");
            out[i] = Some(r);
            Ok(())
        })
        .unwrap();
    out.into_iter()
        .map(|r| r.expect("every rollout returned"))
        .collect()
}

const GREEDY: SamplingParams = SamplingParams {
    temperature: 0.0,
    top_k: 0,
    top_p: 1.0,
};

/// Logits [T, V] of one sequence by the training forward.
fn full_logits(model: &Llama, seq: &[u32]) -> Vec<f32> {
    let batch = Batch::right_padded(&[seq.to_vec()], 0);
    model.full_logits(&batch).unwrap()
}

fn argmax(row: &[f32]) -> u32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter().position(|&x| x == m).unwrap() as u32
}

#[test]
fn greedy_decode_is_the_argmax_of_a_full_forward_at_every_step() {
    let model = tiny();
    let v = model.cfg.vocab_size;
    let ps = prompts();
    let rollouts = generate(&model, &ps, opts(2, 64, GREEDY));
    for r in &rollouts {
        let p = &ps[r.prompt_index];
        assert_eq!(r.completion_ids.len(), 24);
        assert_eq!(r.finish_reason, FinishReason::Length);
        let seq = [p.as_slice(), &r.completion_ids].concat();
        let logits = full_logits(&model, &seq);
        for (i, &tok) in r.completion_ids.iter().enumerate() {
            let row = &logits[(p.len() + i - 1) * v..(p.len() + i) * v];
            assert_eq!(tok, argmax(row), "prompt {} step {i}", r.prompt_index);
            // Greedy reports the token's log-prob under the model's own distribution.
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
            assert!((r.logprobs[i] - (row[tok as usize] - lse)).abs() < 1e-4);
        }
    }
    // Both rollouts of a prompt are the same under greedy.
    for pair in rollouts.chunks(2) {
        assert_eq!(pair[0].completion_ids, pair[1].completion_ids);
    }
}

#[test]
fn greedy_decode_matches_transformers_on_a_checkpoint_it_wrote() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-tiny");
    let (cfg, params) = load_checkpoint(&dir).unwrap();
    let model = Llama::new(cfg, params);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_greedy.json")).unwrap())
            .unwrap();
    for case in expected["greedy"].as_array().unwrap() {
        let ids = |k: &str| -> Vec<u32> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let (prompt, want) = (ids("prompt_ids"), ids("completion_ids"));
        let mut o = opts(1, 8, GREEDY);
        o.max_new_tokens = want.len();
        let got = &generate(&model, std::slice::from_ref(&prompt), o)[0].completion_ids;
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            // A divergence is only acceptable where transformers' two best logits tie.
            let gap = case["top2_gap"][i].as_f64().unwrap();
            panic!("diverges from transformers at step {i} (its top-2 logit gap {gap:e}): {got:?} vs {want:?}");
        }
        assert_eq!(got, &want);
    }
}

/// A cache of 4-token blocks filled by hand: the prompt's full blocks shared by three rollouts,
/// its partial last block written to each rollout's own block, then decode steps that cross
/// block boundaries. Every decode logit must equal the training forward's within 1e-4.
#[test]
fn decode_logits_equal_a_full_recompute_with_shared_prompt_blocks() {
    let model = tiny();
    let (v, bs) = (model.cfg.vocab_size, 4);
    let mut cache = model.kv_cache(32, bs).unwrap();
    let prompt: Vec<u32> = (0..10).map(|t| (t * 29 % 250) as u32).collect();
    let shared = [0u32, 1]; // tokens 0..8
    let private = [[2u32, 3, 4], [5, 6, 7], [8, 9, 10]]; // tail 8..10, then decode tokens
    let mut slots = Vec::new();
    for t in 0..prompt.len() as u32 {
        if t < 8 {
            slots.extend([t, shared[t as usize / 4] * 4 + t % 4]);
        } else {
            for p in &private {
                slots.extend([t, p[0] * 4 + t % 4]);
            }
        }
    }
    let batch = Batch::right_padded(std::slice::from_ref(&prompt), 0);
    let last = [9u32, 0];
    let logits = model
        .prefill(
            &batch,
            &mut cache,
            SlotMap {
                pairs: &slots,
                len: slots.len() / 2,
            },
            SlotMap {
                pairs: &last.to_vec(),
                len: 1,
            },
        )
        .unwrap();
    let reference = full_logits(&model, &prompt);
    let worst = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    assert!(worst(&logits, &reference[9 * v..10 * v]) < 1e-4);

    // Each rollout continues with its own tokens.
    let mut seqs: Vec<Vec<u32>> = (0..3).map(|_| prompt.clone()).collect();
    for step in 0..6u32 {
        let pos = 10 + step;
        let ids: Vec<u32> = (0..3).map(|r| (step * 31 + r * 97 + 5) % 250).collect();
        let mut slots = Vec::new();
        let mut table = Vec::new();
        for (r, p) in private.iter().enumerate() {
            seqs[r].push(ids[r]);
            slots.extend([r as u32, p[pos as usize / 4 - 2] * 4 + pos % 4]);
            table.extend([shared[0], shared[1], p[0], p[1], p[2]]);
        }
        let batch = Batch {
            batch: 3,
            seq: 1,
            ids: ids.clone(),
            mask: vec![true; 3],
            positions: vec![pos; 3],
        };
        let rows: Vec<u32> = vec![0, 0, 1, 1, 2, 2];
        let logits = model
            .decode(
                &batch,
                &mut cache,
                SlotMap {
                    pairs: &slots,
                    len: 3,
                },
                DecodeView {
                    block_table: &table,
                    context_lens: &vec![pos + 1; 3],
                    max_blocks: 5,
                },
                SlotMap {
                    pairs: &rows,
                    len: 3,
                },
            )
            .unwrap();
        for r in 0..3 {
            let reference = full_logits(&model, &seqs[r]);
            let d = worst(&logits[r * v..(r + 1) * v], &reference[pos as usize * v..]);
            assert!(d < 1e-4, "rollout {r} at position {pos}: {d}");
        }
    }
}

/// Expected probabilities by sorting (what the sampler avoids): temperature, then top-k, then
/// top-p, as transformers' warpers apply them.
fn expected(logits: &[f32], p: SamplingParams) -> Vec<f64> {
    let z: Vec<f64> = logits
        .iter()
        .map(|&x| x as f64 / p.temperature as f64)
        .collect();
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&a, &b| z[b].partial_cmp(&z[a]).unwrap());
    let k = if p.top_k == 0 { z.len() } else { p.top_k };
    let kept: Vec<usize> = order[..k].to_vec();
    let m = z[kept[0]];
    let w: Vec<f64> = kept.iter().map(|&i| (z[i] - m).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut probs = vec![0.0; z.len()];
    let mut cum = 0.0;
    for (j, &i) in kept.iter().enumerate() {
        probs[i] = w[j] / total;
        cum += w[j] / total;
        if cum >= p.top_p as f64 - 1e-12 {
            break;
        }
    }
    let s: f64 = probs.iter().sum();
    probs.iter().map(|x| x / s).collect()
}

#[test]
fn sampling_follows_temperature_top_k_and_top_p_chi_square() {
    let logits = [1.2f32, -0.3, 0.8, 2.0, 0.1, -1.5, 1.0, 0.4];
    let draws = 40_000;
    for p in [
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        },
        SamplingParams {
            temperature: 0.5,
            top_k: 0,
            top_p: 1.0,
        },
        SamplingParams {
            temperature: 2.0,
            top_k: 3,
            top_p: 1.0,
        },
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.7,
        },
        SamplingParams {
            temperature: 0.8,
            top_k: 5,
            top_p: 0.9,
        },
    ] {
        let probs = expected(&logits, p);
        let mut counts = vec![0usize; logits.len()];
        for i in 0..draws {
            let (id, lp) = sample_row(&logits, draw_uniform(5, i as u64, 0, 0), p);
            counts[id as usize] += 1;
            assert!(
                (lp as f64 - probs[id as usize].ln()).abs() < 1e-4,
                "{p:?}: log-prob of {id}"
            );
        }
        let mut chi2 = 0.0;
        let mut cells = 0;
        for (c, &pr) in counts.iter().zip(&probs) {
            if pr == 0.0 {
                assert_eq!(*c, 0, "{p:?} drew a token outside its top-k/top-p set");
                continue;
            }
            let e = pr * draws as f64;
            chi2 += (*c as f64 - e).powi(2) / e;
            cells += 1;
        }
        // The 0.999 quantile of chi-square with up to 7 degrees of freedom is 24.3.
        assert!(
            cells >= 2 && chi2 < 24.3,
            "{p:?}: chi2 {chi2} over {cells} cells, {counts:?}"
        );
    }
}

#[test]
fn a_seeded_rollout_ignores_max_batch_and_the_other_prompts() {
    let model = tiny();
    let sampling = SamplingParams {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.95,
    };
    let ps = prompts();
    let base = generate(&model, &ps, opts(3, 64, sampling));
    let small = generate(&model, &ps, opts(3, 3, sampling));
    let mut more = ps.clone();
    more.extend((0..4).map(|i| vec![200 + i; 5 + i as usize]));
    let crowded = generate(&model, &more, opts(3, 7, sampling));
    for (i, r) in base.iter().enumerate() {
        assert_eq!(
            r.completion_ids, small[i].completion_ids,
            "--max-batch changed rollout {i}"
        );
        assert_eq!(
            r.completion_ids, crowded[i].completion_ids,
            "more prompts changed rollout {i}"
        );
    }
    // Rollouts of one prompt differ from each other.
    assert_ne!(base[0].completion_ids, base[1].completion_ids);
}

#[test]
fn continuous_batching_returns_every_rollout_once_and_keeps_the_batch_full() {
    let model = tiny();
    let ps: Vec<Vec<u32>> = (0..12).map(|i| vec![1 + i as u32; 2 + i % 5]).collect();
    let mut o = opts(3, 6, SamplingParams::default());
    // EOS ends some rollouts early, so slots free up at different times.
    o.eos = vec![7, 9, 11, 13, 17, 19, 23, 29];
    let mut engine = Engine::new(&model, o).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut tokens = 0;
    engine
        .run(&ps, &mut |_| false, &mut |r| {
            assert!(seen.insert((r.prompt_index, r.rollout_index)));
            tokens += r.completion_ids.len();
            assert_eq!(r.completion_ids.len(), r.logprobs.len());
            if r.finish_reason == FinishReason::Eos {
                assert!([7, 9, 11, 13, 17, 19, 23, 29].contains(r.completion_ids.last().unwrap()));
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(seen.len(), 36);
    let s = &engine.stats;
    assert_eq!(
        s.generated_tokens, tokens,
        "tokens counted are exactly the completions' tokens"
    );
    assert_eq!(s.peak_batch, 6);
}

fn prefer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prefer"))
}

fn stderr_of(args: &[&str]) -> String {
    let o = prefer().args(args).output().unwrap();
    assert!(!o.status.success(), "{args:?} should fail");
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn generate_writes_one_line_per_completion_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let base = root.join("base");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    assert!(prefer()
        .args(["init", "--preset", "tiny", "--out", &s(&base)])
        .output()
        .unwrap()
        .status
        .success());
    let prompts = root.join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"Hi\", \"tag\": 1}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Yo\"}]}\n{\"prompt_ids\": [256, 72]}\n",
    )
    .unwrap();
    let out = root.join("g.jsonl");
    let run = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--device",
            "cpu",
            "--model",
            &s(&base),
            "--prompts",
            &s(&prompts),
            "--out",
            &s(&out),
            "--max-new-tokens",
            "8",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        a.extend(extra.iter().map(|x| x.to_string()));
        prefer().args(&a).output().unwrap()
    };
    let o = run(&["--n", "2"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("3 prompts x 2 -> 6 completions") && e.contains("generated tokens/s"),
        "{e}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["prompt_index"], i / 2);
        assert_eq!(l["rollout_index"], i % 2);
        let ids = l["completion_ids"].as_array().unwrap();
        assert_eq!(ids.len(), l["logprobs"].as_array().unwrap().len());
        assert!(l["text"].is_string());
        assert!(["eos", "stop", "length"].contains(&l["finish_reason"].as_str().unwrap()));
    }
    assert_eq!(lines[0]["tag"], 1, "other fields are copied");

    let p = s(&prompts);
    let m = s(&base);
    let o = s(&out);
    let common = [
        "generate",
        "--device",
        "cpu",
        "--model",
        &m,
        "--prompts",
        &p,
        "--out",
        &o,
    ];
    let bad = |extra: &[&str], want: &str| {
        let args: Vec<&str> = common
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect();
        let e = stderr_of(&args);
        assert!(e.contains(want), "{extra:?}: {e}");
    };
    bad(
        &["--n", "0"],
        "--n 0 is out of range: give a whole number from 1 to 4096",
    );
    bad(
        &["--temperature", "-1"],
        "--temperature -1 is out of range: give a number in [0, 100]",
    );
    bad(
        &["--top-p", "0"],
        "--top-p 0 is out of range: give a number in (0, 1]",
    );
    bad(
        &["--top-p", "1.5"],
        "--top-p 1.5 is out of range: give a number in (0, 1]",
    );
    bad(&["--best-of", "4"], "give --reward-model");
    // A prompt that leaves no room in the context, named by its line when the prompts are read.
    let long = root.join("long.jsonl");
    let ids: Vec<u32> = vec![65; 2048];
    std::fs::write(
        &long,
        format!("{}\n", serde_json::json!({"prompt_ids": ids})),
    )
    .unwrap();
    let e = stderr_of(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        &m,
        "--prompts",
        &s(&long),
        "--out",
        &o,
    ]);
    assert!(
        e.contains("long.jsonl:1: prompt of 2048 tokens leaves no room to generate: the model's context is 2048 tokens"),
        "{e}"
    );
    // An EOS id outside the vocabulary.
    std::fs::write(
        base.join("generation_config.json"),
        "{\"eos_token_id\": [257, 9999]}",
    )
    .unwrap();
    bad(&[], "EOS id 9999 is outside the model's vocabulary of 259");
    // Malformed prompt lines name the file and line.
    std::fs::write(&prompts, "{\"prompt\": \"a\"}\n{\"text\": 3}\n").unwrap();
    std::fs::remove_file(base.join("generation_config.json")).unwrap();
    bad(&[], "p.jsonl:2: expected exactly one of");
}

#[test]
fn ids_past_the_tokenizer_decode_as_nothing() {
    // A padded embedding (as Qwen's) can sample an id the tokenizer lacks: it decodes as nothing.
    let tok = prefer::data::tokenizer::TextTokenizer::from_json(
        &prefer::data::tokenizer::byte_tokenizer_json(),
    )
    .unwrap();
    assert_eq!(tok.decode_generated(&[72, 300, 105, 4000]).unwrap(), "Hi");
}

#[test]
fn best_of_n_keeps_the_completion_the_reward_model_scores_highest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = |p: &str| root.join(p).to_str().unwrap().to_string();
    for (out, extra) in [
        ("base", vec![]),
        ("rm", vec!["--scalar-head", "--init-std", "0.2"]),
    ] {
        let o = prefer()
            .args(["init", "--preset", "tiny", "--seed", "4", "--out", &s(out)])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    std::fs::write(
        root.join("p.jsonl"),
        "{\"prompt\": \"a\"}\n{\"prompt\": \"bb\"}\n",
    )
    .unwrap();
    let run = |out: &str, extra: &[&str]| {
        let o = prefer()
            .args([
                "generate",
                "--device",
                "cpu",
                "--model",
                &s("base"),
                "--prompts",
                &s("p.jsonl"),
            ])
            .args([
                "--out",
                &s(out),
                "--max-new-tokens",
                "6",
                "--reward-model",
                &s("rm"),
            ])
            .args(extra)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{e}");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(root.join(out))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines, e)
    };
    let (all, _) = run("all.jsonl", &["--n", "3"]);
    let (best, summary) = run("best.jsonl", &["--best-of", "3"]);
    assert_eq!((all.len(), best.len()), (6, 2));
    let reward = |l: &serde_json::Value| l["reward"].as_f64().unwrap();
    let (mut sum_best, mut sum_first) = (0.0, 0.0);
    for (p, b) in best.iter().enumerate() {
        let group = &all[3 * p..3 * p + 3];
        let top = group.iter().map(reward).fold(f64::NEG_INFINITY, f64::max);
        // The same seed gives the same three candidates; the kept one is the best of them.
        assert_eq!(reward(b), top);
        assert!(group
            .iter()
            .any(|g| g["completion_ids"] == b["completion_ids"]));
        sum_best += top;
        sum_first += reward(&group[0]);
    }
    let want = format!(
        "mean reward: best of 3 {:.4}, first completion {:.4}",
        sum_best / 2.0,
        sum_first / 2.0
    );
    assert!(summary.contains(&want), "{summary}\nwanted: {want}");
}
