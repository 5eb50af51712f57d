#!/usr/bin/env bash
# The GPU checks, in one pass, on a CUDA machine with PyTorch and no network (prepare .whl/ and
# .src/ first with tools/gpu-prepare.sh and bring them along):
#   1. RecBole and its missing needs from .whl/ into $SITE;
#   2. causal-conv1d and mamba-ssm built from .src/ in the background (one architecture: on an H200
#      with 16 cores mamba-ssm built within 7 minutes, and causal-conv1d had not finished after 7),
#      unless .src/prebuilt/ holds builds for this machine's torch (a kernels.tgz of an earlier
#      check, unpacked there: `mkdir -p .src/prebuilt && tar xzf kernels.tgz -C .src/prebuilt`);
#   3. meanwhile, the GPU tests that need no fused kernel (recbole-ssm's own kernels on CUDA);
#   4. the GPU tests against the fused kernels (tests/test_ops_gpu.py, tests/test_models_gpu.py);
#   5. bench efficiency on CUDA with the fused kernels, then with recbole-ssm's own kernels.
# Into OUT (default gpu-check/): check.log (the summary), logs.tgz (builds, tests, benchmarks),
# results.tgz (the efficiency folders) and kernels.tgz (the builds, for a later check). Every
# stage has a time limit, and no stage starts after DEADLINE seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
SITE=${SITE:-/tmp/site}
BUILD=${BUILD:-/tmp/gpu-build}
DEADLINE=${DEADLINE:-500}
LENGTHS=${LENGTHS:-200,1000,4000}
mkdir -p "$OUT" "$BUILD/logs"; OUT=$(cd "$OUT" && pwd)
LOGS=$BUILD/logs
LOG=$OUT/check.log
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
left() { echo $((DEADLINE - SECONDS)); }

say "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())' 2>&1 | tee -a "$LOG"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl >>"$LOG" 2>&1 \
    || { say "wheel install failed"; exit 1; }
export PYTHONPATH=$SITE:$PWD:$BUILD/mamba:$BUILD/conv PYTHONUNBUFFERED=1
python3 -c 'import recbole, pandas, numpy; import recbole_ssm; print("recbole", recbole.__version__, "pandas", pandas.__version__, "numpy", numpy.__version__)' 2>&1 | tee -a "$LOG"
TORCH=$(python3 -c 'import torch; print(torch.__version__)')

# 2. the fused kernels: reused from .src/prebuilt/ when built for this torch, else built in the background
cp -r .src/causal_conv1d-* "$BUILD/conv" && cp -r .src/mamba_ssm-* "$BUILD/mamba"
build() {  # folder ext-name force-variable jobs limit
    local dir=$1 ext=$2 force=$3 jobs=$4 limit=$5
    if [ "$(cat ".src/prebuilt/$dir/TORCH" 2>/dev/null)" = "$TORCH" ] && ls ".src/prebuilt/$dir/$ext".*.so >/dev/null 2>&1; then
        cp ".src/prebuilt/$dir/$ext".*.so "$BUILD/$dir/" && echo "$dir: prebuilt $ext reused (torch $TORCH)" >>"$LOG"
        return
    fi
    (cd "$BUILD/$dir" && env "$force=TRUE" MAX_JOBS="$jobs" timeout "$limit" python3 setup.py build_ext --inplace \
        >"$LOGS/build-$dir.log" 2>&1; echo "$dir build rc=$? after ${SECONDS}s" >>"$LOG")
}
build conv causal_conv1d_cuda CAUSAL_CONV1D_FORCE_BUILD 4 900 &
CONV_PID=$!
build mamba selective_scan_cuda MAMBA_FORCE_BUILD 12 600 &
MAMBA_PID=$!

# 3. meanwhile: recbole-ssm's own kernels on CUDA (the fused ones are not importable yet)
say "pytest, recbole-ssm kernels on CUDA (while the kernels build)"
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_models_gpu.py tests/test_ops_conv_backend.py \
    tests/test_stepwise.py >"$LOGS/pytest-own.log" 2>&1
say "pytest (own kernels) rc=$?: $(tail -1 "$LOGS/pytest-own.log")"

wait $MAMBA_PID  # causal-conv1d may still be building: its op runs recbole-ssm's path meanwhile
python3 -c 'from recbole_ssm.ops import backend as B; print("fused kernels import:", B.mamba_selective_scan() is not None, B.mamba_ssd() is not None, B.causal_conv1d_kernels() is not None)' 2>&1 | tee -a "$LOG"
python3 -c 'import mamba_ssm' >>"$LOG" 2>&1 || say "import mamba_ssm failed (above)"

# 4. the fused kernels against recbole-ssm's
say "pytest, fused kernels"
timeout $(( $(left) > 60 ? 240 : 1 )) python3 -m pytest -v -rfE --tb=short --timeout=100 -p no:cacheprovider -o addopts="" \
    tests/test_ops_gpu.py tests/test_models_gpu.py >"$LOGS/pytest-fused.log" 2>&1
say "pytest (fused) rc=$?: $(tail -1 "$LOGS/pytest-fused.log")"
grep -E "^(FAILED|ERROR)|Error|error [0-9]" "$LOGS/pytest-fused.log" | head -20 >>"$LOG"
if grep -q "FAILED.*test_ssd_parity" "$LOGS/pytest-fused.log"; then
    # Triton runs float32 dot products as TF32 by default: the same test with IEEE float32 says
    # whether that is the gap (the 2026-12-04 H200 run failed this test; its reason was not printed)
    TRITON_F32_DEFAULT=ieee timeout 120 python3 -m pytest -q -rfE --tb=short -p no:cacheprovider -o addopts="" \
        "tests/test_ops_gpu.py::test_ssd_parity_with_mamba_kernel" >"$LOGS/pytest-ssd-ieee.log" 2>&1
    say "SSD parity with TRITON_F32_DEFAULT=ieee rc=$?: $(tail -1 "$LOGS/pytest-ssd-ieee.log")"
fi

# 5. timings
bench() {  # output-folder [env assignments...]
    local out=$1; shift
    local t=$(( $(left) - 10 ))
    if [ "$t" -lt 60 ]; then say "skipped $out: ${t}s left"; return; fi
    say "bench efficiency -> $out (limit ${t}s)"
    env "$@" timeout "$t" python3 run_recbole_ssm.py bench efficiency --models=SASRec,Mamba4Rec,2Mamba4Rec,Hydra4Rec \
        --lengths="$LENGTHS" --batch=32 --repeats=5 --time_budget=20 --timeout=120 --device=cuda --threads=1 \
        --output="$out" >"$LOGS/$(basename "$out").log" 2>&1
    say "bench $out rc=$?"
}
bench results/efficiency-cuda
bench results/efficiency-cuda-torch RECBOLE_SSM_BACKEND=torch
tar czf "$OUT/results.tgz" --exclude=synthetic results/efficiency-cuda results/efficiency-cuda-torch 2>/dev/null
kill $CONV_PID 2>/dev/null

# the builds, for a later check on the same torch (files of at most 16 MiB come back from a lent machine)
for dir in mamba conv; do
    mkdir -p "$BUILD/kernels/$dir" && cp "$BUILD/$dir/"*_cuda.*.so "$BUILD/kernels/$dir/" 2>/dev/null \
        && echo "$TORCH" >"$BUILD/kernels/$dir/TORCH"
done
tar czf "$OUT/kernels.tgz" -C "$BUILD/kernels" . && say "kernels.tgz: $(du -h "$OUT/kernels.tgz" | cut -f1)"
tar czf "$OUT/logs.tgz" -C "$BUILD" logs
say "done"
