#!/usr/bin/env python3
"""One JSON and one human table of a GPU session's figures, beside PyTorch's and the targets.

    python3 tests/reference/gpu_summary.py OUT      (gpu_session.sh runs it last)

Reads what gpu_session.sh left in OUT: prefer's bench_*.json, bench_t6_metrics.jsonl, the PyTorch
side (bench_torch.json) and the ncu summary (ncu_top5.txt); writes OUT/summary.json and
OUT/summary.md. A figure that is missing (a step failed, or ran out of memory) is shown as missing,
never guessed. The targets are DESIGN.md's (T1-T8); `met` is judged only where every figure it
needs is there.
"""
import datetime
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_jsonl(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def main(out):
    j = lambda name: load(os.path.join(out, name))
    kernels = {(r["id"], r["workload"]): r for r in (j("bench_kernels.json") or {}).get("rows", [])}
    torch_rows = (j("bench_torch.json") or {}).get("results", [])

    def torch_value(tid, metric, workload=None):
        for r in torch_rows:
            if r["id"] == tid and r["metric"] == metric and (workload is None or r["workload"] == workload):
                return r["value"]
        return None

    def kernel(tid, prefix):
        for (i, w), r in kernels.items():
            if i == tid and w.startswith(prefix):
                return r
        return None

    t1, t1r = j("bench_t1.json") or {}, j("bench_t1_recompute.json") or {}
    t2, t3, t3r = j("bench_t2.json") or {}, j("bench_t3.json") or {}, j("bench_t3_recompute.json") or {}
    t4, t5 = j("bench_t4.json") or {}, j("bench_t5.json") or {}
    t6 = load_jsonl(os.path.join(out, "bench_t6_metrics.jsonl"))
    # The first PPO iteration warms up (graph captures, allocations); the later ones are the figure.
    t6_steady = t6[1:] or t6
    t6_mean = lambda k: (sum(r[k] for r in t6_steady) / len(t6_steady)) if t6_steady else None
    t6_total = None
    if t6_steady:
        t6_total = t6_mean("time/generate") + t6_mean("time/score") + t6_mean("time/train")
    t7 = kernel("T7", "")
    t8f, t8 = kernel("T8", "attention fwd 8"), kernel("T8", "attention fwd+bwd")

    def row(tid, ours, pytorch, goal, met):
        return {"id": tid, "ours": ours, "pytorch": pytorch, "goal": goal, "met": met}

    def ge(x, y):
        return None if x is None else x >= y

    def any_run(runs, check):
        # Met when one run (with or without --recompute) meets every part; unknown if none ran.
        judged = [check(r) for r in runs if r.get("tokens_per_s") is not None]
        return None if not judged else any(judged)
    targets = [
        row("T1", {"tokens_per_s": t1.get("tokens_per_s"), "mfu": t1.get("mfu"), "used_gib": t1.get("used_gib"),
                   "recompute_tokens_per_s": t1r.get("tokens_per_s"), "recompute_used_gib": t1r.get("used_gib")},
            {"tokens_per_s": torch_value("T1", "tokens_per_s"), "mfu_pct": torch_value("T1", "mfu_pct"),
             "peak_mem_gib": torch_value("T1", "peak_mem_gib")},
            ">= 64K tok/s at MFU >= 50%, <= 30 GiB (one run)",
            any_run([t1, t1r], lambda r: r["tokens_per_s"] >= 64e3 and r.get("mfu", 0) >= 0.5
                    and r.get("used_gib", 1e9) <= 30.0)),
        row("T2", {"tokens_per_s": t2.get("tokens_per_s"), "mfu": t2.get("mfu")},
            {"tokens_per_s": torch_value("T2", "tokens_per_s"),
             "compile_tokens_per_s": torch_value("T2", "compile_tokens_per_s")},
            ">= 500K tok/s", ge(t2.get("tokens_per_s"), 500e3)),
        row("T3", {"tokens_per_s": t3.get("tokens_per_s"), "used_gib": t3.get("used_gib"),
                   "recompute_tokens_per_s": t3r.get("tokens_per_s"), "recompute_used_gib": t3r.get("used_gib")},
            {"tokens_per_s": torch_value("T3", "tokens_per_s"), "peak_mem_gib": torch_value("T3", "peak_mem_gib")},
            ">= 64K tok/s, <= 24 GiB (one run)",
            any_run([t3, t3r], lambda r: r["tokens_per_s"] >= 64e3 and r.get("used_gib", 1e9) <= 24.0)),
        row("T4", {"tokens_per_s": t4.get("tokens_per_s"), "bandwidth_fraction": t4.get("bandwidth_fraction")},
            {"gen_tokens_per_s": torch_value("T4", "gen_tokens_per_s")}, ">= 40K tok/s",
            ge(t4.get("tokens_per_s"), 40e3)),
        row("T5", {"tokens_per_s": t5.get("tokens_per_s"), "bandwidth_fraction": t5.get("bandwidth_fraction")},
            {"gen_tokens_per_s": torch_value("T5", "gen_tokens_per_s")}, ">= 900 tok/s",
            ge(t5.get("tokens_per_s"), 900)),
        row("T6", {"iteration_s": t6_total, "generate_s": t6_mean("time/generate") if t6_steady else None,
                   "score_s": t6_mean("time/score") if t6_steady else None,
                   "train_s": t6_mean("time/train") if t6_steady else None, "iterations": len(t6)},
            {"iteration_s": 8.25, "source": "DESIGN.md (no PyTorch PPO loop in this session)"},
            "<= 1.4 s, generation <= half",
            None if t6_total is None else (t6_total <= 1.4 and t6_mean("time/generate") <= t6_total / 2)),
        row("T7", {"fwd_bwd_ms": t7 and t7["ms"], "extra_gib": t7 and t7["extra_gib"]},
            {"fwd_bwd_ms": torch_value("T7", "fwd_bwd_ms"), "extra_mem_gib": torch_value("T7", "extra_mem_gib")},
            "<= 22 ms, <= 0.5 GiB extra",
            None if t7 is None else (t7["ms"] <= 22.0 and t7["extra_gib"] <= 0.5)),
        row("T8", {"fwd_ms": t8f and t8f["ms"], "fwd_tflops": t8f and t8f["tflops"], "fwd_bwd_ms": t8 and t8["ms"]},
            {"fwd_ms": torch_value("T8", "fwd_ms"), "fwd_bwd_ms": torch_value("T8", "fwd_bwd_ms")},
            "<= 0.8 ms fwd+bwd", None if t8 is None else t8["ms"] <= 0.8),
    ]
    card = t1.get("gpu") or t3.get("gpu") or t4.get("device") or (j("bench_kernels.json") or {}).get("gpu")
    ncu = []
    try:
        with open(os.path.join(out, "ncu_top5.txt")) as f:
            ncu = [line.rstrip() for line in f if line.strip()]
    except OSError:
        pass
    doc = {"card": card, "date": datetime.date.today().isoformat(), "targets": targets, "ncu_top5": ncu}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(doc, f, indent=2)

    def fmt(d):
        parts = []
        for k, v in d.items():
            if v is None:
                parts.append(f"{k} missing")
            elif isinstance(v, float):
                parts.append(f"{k} {v:,.4g}")
            else:
                parts.append(f"{k} {v}")
        return "; ".join(parts)

    lines = [f"# GPU session: {card or 'unknown card'}, {doc['date']}", "",
             "| id | prefer | PyTorch | target | met |", "|---|---|---|---|---|"]
    for t in targets:
        met = {True: "yes", False: "no", None: "not measured"}[t["met"]]
        lines.append(f"| {t['id']} | {fmt(t['ours'])} | {fmt(t['pytorch'])} | {t['goal']} | {met} |")
    if ncu:
        lines += ["", "Five slowest kernels of a llama-1b training step (ncu):", ""]
        lines += [f"    {line}" for line in ncu]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "gpu-out"))
