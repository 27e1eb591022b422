#!/usr/bin/env bash
# The one-shot command for a lent GPU machine that has python3 with torch and torchvision but not the project's other
# dependencies and no network: installs the wheels carried in .whl/ into /tmp/site, then runs tools/bench_gpu.py
# (at most 8 minutes) and, with --tests, the GPU tests of tests/test_bench_gpu.py in the time left.
#
#   bash tools/device_run.sh [--tests] [more options of tools/bench_gpu.py]
#
# Copy the repository to the GPU machine with .whl/ (prepared once beforehand, see the README's benchmark section) and
# runs/demo/qualiclip.pth, then run this script with a 10-minute limit.
# Results under $OUT (or /tmp/qualiclip-bench without it): bench.jsonl, bench.log, nvidia-smi.txt[, tests.log].
# Exit code: the benchmark's (0: every section ran), or the tests' when they ran and failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 3
START=$SECONDS
LIMIT=${LIMIT:-570}     # seconds for everything, below the device call's 600 s
OUT=${OUT:-/tmp/qualiclip-bench}; mkdir -p "$OUT"
TESTS=0; ARGS=()
for a in "$@"; do if [ "$a" = --tests ]; then TESTS=1; else ARGS+=("$a"); fi; done

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_run: installing .whl/*.whl into /tmp/site failed"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  echo "device_run: no .whl/ folder; using the packages python3 already has"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg

python3 -c "import torch, torchvision, open_clip, kornia, fastcore, ftfy; print('device_run: torch', torch.__version__, \
'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)" \
  || { echo "device_run: a dependency is missing (see above): add its wheel to .whl/"; exit 3; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv \
  >"$OUT/nvidia-smi.txt" 2>&1; cat "$OUT/nvidia-smi.txt"

BUDGET=${BUDGET:-480}
if [ $TESTS = 1 ]; then BUDGET=${BUDGET_WITH_TESTS:-400}; fi
timeout $((BUDGET + 60)) python3 tools/bench_gpu.py --budget "$BUDGET" --out "$OUT/bench.jsonl" "${ARGS[@]}" 2>&1 | tee "$OUT/bench.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "device_run: the benchmark ran past $((BUDGET + 60)) s and was stopped; $OUT/bench.jsonl holds the sections it finished"

if [ $TESTS = 1 ]; then
  left=$((LIMIT - (SECONDS - START)))
  if [ $left -gt 60 ]; then
    timeout $left python3 -m pytest -q -p no:cacheprovider tests/test_bench_gpu.py -k test_gpu_ 2>&1 | tee "$OUT/tests.log"
    trc=${PIPESTATUS[0]}
    [ "$trc" != 0 ] && [ "$rc" = 0 ] && rc=$trc
  else echo "device_run: $left s left, GPU tests not run"; fi
fi
echo "device_run: exit $rc after $((SECONDS - START)) s"
exit $rc
