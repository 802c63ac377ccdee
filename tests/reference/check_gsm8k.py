#!/usr/bin/env python3
"""Scores GSM8K answers with lm-evaluation-harness's own gsm8k pipeline, to cross-check prefer's.

The reference is the harness's `gsm8k` task (lm_eval/tasks/gsm8k/gsm8k.yaml; `--task-yaml
gsm8k-cot.yaml` for `gsm8k_cot`): its `flexible-extract` filter pipeline (RegexFilter with
`(-?[$0-9.,]{2,})|(-?[0-9]+)`, group_select -1, then TakeFirstFilter) and its `exact_match`
metric with the task's kwargs (ignore_case, ignore_punctuation, regexes_to_ignore). Nothing is
re-implemented: the task's YAML is read from the wheel, the filters are built by the harness's
own `lm_eval.filters.build_filter_ensemble` and applied to harness `Instance`s, the gold is the
task's `doc_to_target` rendered by the harness's `lm_eval.utils.apply_template` (Jinja), and the
verdict is the harness's registered `exact_match` (`exact_match_hf_evaluate` in
lm_eval/api/metrics.py), called as `ConfigurableTask.process_results` calls it. The glue that
mirrors task.py (how a YAML's filter_list / metric_list / doc_to_target become calls) is copied
in shape from lm_eval/api/task.py (ConfigurableTask.__init__, doc_to_target, process_results).

Only the "normalised" field printed beside each verdict is computed here, for display and for
comparing prefer's "extracted" (which prefer writes after normalisation): it applies the
metric's regexes_to_ignore and lower-casing exactly as exact_match_hf_evaluate does, and the
script asserts it agrees with the harness's verdict on every row.

The harness files are loaded from an unpacked wheel under a bare `lm_eval` package (its
__init__.py, which wants lm_eval's installed metadata, is not run). Modules they import but the
gsm8k path never calls are stubbed only when missing, with a note on stderr: `sacrebleu`
(metrics.py imports it for BLEU/chrF/TER) and `requests` (utils.py, for downloads).

Setting up the reference (nothing of lm_eval is kept in this repo):

    python3 -m venv ~/.cache/ifeval-ref            # the venv check_ifeval.py uses
    ~/.cache/ifeval-ref/bin/pip install numpy pyyaml jinja2
    ~/.cache/ifeval-ref/bin/pip download lm_eval --no-deps -d /tmp/lmeval   # 0.4.13 when written
    (cd /tmp/lmeval && unzip -o lm_eval-*.whl 'lm_eval/__init__.py' 'lm_eval/utils.py' \\
        'lm_eval/api/*' 'lm_eval/filters/*' 'lm_eval/tasks/gsm8k/*')
    mkdir -p ~/.cache/ifeval-ref/lm_eval_gsm8k/lm_eval/tasks/gsm8k
    cp -r /tmp/lmeval/lm_eval/{__init__.py,utils.py,api,filters} \\
        ~/.cache/ifeval-ref/lm_eval_gsm8k/lm_eval/
    cp /tmp/lmeval/lm_eval/tasks/gsm8k/*.yaml ~/.cache/ifeval-ref/lm_eval_gsm8k/lm_eval/tasks/gsm8k/

Running it (rows are {"question", "answer": "... #### N", "response"}, one JSON object a line):

    F=tests/fixtures/gsm8k/cross_check.jsonl
    target/release/prefer eval --task gsm8k --data $F --responses $F --out /tmp/gsm8k-prefer
    ~/.cache/ifeval-ref/bin/python tests/reference/check_gsm8k.py $F \\
        --out tests/fixtures/gsm8k/reference_verdicts.jsonl \\
        --compare /tmp/gsm8k-prefer/completions.jsonl

It writes one JSON line per row ({"line", "extracted", "normalised", "gold", "correct"}; "line" is
the row's 1-based line in the file, "extracted" the filter's raw output, "gold" the normalised
target) to --out or stdout, and the accuracy to stderr. With --compare it reads prefer's
completions.jsonl (one line per row, same order) and lists every row where prefer's
completions[0].correct, completions[0].extracted or gold differ from the harness.

Exit status: 0 when every row was scored (and, with --compare, everything agrees); 1 when
--compare found a disagreement; 2 when an input is malformed or the reference cannot be loaded.
"""
import argparse
import ast
import importlib
import json
import os
import re
import sys
import types

DEFAULT_ROOT = os.path.expanduser("~/.cache/ifeval-ref/lm_eval_gsm8k")
NEEDED = (
    "lm_eval/utils.py",
    "lm_eval/api/registry.py",
    "lm_eval/api/filter.py",
    "lm_eval/api/instance.py",
    "lm_eval/api/metrics.py",
    "lm_eval/filters/__init__.py",
    "lm_eval/filters/extraction.py",
    "lm_eval/filters/selection.py",
)
FEATURES = ["question", "answer"]  # openai/gsm8k "main" columns: ConfigurableTask.features


