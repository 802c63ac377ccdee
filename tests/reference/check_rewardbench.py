#!/usr/bin/env python3
"""Scores per-subset RewardBench accuracies with allenai/reward-bench's own code, to cross-check prefer.

prefer's `eval-rm` turns per-subset accuracies into RewardBench's figures (src/eval/rewardbench.rs).
This script computes the same figures with the reference's code, loaded from the `rewardbench`
wheel (allenai/reward-bench on PyPI) without torch, transformers, datasets or fastchat:

- `rewardbench/constants.py` (EXAMPLE_COUNTS, SUBSET_MAPPING) is imported as it is (it imports
  nothing);
- `calculate_scores_per_section` is taken from `rewardbench/utils.py`: the file is parsed and only
  that function's own code is compiled and run (it uses no globals), so utils.py's imports
  (torch, datasets, fastchat, ...) are never executed. It is what `rewardbench` / scripts/run_rm.py
  log as the section scores;
- `get_average_over_rewardbench` is taken from `analysis/get_benchmark_results.py` the same way
  and run with numpy, pandas, EXAMPLE_COUNTS and SUBSET_MAPPING as its globals. It is what builds
  the leaderboard's overview: each section as np.average weighted by EXAMPLE_COUNTS, "Prior Sets
  (0.5 weight)" as the np.nanmean of anthropic_helpful, anthropic_hhh, shp and summarize, and
  "average" as the masked np.average of [Chat, Chat Hard, Safety, Reasoning, Prior Sets] with
  weights [2, 2, 2, 2, 1] (so without prior sets it is the plain mean of the four sections).

Printed (JSON, stdout; also to --out):
  sections_calculate_scores_per_section   section scores from rewardbench/utils.py
  sections_leaderboard                    section scores from get_average_over_rewardbench
  score                                   leaderboard "average" with no prior-set row (the mean
                                          of the four sections; RewardBench's score)
  prior_sets                              leaderboard "Prior Sets (0.5 weight)"
  score_with_prior_sets                   leaderboard "average" with the prior sets
All are fractions (the leaderboard multiplies by 100 for display; this script does not).

Setting up the reference (nothing of reward-bench is kept in this repo):

    ~/.cache/ifeval-ref/bin/pip install numpy pandas      # the venv check_ifeval.py uses
    ~/.cache/ifeval-ref/bin/pip download rewardbench --no-deps -d /tmp/rb   # 0.1.4 when written
    (cd /tmp/rb && unzip -o rewardbench-*.whl)
    mkdir -p ~/.cache/ifeval-ref/rewardbench_ref/rewardbench ~/.cache/ifeval-ref/rewardbench_ref/analysis
    cp /tmp/rb/rewardbench/{constants,utils}.py ~/.cache/ifeval-ref/rewardbench_ref/rewardbench/
    cp /tmp/rb/analysis/get_benchmark_results.py ~/.cache/ifeval-ref/rewardbench_ref/analysis/

Running it. The input is either a flat JSON object {subset: accuracy} or a report written by
`prefer eval-rm --json` (its "subsets" -> name -> "accuracy" are read):

    ~/.cache/ifeval-ref/bin/python tests/reference/check_rewardbench.py \\
        tests/fixtures/rewardbench/subset_accuracies.json
    ~/.cache/ifeval-ref/bin/python tests/reference/check_rewardbench.py REPORT.json \\
        --compare REPORT.json        # REPORT.json from `prefer eval-rm ... --json REPORT.json`
    ~/.cache/ifeval-ref/bin/python tests/reference/check_rewardbench.py \\
        tests/fixtures/rewardbench/subset_accuracies.json \\
        --expect tests/fixtures/rewardbench/reference_scores.json   # has the reference moved?

--compare checks prefer's "sections", "score", "prior_sets" and "score_with_prior_sets" against the
reference to --tolerance (1e-9). --expect checks this run against a recorded output.

A prefer report for exactly the fixture's accuracies, with no real model: every fixture accuracy is
a fraction k/n (n <= 23), so a random tiny reward model and one pair of texts in both orders give
k right and n - k wrong pairs per subset. Probe which text the model prefers first (the pair below
is written for a model that scores "Purple monkeys dance." higher; swap W and L if the probe's
accuracy is 1.0):

    P=target/release/prefer; T=/tmp/rb-e2e; mkdir -p $T
    $P init --preset tiny --scalar-head --seed 3 --out $T/rm
    echo '{"prompt":"What is 2+2?","chosen":"It is four.","rejected":"Purple monkeys dance.","subset":"probe"}' > $T/probe.jsonl
    $P eval-rm --model $T/rm --data $T/probe.jsonl --device cpu | grep '"accuracy"' | head -1
    python3 -c 'import json,sys; from fractions import Fraction as F
    W, L = "Purple monkeys dance.", "It is four."
    for s, a in json.load(open(sys.argv[1])).items():
        f = F(a).limit_denominator(100)
        for i in range(f.denominator):
            c, r = (W, L) if i < f.numerator else (L, W)
            print(json.dumps({"prompt": "What is 2+2?", "chosen": c, "rejected": r, "subset": s}))
    ' tests/fixtures/rewardbench/subset_accuracies.json > $T/rb.jsonl
    $P eval-rm --model $T/rm --data $T/rb.jsonl --device cpu --json $T/report.json > /dev/null
    ~/.cache/ifeval-ref/bin/python tests/reference/check_rewardbench.py \\
        tests/fixtures/rewardbench/subset_accuracies.json --compare $T/report.json

Exit status: 0 when all agree; 1 when --compare or --expect found a difference; 2 when an input is
malformed or the reference cannot be loaded.
"""
import argparse
import ast
import importlib.util
import json
import math
import os
import sys

