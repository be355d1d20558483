#!/usr/bin/env bash
# One-shot GPU check of latent-balance: run once on a machine with a CUDA GPU, from anywhere.
#
#   OUT=/path/to/results bash bench/gpu_check.sh        # OUT defaults to bench/results/gpu_check
#
# No install needed: the repo goes on PYTHONPATH. Python: $PYTHON, else .venv/bin/python when it has
# torch, else python3. The CUDA kernels are built for the GPU present, into $STYLEGAN_OPS_CACHE
# (default /tmp/stylegan_ops_cache). Steps (a failing step does not stop the later ones; the script
# exits non-zero if any failed):
#
#   1. environment: GPU, driver, torch, nvcc                                  -> gpu_check.log
#   2. build both CUDA ops for this GPU, in parallel, timed                   -> gpu_check.log
#   3. pytest tests/test_ops_*.py: the -m gpu parity tests and the fast CPU tests (the slow
#      compile / host-kernel tests need no GPU and run in CI)                -> gpu_check.log
#   4. pytest -m gpu on the rest of tests/ (other GPU tests, if any)          -> gpu_check.log
#      (3 and 4 run in one process, `-o addopts=`: not in pytest.ini's xdist workers, which would share
#      the one GPU and need pytest-xdist in the environment used here)
#   5. $GPU_CHECK_BEFORE_BENCH, if set: a shell command run before the timed benchmarks (e.g. one that
#      waits for other GPU work started beside this script, so that it does not disturb the timings)
#   6. bench/bench_ops.py (reference vs CUDA, fp32/fp16, fwd and fwd+bwd)     -> ops_<device>.json
#   7. bench/bench_generator.py (config-f images/s at 64/256/1024 px; fp32, fp16, reference ops)
#                                                                             -> generator_<device>.json
#   8. bench/bench_labelers.py --backends-only: gender + age faces/s, onnxruntime vs the torch port on the
#      CPU and the device path on CUDA, against the 2,000 faces/s target (the CUDA parity tests of the
#      torch port and warp, tests/test_labelers_device.py, run in step 4)  -> labelers_<device>.json
#   9. bench/bench_vs_nvidia.py, only when NVIDIA's stylegan2-ada-pytorch tree is given (below): builds
#      their plugins, checks parity and times both networks at the issue's sizes (256 and 1024 px,
#      batch 8 and 32, fp32 and fp16; plus the launch-bound time per call of 4-channel networks at
#      256 px, batch 1); exits non-zero if NVIDIA's side is not on its plugins
#                                                                             -> vs_nvidia_<device>.json
#
# NVIDIA's tree (never committed here: its licence is non-commercial) is looked for in
# $NVIDIA_REPO, else in .nvidia/stylegan2-ada-pytorch (ignored by git). The GPU machine has no internet,
# so fetch it beforehand on a machine that has, into that ignored folder, and have the device runner
# carry it along with the work tree (it copies tracked files plus the carry paths, 64 MiB in all; the
# tree is about 2 MB):
#
#   git clone --depth 1 https://github.com/NVlabs/stylegan2-ada-pytorch .nvidia/stylegan2-ada-pytorch
#   (or: git --git-dir=<bare mirror> archive HEAD | tar -x -C .nvidia/stylegan2-ada-pytorch)
#   run(command="bash bench/gpu_check.sh", carry=[".nvidia"])
#
# Without it, step 9 is skipped (logged). $GPU_CHECK_VS_NVIDIA_CASES overrides the sizes
# (default 256x8,256x32,1024x8,1024x32) and $GPU_CHECK_VS_NVIDIA_TIMEOUT its time limit (default 420 s;
# the first run also compiles NVIDIA's two plugins; that time is not measured yet).
#
# Each benchmark is stopped after $GPU_CHECK_BENCH_TIMEOUT seconds (default 240).
#
# Every step's output is appended to $OUT/gpu_check.log; $OUT/gpu_check_summary.json lists each step's
# exit status and seconds. The device runner returns at most 8 files from $OUT (no deeper than 2
# folders), so keep new steps' outputs few (pytest results go to the log, not to JUnit files: with NVIDIA's
# tree present the script writes 7 files): add a step with `step NAME COMMAND...` at the end.
set -u
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
OUT="${OUT:-$ROOT/bench/results/gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export STYLEGAN_OPS_CACHE="${STYLEGAN_OPS_CACHE:-/tmp/stylegan_ops_cache}"
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python
else PY=python3; fi

SUMMARY=()
FAILED=0
step() {  # step NAME COMMAND... : run, log, record status and time
    local name="$1"; shift
    echo "=== [$name] $*" | tee -a "$LOG"
    local t0=$SECONDS
    "$@" >> "$LOG" 2>&1
    local rc=$?
    local dt=$((SECONDS - t0))
    echo "=== [$name] exit $rc after ${dt}s" | tee -a "$LOG"
    SUMMARY+=("{\"step\": \"$name\", \"exit\": $rc, \"seconds\": $dt}")
    if [ "$rc" -ne 0 ]; then FAILED=1; fi
}

