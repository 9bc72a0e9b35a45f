#!/usr/bin/env bash
# `make gpu-check PYTHON=python3`: the whole GPU check in one command, for a lent H100/H200 with its
# own torch and triton and no package registry. Builds the extension in place for sm_90 only, runs
# every GPU test, then the op benchmark and the overhead case with JSON output into
# benchmarks/results/<device>-<date>-{ops,overhead}.json (device name, versions, timings), and
# prints a summary. Each step has a time limit, so the whole check ends within 8 minutes, since a
# lent GPU comes with 15 minutes of device time in all. Exits non-zero, naming the failed steps,
# when there is no GPU, a module is missing, the build fails or any test fails.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }

# Refused before anything is built: without a GPU every test below would skip and "pass".
"$PY" - <<'EOF' || fail "preflight (see above)"
import importlib.util, sys
missing = [m for m in ("torch", "triton", "pytest", "tqdm", "torchvision", "numpy") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu-check: {sys.executable} lacks {', '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit("gpu-check: torch sees no CUDA GPU; this check only runs on a GPU machine")
if torch.version.cuda is None:
    sys.exit(f"gpu-check: torch {torch.__version__} is not a CUDA build")
print(f"gpu-check: {torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda}")
EOF

STEM="benchmarks/results/$("$PY" -c 'import datetime, re, torch
name = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower()
print(f"{name}-{datetime.date.today().isoformat()}")')"
mkdir -p benchmarks/results
FAILED=()

echo "gpu-check: building for sm_90 (log: build.log)"
if ! TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS="$(nproc)" timeout 200 "$PY" setup.py build_ext --inplace >build.log 2>&1; then
    tail -n 40 build.log
    fail "build (timed out after 200 s, or see build.log)"
fi
"$PY" -m plasticnet info || fail "plasticnet info"
"$PY" -c 'import sys; from plasticnet import _extension as e; sys.exit(0 if e.with_cuda() else "gpu-check: the build has no CUDA kernels")' \
    || fail "the CUDA kernels are not compiled in"

# Every GPU test: the CUDA and Triton kernel files whole (graph capture, misaligned views, K > 8,
# no host sync), and the cuda/triton cases of the shared numerics harness and edge cases.
echo "gpu-check: tests"
if ! timeout 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py tests/test_triton_kernels.py \
    >"$STEM-tests.txt" 2>&1; then
    FAILED+=("kernel tests")
fi
if ! timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_residual_aggregate.py tests/test_kernel_edge_cases.py \
    tests/test_scores.py -k "cuda or triton" >>"$STEM-tests.txt" 2>&1; then
    FAILED+=("harness tests")
fi
grep -E "passed|failed|error" "$STEM-tests.txt" | tail -n 4

# The op benchmark at the full GPU batch (tensors of 32 MB and more for fp32), K = 2, both default
# dtypes, without the training step (its compile alone would take minutes); then the overhead case.
echo "gpu-check: op benchmark"
timeout 150 "$PY" -m plasticnet bench --device cuda --ks 2 --no-train-step --no-progress --json "$STEM-ops.json" \
    || FAILED+=("op benchmark")
echo "gpu-check: overhead benchmark"
timeout 60 "$PY" -m plasticnet bench --case overhead --device cuda --no-progress --json "$STEM-overhead.json" \
    || FAILED+=("overhead benchmark")

echo "gpu-check: results in $STEM-{tests.txt,ops.json,overhead.json}"
if [ ${#FAILED[@]} -gt 0 ]; then
    fail "${FAILED[*]}"
fi
echo "gpu-check: all steps passed"
