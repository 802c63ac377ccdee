"""Writes tests/fixtures/hf-tiny: a tiny Llama checkpoint written by transformers itself
(LlamaForCausalLM(config).save_pretrained), for tests that read a checkpoint transformers wrote.

    python3 tests/reference/make_hf_fixture.py --prefer target/release/prefer

It also records transformers' greedy `generate` on a few prompts (expected_greedy.json), with
the gap between the two largest logits at each step, so a divergence can be told from a tie.

The config and tokenizer come from `prefer init --preset tiny`; the weights are transformers' own
random init (seed 0, initializer_range 0.1 so log-probs are far from uniform), saved in bf16.
"""
import argparse, json, shutil, subprocess, tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--prefer", required=True)
ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "fixtures" / "hf-tiny"))
args = ap.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([args.prefer, "init", "--preset", "tiny", "--out", f"{tmp}/m"], check=True)
    cfg = json.loads(Path(f"{tmp}/m/config.json").read_text())
    cfg["initializer_range"] = 0.1
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.bfloat16)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        if Path(f"{tmp}/m/{f}").exists():
            shutil.copy(f"{tmp}/m/{f}", out / f)
    # transformers' own per-token log-probs (f32 compute on the bf16 weights), for the tests.
    ids = [cfg["bos_token_id"]] + list(b"The quick brown fox jumps over the lazy dog.")
    # Loaded back in f32 (not model.float(): .to(bf16) above also rounded the rotary inv_freq buffer).
    reloaded = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = reloaded(torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    (out / "expected_logprobs.json").write_text(
        json.dumps({"input_ids": ids, "logprobs": logp.tolist(), "by": "transformers LlamaForCausalLM, f32"})
    )
    greedy = []
    for text in ["Hello", "The quick brown fox jumps over", "A prompt long enough to cross two cache blocks."]:
        prompt = [cfg["bos_token_id"]] + list(text.encode())
        with torch.no_grad():
            out_ids = reloaded.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=40,
                                        pad_token_id=cfg["pad_token_id"], output_scores=True,
                                        return_dict_in_generate=True)
        new = out_ids.sequences[0, len(prompt):].tolist()
        gaps = [float((lambda t: t[0] - t[1])(torch.topk(s[0].float(), 2).values)) for s in out_ids.scores]
        greedy.append({"prompt_ids": prompt, "completion_ids": new, "top2_gap": gaps})
    (out / "expected_greedy.json").write_text(json.dumps(
        {"greedy": greedy, "by": "transformers LlamaForCausalLM.generate(do_sample=False), f32"}))
print("wrote", args.out)