DEFAULT_ROOT = os.path.expanduser("~/.cache/ifeval-ref/rewardbench_ref")
PRIOR_SETS = ["anthropic_helpful", "anthropic_hhh", "shp", "summarize"]
MODEL = "cross-check"


def note(msg):
    print(f"check_rewardbench: {msg}", file=sys.stderr)


def function_from(path, name, namespace):
    """Compiles only the top-level function `name` of the Python file `path`, in `namespace`."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if len(nodes) != 1:
        raise SystemExit(f"check_rewardbench: {path} has {len(nodes)} functions named {name}")
    module = ast.Module(body=nodes, type_ignores=[])
    exec(compile(module, path, "exec"), namespace)
    return namespace[name]


def load_reference(root):
    paths = {
        "constants": os.path.join(root, "rewardbench", "constants.py"),
        "utils": os.path.join(root, "rewardbench", "utils.py"),
        "results": os.path.join(root, "analysis", "get_benchmark_results.py"),
    }
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"check_rewardbench: missing {', '.join(missing)} (see the setup above)")
    spec = importlib.util.spec_from_file_location("rewardbench_constants", paths["constants"])
    constants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(constants)

    import numpy as np
    import pandas as pd

    per_section = function_from(paths["utils"], "calculate_scores_per_section", {})
    leaderboard = function_from(
        paths["results"],
        "get_average_over_rewardbench",
        {
            "np": np,
            "pd": pd,
            "EXAMPLE_COUNTS": constants.EXAMPLE_COUNTS,
            "SUBSET_MAPPING": constants.SUBSET_MAPPING,
            # get_average_over_rewardbench's annotations name pd.DataFrame only; nothing else
        },
    )
    return constants, per_section, leaderboard, pd


def read_accuracies(path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get("subsets"), dict):  # prefer eval-rm --json
        acc = {name: v["accuracy"] for name, v in data["subsets"].items()}
    elif isinstance(data, dict):
        acc = data
    else:
        raise SystemExit(f"check_rewardbench: {path}: not a JSON object")
    bad = [k for k, v in acc.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        raise SystemExit(f"check_rewardbench: {path}: not numbers: {', '.join(bad)}")
    return {k: float(v) for k, v in acc.items()}


def reference_scores(ref, acc):
    constants, per_section, leaderboard, pd = ref
    core = [s for s in constants.EXAMPLE_COUNTS if s in acc]
    lacking = [s for s in constants.EXAMPLE_COUNTS if s not in acc]
    if lacking:
        # get_average_over_rewardbench needs every subset column; calculate_scores_per_section
        # skips missing subsets (and scores an empty section 0).
        note(f"no accuracy for {', '.join(lacking)}: the leaderboard figures need all 23 subsets")
    sections = per_section(constants.EXAMPLE_COUNTS, constants.SUBSET_MAPPING, acc)

    out = {"sections_calculate_scores_per_section": sections}
    if not lacking:
        row = {"model": MODEL, "model_type": "Seq. Classifier", **{s: acc[s] for s in core}}
        priors = {s: acc.get(s, float("nan")) for s in PRIOR_SETS}
        with_prior = leaderboard(pd.DataFrame([row]), pd.DataFrame([{"model": MODEL, **priors}]))
        # No prior-set row for the model: its "Prior Sets" is NaN, masked out of the average.
        no_prior = leaderboard(pd.DataFrame([row]),
                               pd.DataFrame([{"model": "someone-else", **priors}]))
        r, r0 = with_prior.iloc[0], no_prior.iloc[0]
        out["sections_leaderboard"] = {s: float(r[s]) for s in constants.SUBSET_MAPPING}
        out["score"] = float(r0["average"])
        p = float(r["Prior Sets (0.5 weight)"])
        out["prior_sets"] = None if math.isnan(p) else p
        out["score_with_prior_sets"] = float(r["average"])
    out["accuracies"] = acc
    out["unscored"] = sorted(s for s in acc if s not in constants.EXAMPLE_COUNTS
                             and s not in PRIOR_SETS)
    return out


def close(a, b, tol):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol


def compare(ref, theirs, tol, label):
    """Differences between reference figures and `theirs` (prefer's report or a recorded run)."""
    problems = []
    sections = theirs.get("sections") or theirs.get("sections_leaderboard") or {}
    for name, want in ref["sections_calculate_scores_per_section"].items():
        have = sections.get(name)
        if not close(want, have, tol):
            problems.append(f"section {name}: reference {want!r}, {label} {have!r}")
    for key in ("score", "prior_sets", "score_with_prior_sets"):
        if key not in ref:
            continue
        want, have = ref[key], theirs.get(key)
        if not close(want, have, tol):
            problems.append(f"{key}: reference {want!r}, {label} {have!r}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("accuracies", metavar="ACCURACIES.json",
                    help="{subset: accuracy}, or a prefer eval-rm --json report")
    ap.add_argument("--reference", default=DEFAULT_ROOT, metavar="DIR",
                    help=f"folder holding rewardbench/ and analysis/ (default {DEFAULT_ROOT})")
    ap.add_argument("--out", metavar="SCORES.json", help="also write the reference's figures here")
    ap.add_argument("--compare", metavar="PREFER_REPORT.json",
                    help="prefer eval-rm --json output to check against the reference")
    ap.add_argument("--expect", metavar="SCORES.json", help="a recorded output of this script")
    ap.add_argument("--tolerance", type=float, default=1e-9)
    args = ap.parse_args()

    ref = load_reference(args.reference)
    out = reference_scores(ref, read_accuracies(args.accuracies))
    a, b = out["sections_calculate_scores_per_section"], out.get("sections_leaderboard")
    if b is not None and any(not close(a[s], b[s], 1e-12) for s in a):
        note(f"calculate_scores_per_section and the leaderboard disagree: {a} vs {b}")
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")

    status = 0
    for path, label in ((args.compare, "prefer"), (args.expect, "recorded")):
        if not path:
            continue
        with open(path, encoding="utf-8") as f:
            theirs = json.load(f)
        problems = compare(out, theirs, args.tolerance, label)
        for p in problems:
            note(f"DISAGREE {p}")
        if problems:
            status = 1
            note(f"{len(problems)} difference(s) from {path} beyond {args.tolerance}")
        else:
            note(f"sections, score, prior_sets, score_with_prior_sets agree with {path} "
                 f"to {args.tolerance}")
    return status


if __name__ == "__main__":
    sys.exit(main())
