#!/usr/bin/env bash
# The GPU issue's check, in one run on a machine with an NVIDIA GPU (GPU time is short:
# everything is prepared and smoke-tested on the CPU; see benchmarks/README.md "GPU").
#
#   bash benchmarks/gpu_check.sh OUT [SECONDS_SCALE]
#
# writes everything under OUT (created), each step under its own time limit (seconds x
# SECONDS_SCALE, default 1), a failed or timed-out step noted and the next one run:
#   0 env.txt             nvidia-smi, driver, CUDA, CuPy and PyTorch versions
#   1 install.txt         pip install -e ".[cuda]" only if CuPy is missing (PyTorch untouched)
#   2 test_cuda.xml/.txt  pytest tests/test_cuda.py; suite.xml/.txt the whole suite with the
#                         GPU visible (no -x), failures.txt the failed test ids
#   3 bench_gpu.*         train step CuPy vs PyTorch CUDA (M, L, baby-gpt, gpt2) and generation
#   4 train_baby/         python -m tinygrad_gpt.train --preset baby-gpt --device cuda
#                         --max_iters 500 (loss, time, samples), train_baby.txt its output
#   5 steps.txt           each step's exit code and seconds
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT [SECONDS_SCALE]}
SCALE=${2:-1}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/steps.txt"

step() {            # step NAME SECONDS command...: run it under a limit, log code and time
  local name=$1 limit; limit=$(python -c "print(int($2 * $SCALE))"); shift 2
  local t0=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@"
  local code=$?
  echo "$name exit=$code seconds=$((SECONDS - t0)) limit=$limit" | tee -a "$OUT/steps.txt"
  return 0
}

{
  nvidia-smi || echo "nvidia-smi: not found"
  python -c "import cupy; print('cupy', cupy.__version__); cupy.show_config()" \
    || echo "cupy: not importable"
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'available', torch.cuda.is_available())" || echo "torch: not importable"
} > "$OUT/env.txt" 2>&1

if python -c "import cupy" 2>/dev/null; then
  echo "CuPy present: not reinstalled" > "$OUT/install.txt"
  step install 300 python -m pip install --no-deps -e . >> "$OUT/install.txt" 2>&1
else
  step install 600 python -m pip install -e ".[cuda]" > "$OUT/install.txt" 2>&1
fi
python -c "import nbclient" 2>/dev/null || \
  step install_dev 300 python -m pip install -e ".[dev]" >> "$OUT/install.txt" 2>&1

step test_cuda 300 python -m pytest -q -rs tests/test_cuda.py \
  --junitxml="$OUT/test_cuda.xml" > "$OUT/test_cuda.txt" 2>&1
step suite 900 python -m pytest -q -rs -p no:cacheprovider \
  --junitxml="$OUT/suite.xml" > "$OUT/suite.txt" 2>&1
grep -E "^(FAILED|ERROR) " "$OUT/suite.txt" > "$OUT/failures.txt" || true

step bench_gpu 900 python benchmarks/bench_gpu.py --device cuda --rounds 2 \
  --json "$OUT/bench_gpu.json" > "$OUT/bench_gpu.txt" 2>&1

step train_baby 900 python -m tinygrad_gpt.train --preset baby-gpt --device cuda \
  --max_iters 500 --out_dir "$OUT/train_baby" > "$OUT/train_baby.txt" 2>&1

cat "$OUT/steps.txt"
