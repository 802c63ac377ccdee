#!/usr/bin/env bash
# Fixed-seed CPU runs whose results must not change when the code is only reorganised:
#   golden_runs.sh PREFER OUT            records them into OUT (a new folder)
#   golden_runs.sh PREFER OUT --compare  runs them again and compares with OUT, bitwise
# What is kept: metrics.jsonl and eval.jsonl rows without the time columns (time/*, tokens_per_s),
# the sha256 of every model.safetensors, and generate's output lines. Takes ~30 s on 2 cores.
# tests/fixtures/golden/ holds the runs of main after issue #17 (2026-12-02), the reference for
# issue #18's reorganisation: `golden_runs.sh target/release/prefer tests/fixtures/golden --compare`.
set -euo pipefail
prefer=$(readlink -f "$1")
golden=$(realpath -m "$2")
mode=${3:-record}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export PREFER_DEVICE=cpu

# Inputs: a tiny base, a reward-model base, the demo's synthetic task.
"$prefer" init --preset tiny --out base --seed 0 >/dev/null 2>&1
python3 - <<'EOF'
import json, random
random.seed(0)
kind = ["thank you", "happy to help", "you are welcome", "glad to"]
rude = ["go away", "not my problem", "figure it out", "whatever"]
with open("prefs.jsonl", "w") as f:
    for i in range(64):
        f.write(json.dumps({"prompt": f"question {i}?", "chosen": " " + random.choice(kind),
                            "rejected": " " + random.choice(rude)}) + "\n")
with open("prompts.jsonl", "w") as f:
    for i in range(8):
        f.write(json.dumps({"prompt": f"{i} plus one is", "answer": str(i + 1)}) + "\n")
EOF

common=(--batch-size 8 --grad-accum 1 --epochs 1 --seed 3 --save-every 1000)
run() { "$prefer" "$@" >/dev/null 2>"$work/last.log" || { cat "$work/last.log"; exit 1; }; }
run rm --model base --data prefs.jsonl --eval-data prefs.jsonl --out rm --lr 1e-3 "${common[@]}"
for loss in sigmoid ipo hinge simpo ref-free-sigmoid; do
  run dpo --model base --data prefs.jsonl --out "dpo-$loss" --loss "$loss" --lr 1e-3 \
    --ref-cache-dir cache "${common[@]}"
done
ppo=(--policy base --prompts prompts.jsonl --prompt-batch-size 4 --rollouts-per-prompt 2
     --minibatch-size 4 --max-new-tokens 6 --lr 1e-3 --max-steps 3 --seed 5)
run ppo --algo ppo --reward-model rm "${ppo[@]}" --out ppo
run ppo --algo grpo --reward math-answer "${ppo[@]}" --out grpo
run ppo --algo rloo --reward math-answer "${ppo[@]}" --out rloo
run generate --model base --prompts prompts.jsonl --out gen-greedy.jsonl --temperature 0 --max-new-tokens 8
run generate --model base --prompts prompts.jsonl --out gen-sampled.jsonl --temperature 0.7 --n 2 \
  --max-new-tokens 8 --seed 11

# The comparable part of each run.
mkdir kept
for dir in rm dpo-* ppo grpo rloo; do
  for log in metrics eval; do
    [ -f "$dir/$log.jsonl" ] || continue
    python3 - "$dir/$log.jsonl" > "kept/$dir.$log.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    row = json.loads(line)
    print(json.dumps({k: v for k, v in row.items()
                      if not (k.startswith("time/") or k == "tokens_per_s")}, sort_keys=True))
EOF
  done
  sha256sum "$dir/model.safetensors" | cut -d' ' -f1 > "kept/$dir.weights.sha256"
done
cp gen-greedy.jsonl gen-sampled.jsonl kept/

if [ "$mode" = --compare ]; then
  diff -r "$golden" kept && echo "golden runs: identical ($(ls kept | wc -l) files)"
else
  mkdir "$golden"
  cp -r kept/. "$golden"/
  echo "golden runs recorded in $golden ($(ls kept | wc -l) files)"
fi
