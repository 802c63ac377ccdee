#!/usr/bin/env bash
# One GPU session's checks in one go, on the GPU host, from the bundle ../shared/tools/gpu-bundle
# builds (.gpu/: the prefer binary with kernels, reference/ scripts, tests/ executables):
#   bash .gpu/reference/gpu_session.sh            (writes into $OUT, or ./gpu-out)
# Order: what must hold first (info, check), then speed, then the PyTorch side. Each step logs
# and carries on after a failure, so one broken op does not cost the rest of the session.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
log="$out/session.log"
step() { echo "== $* ==" | tee -a "$log"; "$@" 2>&1 | tee -a "$log"; echo "exit ${PIPESTATUS[0]}" | tee -a "$log"; }

step "$here/prefer" info
step nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step "$here/prefer" check
step "$here/prefer" bench kernels --json "$out/bench_kernels.json"
for t in "$here"/tests/gpu_check-*; do [ -x "$t" ] && step "$t" --nocapture; done
# prefer's CPU path against transformers at llama-1b widths (2 layers), on the host's torch.
step python3 "$here/reference/check_transformers.py" --prefer "$here/prefer" --preset llama-1b --layers 2 --init-std 0.02 --seqs 4
[ -f "$here/reference/bench_torch.py" ] && step python3 "$here/reference/bench_torch.py" --out "$out/bench_torch.json"
echo "done; results in $out" | tee -a "$log"