env_report() {
    nvidia-smi || echo "nvidia-smi not available"
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
    "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version || echo "nvcc not found"
    git -C "$ROOT" log -1 --oneline 2>/dev/null || true
}

build_one() {  # build_one OP: compile (or load from the cache) one op for the present GPU
    "$PY" - "$1" <<'EOF'
import sys, time
import torch
from stylegan_ops.ops import _build
name = sys.argv[1]
if not torch.cuda.is_available():
    print(f"{name}: no CUDA device, nothing to build"); sys.exit(0)
t0 = time.perf_counter()
mod = _build.build_plugin(name)
print(f"{name}: built/loaded {mod.__name__} in {time.perf_counter() - t0:.1f} s")
EOF
}

build_ops() {
    build_one upfirdn2d & local p1=$!
    build_one bias_act & local p2=$!
    local rc=0
    wait $p1 || rc=1
    wait $p2 || rc=1
    return $rc
}

pytest_rest_gpu() {  # exit 5 = no test selected: fine
    "$PY" -m pytest -o addopts= -q -m gpu tests --ignore-glob='tests/test_ops_*.py' -p no:cacheprovider \
        -rs
    local rc=$?
    [ "$rc" -eq 5 ] && return 0
    return $rc
}

# results are named after the device, e.g. ops_cuda_NVIDIA_H200.json
DEV_TAG="$("$PY" -c "import re,torch;print('cuda_'+re.sub(r'[^A-Za-z0-9]+','_',torch.cuda.get_device_name()).strip('_') if torch.cuda.is_available() else 'cpu')" 2>/dev/null)"
DEV_TAG="${DEV_TAG:-unknown}"
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-240}"

step env env_report
step build build_ops
step pytest_ops "$PY" -m pytest -o addopts= -q -rs -m "gpu or not slow" tests/test_ops_upfirdn2d.py tests/test_ops_bias_act.py \
    tests/test_ops_cuda.py -p no:cacheprovider --durations=10
step pytest_gpu pytest_rest_gpu
if [ -n "${GPU_CHECK_BEFORE_BENCH:-}" ]; then step before_bench bash -c "$GPU_CHECK_BEFORE_BENCH"; fi
step bench_ops timeout "$BENCH_TIMEOUT" "$PY" bench/bench_ops.py --out "$OUT/ops_$DEV_TAG.json"
step bench_generator timeout "$BENCH_TIMEOUT" "$PY" bench/bench_generator.py --reps 10 --out "$OUT/generator_$DEV_TAG.json"
step bench_labelers timeout "$BENCH_TIMEOUT" "$PY" bench/bench_labelers.py --backends-only --speed-n 512 \
    --threads 2 --out "$OUT/labelers_$DEV_TAG.json"

NVIDIA_REPO="${NVIDIA_REPO:-$ROOT/.nvidia/stylegan2-ada-pytorch}"
if [ -f "$NVIDIA_REPO/training/networks.py" ]; then
    step bench_vs_nvidia timeout "${GPU_CHECK_VS_NVIDIA_TIMEOUT:-420}" "$PY" bench/bench_vs_nvidia.py \
        --nvidia-repo "$NVIDIA_REPO" --cases "${GPU_CHECK_VS_NVIDIA_CASES:-256x8,256x32,1024x8,1024x32}" \
        --overhead 256 --out "$OUT/vs_nvidia_$DEV_TAG.json"
    # the same with the reuse of weight-derived tensors on (off by default until this measures its gain)
    step bench_vs_nvidia_reuse env STYLEGAN_OPS_REUSE=1 timeout "${GPU_CHECK_VS_NVIDIA_TIMEOUT:-420}" "$PY" \
        bench/bench_vs_nvidia.py --nvidia-repo "$NVIDIA_REPO" \
        --cases "${GPU_CHECK_VS_NVIDIA_CASES:-256x8,256x32,1024x8,1024x32}" --overhead 256 \
        --out "$OUT/vs_nvidia_reuse_$DEV_TAG.json"
else
    echo "=== [bench_vs_nvidia] skipped: no NVIDIA stylegan2-ada-pytorch tree at $NVIDIA_REPO (see the header)" \
        | tee -a "$LOG"
fi

# ---- further steps go here (keep the number of files in $OUT at 8 or fewer) ----

(IFS=,; echo "{\"steps\": [${SUMMARY[*]}], \"failed\": $FAILED}") > "$OUT/gpu_check_summary.json"
echo "results in $OUT:"; ls -la "$OUT"
exit $FAILED
