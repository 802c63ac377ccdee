"""Runs TRL on the CPU in f32 and writes the per-step numbers prefer must reproduce
(tests/fixtures/trl/parity.json, read by tests/trl_parity.rs):

    python3 tests/reference/trl_parity.py            # rewrites tests/fixtures/trl/parity.json

Three short runs on tests/fixtures/hf-tiny (a checkpoint transformers wrote) and
tests/fixtures/trl/prefs.jsonl (8 pairs of raw {"prompt", "chosen", "rejected"} strings):
- DPO, sigmoid loss, summed log-probs (TRL's default DPO);
- TRL's IPO (its log-ratios averaged over the completion) = prefer's `--loss ipo --average-logps`;
- a reward model (RewardTrainer, Bradley-Terry).

The options are lined up with prefer's (each case's "options" in the fixture are the flags the
Rust test passes to prefer): one batch holds the whole data set, so each optimiser step sees every
pair and the data order (seeded differently in each library) does not matter; AdamW with
β = (0.9, 0.999), ε = 1e-8, weight decay 0.1 (which transformers' Trainer skips on the RMSNorm
gains, as prefer now does), gradient clipping at norm 1, linear warm-up over ⌈0.25 · steps⌉ steps
from a rate of 0, then linear decay. Everything runs in f32 with eager attention.

The reward model's new scalar head is set to zero before training, as prefer starts it (TRL and
transformers start it random, normal with std = initializer_range).

Checked with torch 2.15.0 (the PyPI wheel, CUDA build, run on the CPU), transformers 5.24.0,
trl 1.16.0, datasets 5.2.0, Python 3.11: `pip install torch transformers trl` in a venv.
transformers 5 has no `warmup_ratio`: a float `warmup_steps` below 1 is the ratio, with the same
ceil(steps · ratio) rule.
"""
import argparse
import json
import math
import tempfile
from pathlib import Path

import torch
import transformers
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "fixtures" / "hf-tiny"
DATA = ROOT / "fixtures" / "trl" / "prefs.jsonl"
OUT = ROOT / "fixtures" / "trl" / "parity.json"

# Shared by every case; the names are prefer's flags.
COMMON = {
    "epochs": 8,
    "batch-size": 8,
    "grad-accum": 1,
    "warmup-ratio": 0.25,
    "decay": "linear",
    "weight-decay": 0.1,
    "max-grad-norm": 1.0,
}
# The weights whose final values the fixture records: the norm gains show the decay exemption.
WATCHED = [
    "model.norm.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.1.post_attention_layernorm.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.embed_tokens.weight",
]


def training_args(cls, out_dir, lr, **extra):
    return cls(
        output_dir=out_dir,
        per_device_train_batch_size=COMMON["batch-size"],
        gradient_accumulation_steps=COMMON["grad-accum"],
        num_train_epochs=COMMON["epochs"],
        learning_rate=lr,
        lr_scheduler_type=COMMON["decay"],
        warmup_steps=COMMON["warmup-ratio"],
        weight_decay=COMMON["weight-decay"],
        max_grad_norm=COMMON["max-grad-norm"],
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        **extra,
    )


def watched(model):
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    out = {}
    for name in WATCHED:
        t = state[name]
        out[name] = {"first": t.flatten()[:8].tolist(), "l2": t.norm().item()}
    return out


def steps_of(history, keys):
    rows = [h for h in history if "loss" in h and "train_runtime" not in h]
    return [{k: row[k] for k in keys if k in row} for row in rows]


def dpo_case(name, data, tok, loss_type, prefer_flags, lr):
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    with tempfile.TemporaryDirectory() as tmp:
        args = training_args(DPOConfig, tmp, lr, beta=0.1, loss_type=[loss_type])
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        trainer.train()
    keys = ["loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected",
            "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"]
    return {
        "name": name,
        "command": "dpo",
        "options": {**COMMON, "lr": lr, "beta": 0.1, **prefer_flags},
        "steps": steps_of(trainer.state.log_history, keys),
        "final_weights": watched(trainer.model),
    }


def reward_case(data, tok, lr):
    model = AutoModelForSequenceClassification.from_pretrained(
        MODEL, num_labels=1, dtype=torch.float32, attn_implementation="eager"
    )
    model.config.pad_token_id = tok.pad_token_id
    with torch.no_grad():
        model.score.weight.zero_()  # prefer's zero-initialised head
    with tempfile.TemporaryDirectory() as tmp:
        args = training_args(RewardConfig, tmp, lr)
        trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        trainer.train()
    keys = ["loss", "grad_norm", "learning_rate", "accuracy", "margin"]
    return {
        "name": "reward-model",
        "command": "rm",
        "options": {**COMMON, "lr": lr},
        "steps": steps_of(trainer.state.log_history, keys),
        "final_weights": {**watched(trainer.model), "score.weight": {
            "first": trainer.model.score.weight.detach().flatten()[:8].tolist(),
            "l2": trainer.model.score.weight.detach().norm().item(),
        }},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    tok = AutoTokenizer.from_pretrained(MODEL)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    data = Dataset.from_list(rows)
    n = len(rows)
    assert n == COMMON["batch-size"], "one batch must hold the whole data set (order-free)"
    steps = COMMON["epochs"] * math.ceil(n / COMMON["batch-size"]) // COMMON["grad-accum"]
    cases = [
        dpo_case("dpo-sigmoid", data, tok, "sigmoid", {"loss": "sigmoid"}, 2e-3),
        dpo_case("trl-ipo", data, tok, "ipo", {"loss": "ipo", "average-logps": True}, 2e-3),
        reward_case(data, tok, 5e-3),
    ]
    for c in cases:
        assert len(c["steps"]) == steps, (c["name"], len(c["steps"]))
    fixture = {
        "by": "tests/reference/trl_parity.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "model": "tests/fixtures/hf-tiny",
        "data": "tests/fixtures/trl/prefs.jsonl",
        "warmup_steps": math.ceil(steps * COMMON["warmup-ratio"]),
        "cases": cases,
    }
    Path(args.out).write_text(json.dumps(fixture, indent=1) + "\n")
    print("wrote", args.out)
    for c in cases:
        print(c["name"], [round(s["loss"], 6) for s in c["steps"]])


if __name__ == "__main__":
    main()
