#!/usr/bin/env bash
# One GPU session's checks in one go, on the GPU host, from the bundle ../shared/tools/gpu-bundle
# builds (.gpu/: the prefer binary with kernels, reference/ scripts, tests/ executables):
#   bash .gpu/reference/gpu_session.sh            (writes into $OUT, or ./gpu-out)
# Order: what must hold first (info, check), then speed, then the PyTorch side. Each step logs
# and carries on after a failure, so one broken op does not cost the rest of the session.
# Time: a lease is minutes, and code that never ran on this card may hang. Each step is killed after
# STEP_TIMEOUT seconds (default 150), and once BUDGET seconds (default 480) have passed since the
# start the remaining steps are skipped and say so; the summary and the tarball are still written.
# Files: the device tool returns at most 8 files, so models and runs live in a scratch folder and
# every small result is packed into $out/results.tgz beside session.log and summary.{json,md}.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$PWD/gpu-out}
scratch=${SCRATCH:-${TMPDIR:-/tmp}/prefer-gpu-session}
mkdir -p "$out" "$scratch"
log="$out/session.log"
start=$(date +%s)
budget=${BUDGET:-480}
step_timeout=${STEP_TIMEOUT:-150}
step() {
  local left=$((budget - ($(date +%s) - start)))
  if [ "$left" -le 5 ]; then echo "== skipped (budget of ${budget}s spent): $* ==" | tee -a "$log"; return; fi
  local limit=$((left < step_timeout ? left : step_timeout))
  echo "== [$(($(date +%s) - start))s, limit ${limit}s] $* ==" | tee -a "$log"
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "timed out after ${limit}s" | tee -a "$log"
  echo "exit $rc" | tee -a "$log"
}

# NCCL: the copy PyTorch (or the nvidia-nccl-cu13 wheel) brought to this host; the host cannot
# install one and a carry cannot hold it. prefer's own search looks there too; this names it.
if [ -z "${PREFER_NCCL:-}" ]; then
  nccl=$(python3 -c "import nvidia.nccl, os; d = os.path.join(list(nvidia.nccl.__path__)[0], 'lib', 'libnccl.so.2'); print(d if os.path.exists(d) else '')" 2>/dev/null)
  [ -z "$nccl" ] && nccl=$(python3 -c "import torch, os, glob; print(next(iter(glob.glob(os.path.join(os.path.dirname(torch.__file__), '..', 'nvidia', 'nccl', 'lib', 'libnccl.so.2'))), ''))" 2>/dev/null)
  if [ -n "$nccl" ]; then export PREFER_NCCL="$nccl"; else echo "no libnccl.so.2 from PyTorch or a wheel on this host: the NCCL check below skips" | tee -a "$log"; fi
fi
step "$here/prefer" info
step nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step "$here/prefer" check
# The CUDA forward against transformers in bf16 on the GPU, llama-1b (the CUDA issue's bar).
step python3 "$here/reference/check_transformers.py" --prefer "$here/prefer" --preset llama-1b --init-std 0.02 \
  --prefer-device cuda --torch-device cuda --torch-dtype bfloat16 --tol 0.05 --mean-tol 0.005
step "$here/prefer" bench kernels --json "$out/bench_kernels.json"
step "$here/prefer" bench train --preset llama-1b --batch 8 --seq 1024 --json "$out/bench_t1.json"
step "$here/prefer" bench train --preset llama-1b --batch 8 --seq 1024 --recompute --json "$out/bench_t1_recompute.json"
step "$here/prefer" bench train --preset llama-134m --batch 16 --seq 1024 --json "$out/bench_t2.json"
step "$here/prefer" bench dpo --preset llama-1b --batch 4 --seq 1024 --json "$out/bench_t3.json"
step "$here/prefer" bench dpo --preset llama-1b --batch 4 --seq 1024 --recompute --json "$out/bench_t3_recompute.json"
step "$here/prefer" bench generate --preset llama-1b --batch 64 --prompt-len 128 --new 256 --json "$out/bench_t4.json"
step "$here/prefer" bench generate --preset llama-1b --batch 1 --prompt-len 128 --new 256 --json "$out/bench_t5.json"
# T6: PPO iterations, llama-1b policy + value + reference + RM, 64 prompts x (128 + 256 new), 4 minibatches.
# metrics.jsonl has time/generate, time/score and time/train per iteration; the log has the memory plan.
t6="$scratch/t6"; mkdir -p "$t6"
step "$here/prefer" init --preset llama-1b --out "$t6/policy" --dtype bf16
step "$here/prefer" init --preset llama-1b --out "$t6/rm" --scalar-head --dtype bf16
python3 -c "import json,random; random.seed(0); print('\n'.join(json.dumps({'prompt_ids': [256] + [random.randrange(1000, 30000) for _ in range(127)]}) for _ in range(64)))" > "$t6/prompts.jsonl"
step "$here/prefer" ppo --device cuda --policy "$t6/policy" --reward-model "$t6/rm" --prompts "$t6/prompts.jsonl" \
  --out "$t6/run" --prompt-batch-size 64 --minibatch-size 16 --max-new-tokens 256 --max-steps 3 --no-eos-trick
