#!/usr/bin/env python3
"""Scores IFEval rows with lm-evaluation-harness's own IFEval checker, to cross-check prefer's.

lm-evaluation-harness keeps its IFEval scorer in `lm_eval/tasks/ifeval/` (instructions.py,
instructions_registry.py, instructions_util.py, utils.py). This script loads those four files,
without the rest of lm_eval and its heavy dependencies, and runs its
`test_instruction_following_strict` / `_loose` on each row of a JSONL file. The row file has one
JSON object per line, IFEval's fields plus the response to score:

    {"key": 1000, "prompt": "...", "instruction_id_list": ["punctuation:no_comma", ...],
     "kwargs": [{...}, ...], "response": "..."}

It prints one JSON line per row to stdout, {"key": ..., "strict": [bool, ...], "loose": [...]},
and the four aggregate figures (prompt_level_strict_acc, inst_level_strict_acc,
prompt_level_loose_acc, inst_level_loose_acc) to stderr. With --compare it also reads a file of
verdicts made by prefer (one JSON line per row, same order, "strict" and "loose" at top level or
under "completions"[0]) and lists every instruction where the two disagree.

Setting up the reference (nothing of lm_eval is kept in this repo; no other lm_eval deps needed):

    python3 -m venv ~/.cache/ifeval-ref
    ~/.cache/ifeval-ref/bin/pip install langdetect nltk immutabledict packaging
    ~/.cache/ifeval-ref/bin/pip download lm_eval --no-deps -d /tmp/lmeval
    (cd /tmp/lmeval && unzip -o lm_eval-*.whl 'lm_eval/tasks/ifeval/*.py')
    mkdir -p ~/.cache/ifeval-ref/lm_eval_ifeval
    cp /tmp/lmeval/lm_eval/tasks/ifeval/*.py ~/.cache/ifeval-ref/lm_eval_ifeval/

Running it:

    ~/.cache/ifeval-ref/bin/python tests/reference/check_ifeval.py \
        --lm-eval-ifeval ~/.cache/ifeval-ref/lm_eval_ifeval tests/fixtures/ifeval/rows.jsonl
    ~/.cache/ifeval-ref/bin/python tests/reference/check_ifeval.py \
        --lm-eval-ifeval ~/.cache/ifeval-ref/lm_eval_ifeval tests/fixtures/ifeval/rows.jsonl \
        --compare prefer_verdicts.jsonl > /dev/null

Offline differences from a networked lm-eval run, each announced on stderr when it applies:
- NLTK's punkt_tab data cannot be downloaded here. When it is missing, nltk.download is stubbed
  out while the reference is imported (its import-time download_nltk_resources would reach for
  the network), count_sentences counts the non-empty sentences of the reference's own
  instructions_util.split_into_sentences instead of punkt's, and nltk.word_tokenize (used by
  change_case:capital_word_frequency) tokenizes the whole text as one line with NLTK's word
  tokenizer (NLTKWordTokenizer, what word_tokenize runs per punkt sentence), needing no data.
  With punkt_tab installed (NLTK_DATA), the reference runs unpatched.
- langdetect is seeded (DetectorFactory.seed = 0) so language verdicts are repeatable.

Exit status: 0 when every row was scored (and, with --compare, everything agrees); 1 when
--compare found a disagreement; 2 when the reference raised on some row or an input is malformed.
"""
import argparse
import atexit
import contextlib
import json
import os
import shutil
import sys
import tempfile

REFERENCE_FILES = (
    "instructions.py",
    "instructions_registry.py",
    "instructions_util.py",
    "utils.py",
)
AGGREGATES = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
)


def note(msg):
    print(f"check_ifeval: {msg}", file=sys.stderr)


def nltk_works(probe):
    try:
        probe()
        return True
    except LookupError:
        return False


