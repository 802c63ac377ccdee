#!/usr/bin/env python3
"""Checks `prefer logprobs` against Hugging Face transformers on the same checkpoint.

prefer writes random checkpoints with `prefer init` (a causal LM, and a reward model with a scalar
head); transformers loads them unchanged, and both compute per-token next-token log-probs (and the
reward model's score at the last token) for the same token ids. The script prints the differences
and exits non-zero when one is over the tolerance.

    python3 tests/reference/check_transformers.py --prefer target/release/prefer
    python3 tests/reference/check_transformers.py --lm-model runs/demo/dpo --rm-model runs/demo/rm
    python3 check_transformers.py --prefer ./prefer --preset llama-1b --prefer-device cuda \
        --torch-dtype bfloat16 --torch-device cuda --tol 0.05 --mean-tol 0.005
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import LlamaForCausalLM, LlamaForSequenceClassification


def run(cmd):
    subprocess.run([str(c) for c in cmd], check=True)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefer", default="target/release/prefer")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--prefer-device", default="cpu")
    ap.add_argument("--torch-device", default="cpu")
    ap.add_argument("--torch-dtype", default="float32")
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs difference allowed (nats)")
    ap.add_argument("--mean-tol", type=float, default=None, help="mean abs difference allowed")
    ap.add_argument("--seqs", type=int, default=6)
    ap.add_argument("--rm-model", default=None,
                    help="check this existing reward-model checkpoint (e.g. one `prefer rm` trained) "
                         "instead of a fresh random one")
    ap.add_argument("--lm-model", default=None,
                    help="check this existing causal-LM run folder (e.g. runs/demo/dpo, which "
                         "`prefer dpo` leaves loadable as it is) instead of a fresh random one")
    ap.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    ap.add_argument("--init-std", type=float, default=0.2,
                    help="init std; larger than HF's 0.02 so that attention and the LM head are far "
                         "from uniform and a wrong op cannot hide under the tolerance")
    args = ap.parse_args()
    dtype = getattr(torch, args.torch_dtype)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}; "
          f"preset {args.preset}, prefer --device {args.prefer_device}, torch {args.torch_dtype} "
          f"on {args.torch_device}")

    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lm_dir, rm_dir = tmp / "lm", tmp / "rm"
        extra = ["--init-std", args.init_std] + (["--layers", args.layers] if args.layers else [])
        run([args.prefer, "init", "--preset", args.preset, "--out", lm_dir, "--seed", 1, *extra])
        run([args.prefer, "init", "--preset", args.preset, "--out", rm_dir, "--seed", 2, "--scalar-head", *extra])
        if args.rm_model:
            rm_dir = Path(args.rm_model)
        if args.lm_model:
            lm_dir = Path(args.lm_model)
        vocab = json.loads((lm_dir / "config.json").read_text())["vocab_size"]

        # Sequences of several lengths (odd ones included), as ids and as text.
        seqs = [torch.randint(0, min(vocab, 256), (n,)).tolist() for n in (2, 7, 16, 33, 64, 100)[: args.seqs]]
        inputs = tmp / "in.jsonl"
        inputs.write_text("".join(json.dumps({"input_ids": s}) + "\n" for s in seqs))

        for kind, model_dir, cls in (("causal LM", lm_dir, LlamaForCausalLM),
                                     ("reward model", rm_dir, LlamaForSequenceClassification)):
            out = tmp / f"out-{kind.replace(' ', '-')}.jsonl"
            run([args.prefer, "logprobs", "--model", model_dir, "--input", inputs, "--out", out,
                 "--device", args.prefer_device])
            ours = read_jsonl(out)
            model = cls.from_pretrained(model_dir, dtype=dtype).to(args.torch_device).eval()
            lp_diffs, reward_diffs = [], []
            for s, o in zip(seqs, ours):
                ids = torch.tensor([s], device=args.torch_device)
                with torch.no_grad():
                    if cls is LlamaForCausalLM:
                        logits = model(ids).logits.float()[0]
                        logp = torch.log_softmax(logits, -1)[:-1].gather(-1, ids[0, 1:, None])[:, 0]
                        lp_diffs.append((logp.cpu() - torch.tensor(o["logprobs"])).abs())
                    else:
                        reward = model(ids).logits.float()[0, 0].item()
                        reward_diffs.append(abs(reward - o["reward"]))
            if lp_diffs:
                d = torch.cat(lp_diffs)
                mx, mean = d.max().item(), d.mean().item()
                good = mx <= args.tol and (args.mean_tol is None or mean <= args.mean_tol)
                ok &= good
                print(f"{kind}: per-token log-probs over {d.numel()} tokens: max abs diff {mx:.3e}, "
                      f"mean {mean:.3e} (tol {args.tol:g}) {'PASS' if good else 'FAIL'}")
            if reward_diffs:
                mx = max(reward_diffs)
                good = mx <= args.tol
                ok &= good
                print(f"{kind}: rewards of {len(reward_diffs)} sequences: max abs diff {mx:.3e} "
                      f"(tol {args.tol:g}) {'PASS' if good else 'FAIL'}")
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