cp "$t6/run/metrics.jsonl" "$out/bench_t6_metrics.jsonl" 2>/dev/null
# A world of one through prefer launch against a plain run: the same DPO steps on llama-1b; the
# launcher and the data-parallel skeleton must cost nothing (no NCCL call, no socket at world 1).
l1="$scratch/launch1"; mkdir -p "$l1"
python3 -c "
import json, random
random.seed(1)
w = lambda n: ' '.join(random.choice(['alpha','beta','gamma','delta','eps','zeta','eta','theta']) for _ in range(n))
for _ in range(256): print(json.dumps({'prompt': w(60), 'chosen': w(120), 'rejected': w(120)}))" > "$l1/pairs.jsonl"
for how in plain launched; do
  launcher=(); [ "$how" = launched ] && launcher=(launch --nproc-per-node 1 --)
  step "$here/prefer" "${launcher[@]}" dpo --device cuda --model "$t6/policy" --data "$l1/pairs.jsonl" \
    --out "$l1/$how" --batch-size 8 --max-steps 24 --log-every 4 --save-every 1000
done
python3 -c "
import json, sys
tps = lambda p: [json.loads(l)['tokens_per_s'] for l in open(p)][4:]
a, b = (sum(tps(sys.argv[i])) / len(tps(sys.argv[i])) for i in (1, 2))
print(json.dumps({'plain_tokens_per_s': a, 'launched_tokens_per_s': b, 'launched_over_plain': b / a}))
" "$l1/plain/metrics.jsonl" "$l1/launched/metrics.jsonl" > "$out/launch1.json" 2>>"$log"
tee -a "$log" < "$out/launch1.json"
# ncu: the five slowest kernels of a llama-1b training step (duration, achieved occupancy, DRAM
# throughput, L2 sectors, tensor-pipe use), for optimising offline between GPU sessions.
if command -v ncu >/dev/null; then
  step ncu --target-processes all --launch-skip 40 --launch-count 120 --csv \
    --metrics gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sectors.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active \
    --log-file "$out/ncu.csv" "$here/prefer" bench train --preset llama-1b --batch 1 --seq 1024 --steps 1
  step python3 -c "
import csv, collections, sys
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if l.startswith('\"'))]
by = collections.defaultdict(dict)
for r in rows:
    by[(r['ID'], r['Kernel Name'])][r['Metric Name']] = r['Metric Value']
top = sorted(by.items(), key=lambda kv: -float(kv[1].get('gpu__time_duration.sum', '0').replace(',', '')))[:5]
for (i, name), m in top:
    print(name[:60], {k.split('.')[0]: v for k, v in m.items()})
" "$out/ncu.csv" > "$out/ncu_top5.txt"
else
  echo "ncu not found on this host: no kernel profile" | tee -a "$log"
fi
[ -f "$here/reference/bench_torch.py" ] && step python3 "$here/reference/bench_torch.py" \
  --targets T1,T2,T3,T4,T5,T7,T8 --iters 5 --gen-iters 1 --out "$out/bench_torch.json"
for t in "$here"/tests/gpu_check-*; do [ -x "$t" ] && step "$t" --nocapture; done
# Every figure above in one JSON and one table beside PyTorch's and the targets: summary.{json,md}.
step python3 "$here/reference/gpu_summary.py" "$out"
(cd "$out" && tar czf results.tgz --exclude=results.tgz --exclude=session.log ./*.json ./*.jsonl ./*.txt ./*.csv ./*.md 2>/dev/null)
echo "done in $(($(date +%s) - start))s; results in $out" | tee -a "$log"