def load_reference(ifeval_dir):
    """Imports lm-eval's ifeval `utils` and `instructions_util` from a fake `lm_eval` package.

    The reference's files import each other as `lm_eval.tasks.ifeval.<name>`, so they are copied
    into `<tmp>/lm_eval/tasks/ifeval/` beside empty `__init__.py` files and `<tmp>` goes first on
    sys.path; the real lm_eval (if installed) is never imported.
    """
    missing = [f for f in REFERENCE_FILES if not os.path.isfile(os.path.join(ifeval_dir, f))]
    if missing:
        raise SystemExit(f"check_ifeval: {ifeval_dir} lacks {', '.join(missing)}")
    if any(m == "lm_eval" or m.startswith("lm_eval.") for m in sys.modules):
        raise SystemExit("check_ifeval: lm_eval is already imported; run this script on its own")

    root = tempfile.mkdtemp(prefix="check-ifeval-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    pkg = os.path.join(root, "lm_eval", "tasks", "ifeval")
    os.makedirs(pkg)
    for d in (os.path.join(root, "lm_eval"), os.path.join(root, "lm_eval", "tasks"), pkg):
        open(os.path.join(d, "__init__.py"), "w").close()
    for f in REFERENCE_FILES:
        shutil.copy(os.path.join(ifeval_dir, f), os.path.join(pkg, f))
    sys.path.insert(0, root)

    import langdetect
    import nltk

    langdetect.DetectorFactory.seed = 0

    # count_sentences loads "tokenizers/punkt/english.pickle", which NLTK >= 3.9 serves from
    # punkt_tab; word_tokenize needs punkt_tab too, to split sentences first.
    have_sentences = nltk_works(lambda: nltk.data.load("nltk:tokenizers/punkt/english.pickle"))
    have_words = nltk_works(lambda: nltk.word_tokenize("Probe one. Probe two."))
    if not have_sentences:
        note(
            "NLTK punkt_tab data not found: stubbing nltk.download for the import, and "
            "count_sentences counts instructions_util.split_into_sentences instead of punkt"
        )
        nltk.download = lambda *args, **kwargs: False

    # The reference prints "Downloaded punkt_tab on rank 0" on stdout when it tried to download;
    # stdout is for verdicts only.
    with contextlib.redirect_stdout(sys.stderr):
        from lm_eval.tasks.ifeval import instructions_util, utils

    if not have_sentences:
        instructions_util.download_nltk_resources = lambda: None

        def count_sentences(text):
            return sum(1 for s in instructions_util.split_into_sentences(text) if s.strip())

        instructions_util.count_sentences = count_sentences
    if not have_words:
        note(
            "NLTK punkt_tab data not found: nltk.word_tokenize tokenizes the whole text as one "
            "line with NLTKWordTokenizer (no sentence split first)"
        )
        word_tokenizer = nltk.tokenize.NLTKWordTokenizer()

        def word_tokenize(text, language="english", preserve_line=False):
            return word_tokenizer.tokenize(text)

        instructions_util.nltk.word_tokenize = word_tokenize
    return utils


def read_jsonl(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"check_ifeval: {path}:{n}: not JSON: {e}")
    return rows


def score(utils, row):
    inp = utils.InputExample(
        key=row["key"],
        instruction_id_list=row["instruction_id_list"],
        prompt=row["prompt"],
        kwargs=row["kwargs"],
    )
    response = row["response"]
    strict = utils.test_instruction_following_strict(inp, response)
    loose = utils.test_instruction_following_loose(inp, response)
    return list(strict.follow_instruction_list), list(loose.follow_instruction_list)


def aggregates(verdicts):
    out = {}
    for variant in ("strict", "loose"):
        lists = [v[variant] for v in verdicts]
        flat = [b for lst in lists for b in lst]
        prompt_level = sum(all(lst) for lst in lists) / len(lists) if lists else 0.0
        out[f"prompt_level_{variant}_acc"] = prompt_level
        out[f"inst_level_{variant}_acc"] = sum(flat) / len(flat) if flat else 0.0
    return out


def abbreviate(text, width=100):
    s = json.dumps(text, ensure_ascii=False)
    return s if len(s) <= width else s[: width - 3] + "..."


def their_verdict(obj):
    """("strict", "loose") lists of one --compare line: top level, else completions[0]."""
    if isinstance(obj, dict) and "strict" in obj and "loose" in obj:
        return obj["strict"], obj["loose"]
    comps = obj.get("completions") if isinstance(obj, dict) else None
    if isinstance(comps, list) and comps and isinstance(comps[0], dict):
        c = comps[0]
        if "strict" in c and "loose" in c:
            return c["strict"], c["loose"]
    return None


def compare(rows, ours, theirs_path):
    theirs = read_jsonl(theirs_path)
    problems = 0
    if len(theirs) != len(rows):
        note(f"--compare has {len(theirs)} rows, the row file {len(rows)}; comparing the first "
             f"{min(len(theirs), len(rows))}")
        problems += 1
    for i, (row, mine, other) in enumerate(zip(rows, ours, theirs)):
        key = row.get("key")
        where = f"row {i + 1} key {key}"
        if isinstance(other, dict) and "key" in other and other["key"] != key:
            note(f"{where}: --compare row has key {other['key']!r}")
        if mine is None:
            continue  # the reference raised; reported already
        got = their_verdict(other)
        if got is None:
            note(f"{where}: --compare row has no strict/loose lists")
            problems += 1
            continue
        ids = row["instruction_id_list"]
        for variant, want, have in (("strict", mine[0], got[0]), ("loose", mine[1], got[1])):
            if not isinstance(have, list) or len(have) != len(want):
                note(f"{where} {variant}: reference has {len(want)} verdicts, --compare {have!r}")
                problems += 1
                continue
            for j, (a, b) in enumerate(zip(want, have)):
                if bool(a) != bool(b):
                    problems += 1
                    note(
                        f"DISAGREE {where} {ids[j]} {variant}: reference {a}, prefer {b}; "
                        f"kwargs {json.dumps(row['kwargs'][j])}; "
                        f"response {abbreviate(row['response'])}"
                    )
    if problems:
        note(f"{problems} disagreement(s) with {theirs_path}")
    else:
        note(f"all verdicts agree with {theirs_path}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lm-eval-ifeval", required=True, metavar="DIR",
                    help="folder holding lm-eval's ifeval .py files (instructions*.py, utils.py)")
    ap.add_argument("rows", metavar="ROWS.jsonl",
                    help="IFEval rows with key, prompt, instruction_id_list, kwargs, response")
    ap.add_argument("--compare", metavar="PREFER_COMPLETIONS.jsonl",
                    help="prefer's verdicts, one JSON line per row in the same order")
    args = ap.parse_args()

    utils = load_reference(args.lm_eval_ifeval)
    rows = read_jsonl(args.rows)
    for n, row in enumerate(rows, 1):
        fields = ("key", "prompt", "instruction_id_list", "kwargs", "response")
        lacking = [f for f in fields if f not in row]
        if lacking:
            raise SystemExit(f"check_ifeval: row {n} lacks {', '.join(lacking)}")

    ours, errors = [], 0
    for row in rows:
        try:
            strict, loose = score(utils, row)
        except Exception as e:  # the reference raising is a finding in itself
            errors += 1
            note(f"reference raised on key {row['key']}: {type(e).__name__}: {e}")
            ours.append(None)
            print(json.dumps({"key": row["key"], "strict": None, "loose": None,
                              "error": f"{type(e).__name__}: {e}"}), flush=True)
            continue
        ours.append((strict, loose))
        print(json.dumps({"key": row["key"], "strict": strict, "loose": loose}), flush=True)

    scored = [{"strict": v[0], "loose": v[1]} for v in ours if v is not None]
    agg = aggregates(scored)
    note(f"{len(scored)} rows scored, {sum(len(v['strict']) for v in scored)} instructions"
         + (f", {errors} rows raised" if errors else ""))
    for name in AGGREGATES:
        print(f"{name}: {agg[name]:.6f}", file=sys.stderr)

    status = 2 if errors else 0
    if args.compare and compare(rows, ours, args.compare):
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