def note(msg):
    print(f"check_gsm8k: {msg}", file=sys.stderr)


def stub_if_missing(name, why):
    try:
        importlib.import_module(name)
    except ImportError:
        note(f"{name} not installed: stubbed ({why}; never called on the gsm8k path)")
        sys.modules[name] = types.ModuleType(name)


def load_reference(root):
    """Imports the harness's filters, metrics, Instance and utils from `root`/lm_eval."""
    missing = [f for f in NEEDED if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise SystemExit(f"check_gsm8k: {root} lacks {', '.join(missing)} (see the setup above)")
    if any(m == "lm_eval" or m.startswith("lm_eval.") for m in sys.modules):
        raise SystemExit("check_gsm8k: lm_eval is already imported; run this script on its own")
    stub_if_missing("sacrebleu", "imported by lm_eval/api/metrics.py for BLEU/chrF/TER")
    stub_if_missing("requests", "imported by lm_eval/utils.py for downloads")
    pkg = types.ModuleType("lm_eval")
    pkg.__path__ = [os.path.join(root, "lm_eval")]
    pkg.__file__ = os.path.join(root, "lm_eval", "__init__.py")
    sys.modules["lm_eval"] = pkg

    import lm_eval.api.metrics  # noqa: F401  registers exact_match
    from lm_eval import utils
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_metric
    from lm_eval.filters import build_filter_ensemble

    return types.SimpleNamespace(
        utils=utils,
        Instance=Instance,
        get_metric=get_metric,
        build_filter_ensemble=build_filter_ensemble,
    )


class Gsm8kTask:
    """The parts of lm_eval's ConfigurableTask that score a generate_until gsm8k answer."""

    def __init__(self, ref, yaml_path):
        import yaml

        with open(yaml_path, encoding="utf-8") as f:
            self.config = yaml.safe_load(f)
        if "include" in self.config:
            raise SystemExit(f"check_gsm8k: {yaml_path} includes another file; not supported")
        self.ref = ref
        # As ConfigurableTask.__init__ builds self._filters from filter_list.
        self.filters = []
        for filter_config in self.config["filter_list"]:
            components = []
            for function in filter_config["filter"]:
                kwargs = {key: function[key] for key in function if key != "function"}
                components.append([function["function"], kwargs])
            self.filters.append(ref.build_filter_ensemble(filter_config["name"], components))
        # As it builds _metric_fn_list / _metric_fn_kwargs from metric_list.
        metric_config = next(m for m in self.config["metric_list"] if m["metric"] == "exact_match")
        self.metric_kwargs = {
            key: metric_config[key]
            for key in metric_config
            if key not in ["metric", "aggregation", "higher_is_better", "hf_evaluate"]
        }
        self.metric = ref.get_metric("exact_match", metric_config.get("hf_evaluate") is True)

    def doc_to_target(self, doc):
        """ConfigurableTask.doc_to_target for a string template (the gsm8k YAMLs' case)."""
        doc_to_target = self.config["doc_to_target"]
        if doc_to_target in FEATURES:
            return doc[doc_to_target]
        target_string = self.ref.utils.apply_template(doc_to_target, doc)
        if len(target_string) >= 2 and target_string[0] == "[" and target_string[-1] == "]":
            try:
                return ast.literal_eval(target_string)
            except (SyntaxError, ValueError):
                return target_string
        return target_string

    def filtered(self, docs, responses):
        """Each filter pipeline's output per doc, as Task.apply_filters leaves them."""
        instances = [
            self.ref.Instance(
                request_type="generate_until",
                doc=doc,
                arguments=("", self.config.get("generation_kwargs", {})),
                idx=0,
                metadata=(self.config["task"], i, 1),
                resps=[resp],
            )
            for i, (doc, resp) in enumerate(zip(docs, responses))
        ]
        for f in self.filters:
            f.apply(instances)
        return [inst.filtered_resps for inst in instances]

    def exact_match(self, doc, result):
        """ConfigurableTask.process_results, generate_until branch, one target."""
        gold = self.doc_to_target(doc)
        if type(gold) is not type(result) and not isinstance(result, list):
            gold = type(result)(gold)
        score = self.metric(references=[gold], predictions=[result], **self.metric_kwargs)
        if isinstance(score, dict):
            score = score["exact_match"]
        return gold, float(score)

    def normalise(self, s):
        """What exact_match_hf_evaluate compares (display only; see the module docstring)."""
        for pattern in self.metric_kwargs.get("regexes_to_ignore") or []:
            s = re.sub(pattern, "", s)
        if self.metric_kwargs.get("ignore_case"):
            s = s.lower()
        if self.metric_kwargs.get("ignore_punctuation") or self.metric_kwargs.get("ignore_numbers"):
            raise SystemExit("check_gsm8k: ignore_punctuation/ignore_numbers not mirrored")
        return s


def read_jsonl(path):
    """(1-based line number, object) per non-blank line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise SystemExit(f"check_gsm8k: {path}:{n}: not JSON: {e}")
    return rows


def abbreviate(text, width=90):
    s = json.dumps(text, ensure_ascii=False)
    return s if len(s) <= width else s[: width - 3] + "..."


def compare(rows, verdicts, theirs_path):
    theirs = read_jsonl(theirs_path)
    problems = 0
    if len(theirs) != len(rows):
        note(f"--compare has {len(theirs)} rows, the row file {len(rows)}; comparing the first "
             f"{min(len(theirs), len(rows))}")
        problems += 1
    for (line, row), mine, (_, other) in zip(rows, verdicts, theirs):
        where = f"line {line}"
        if other.get("line") not in (None, line):
            note(f"{where}: --compare row says line {other.get('line')}")
            problems += 1
        comps = other.get("completions")
        if not (isinstance(comps, list) and comps and isinstance(comps[0], dict)):
            note(f"{where}: --compare row has no completions[0]")
            problems += 1
            continue
        c = comps[0]
        diffs = []
        if bool(c.get("correct")) != mine["correct"]:
            diffs.append(f"correct: harness {mine['correct']}, prefer {c.get('correct')}")
        if c.get("extracted") != mine["normalised"]:
            diffs.append(f"extracted: harness {mine['normalised']!r} (raw {mine['extracted']!r}), "
                         f"prefer {c.get('extracted')!r}")
        if "gold" in other and other["gold"] != mine["gold"]:
            diffs.append(f"gold: harness {mine['gold']!r}, prefer {other['gold']!r}")
        if diffs:
            problems += 1
            note(f"DISAGREE {where}: {'; '.join(diffs)}; response {abbreviate(row['response'])}")
    if problems:
        note(f"{problems} disagreement(s) with {theirs_path}")
    else:
        note(f"all {len(rows)} rows agree with {theirs_path} (correct, extracted, gold)")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", metavar="ROWS.jsonl", help='rows with "question", "answer", "response"')
    ap.add_argument("--lm-eval", default=DEFAULT_ROOT, metavar="DIR",
                    help=f"folder holding the unpacked lm_eval/ tree (default {DEFAULT_ROOT})")
    ap.add_argument("--task-yaml", default="gsm8k.yaml", choices=["gsm8k.yaml", "gsm8k-cot.yaml"],
                    help="the harness task whose filter and metric to use (default gsm8k.yaml)")
    ap.add_argument("--filter", default="flexible-extract",
                    help="which of the task's filter pipelines to score (default flexible-extract)")
    ap.add_argument("--out", metavar="VERDICTS.jsonl", help="write the verdicts here, not stdout")
    ap.add_argument("--compare", metavar="COMPLETIONS.jsonl",
                    help="prefer eval's completions.jsonl for the same rows, in the same order")
    args = ap.parse_args()

    ref = load_reference(args.lm_eval)
    task = Gsm8kTask(ref, os.path.join(args.lm_eval, "lm_eval", "tasks", "gsm8k", args.task_yaml))
    names = [f.name for f in task.filters]
    if args.filter not in names:
        raise SystemExit(f"check_gsm8k: {args.task_yaml} has filters {names}, not {args.filter}")

    rows = read_jsonl(args.rows)
    for line, row in rows:
        lacking = [k for k in ("question", "answer", "response") if not isinstance(row.get(k), str)]
        if lacking:
            raise SystemExit(f"check_gsm8k: {args.rows}:{line}: no string {', '.join(lacking)}")
    docs = [{"question": r["question"], "answer": r["answer"]} for _, r in rows]
    filtered = task.filtered(docs, [r["response"] for _, r in rows])

    verdicts = []
    for (line, _), doc, f in zip(rows, docs, filtered):
        extracted = f[args.filter]
        gold, score = task.exact_match(doc, extracted)
        correct = score == 1.0
        normalised, gold_normalised = task.normalise(extracted), task.normalise(gold)
        if correct != (normalised == gold_normalised):
            raise SystemExit(f"check_gsm8k: line {line}: the display normalisation disagrees "
                             "with the harness's exact_match; fix normalise()")
        verdicts.append({"line": line, "extracted": extracted, "normalised": normalised,
                         "gold": gold_normalised, "correct": correct})

    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    for v in verdicts:
        out.write(json.dumps(v, ensure_ascii=False) + "\n")
    if args.out:
        out.close()
    right = sum(v["correct"] for v in verdicts)
    note(f"{args.task_yaml} {args.filter}: exact_match {right}/{len(verdicts)} = "
         f"{right / len(verdicts):.6f}")
    return 1 if args.compare and compare(rows, verdicts, args.compare) else 0


if __name__ == "__main__":
    sys.exit(main())
