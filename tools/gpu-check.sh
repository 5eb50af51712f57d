#!/usr/bin/env bash
# The GPU checks, in one pass, on a CUDA machine with PyTorch and no network (prepare .whl/ and
# .src/ first with tools/gpu-prepare.sh and bring them along):
#   1. RecBole and its missing needs from .whl/ into $SITE;
#   2. causal-conv1d and mamba-ssm built from .src/ in the background (one architecture: on an H200
#      with 16 cores mamba-ssm built within 7 minutes, and causal-conv1d had not finished after 7);
#   3. meanwhile, the GPU tests that need no fused kernel (recbole-ssm's own kernels on CUDA);
#   4. the GPU tests against the fused kernels (tests/test_ops_gpu.py, tests/test_models_gpu.py);
#   5. bench efficiency on CUDA with the fused kernels, then with recbole-ssm's own kernels.
# Logs and results go to OUT (default gpu-check/); every stage has a time limit and the whole run
# stops starting new stages after DEADLINE seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
SITE=${SITE:-/tmp/site}
BUILD=${BUILD:-/tmp/gpu-build}
DEADLINE=${DEADLINE:-500}
LENGTHS=${LENGTHS:-200,1000,4000}
mkdir -p "$OUT" "$BUILD"; OUT=$(cd "$OUT" && pwd)
LOG=$OUT/check.log
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
left() { echo $((DEADLINE - SECONDS)); }

say "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())' 2>&1 | tee -a "$LOG"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl >>"$LOG" 2>&1 \
    || { say "wheel install failed"; exit 1; }
export PYTHONPATH=$SITE:$PWD:$BUILD/mamba:$BUILD/conv PYTHONUNBUFFERED=1
python3 -c 'import recbole, pandas, numpy; import recbole_ssm; print("recbole", recbole.__version__, "pandas", pandas.__version__, "numpy", numpy.__version__)' 2>&1 | tee -a "$LOG"

# 2. the fused kernels, built in the background
cp -r .src/causal_conv1d-* "$BUILD/conv" && cp -r .src/mamba_ssm-* "$BUILD/mamba"
(
    cd "$BUILD/conv" && CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=4 timeout 900 python3 setup.py build_ext --inplace \
        >"$OUT/build-conv.log" 2>&1; echo "causal-conv1d build rc=$?" >>"$LOG"
) &
CONV_PID=$!
(
    cd "$BUILD/mamba" && MAMBA_FORCE_BUILD=TRUE MAX_JOBS=12 timeout 600 python3 setup.py build_ext --inplace \
        >"$OUT/build-mamba.log" 2>&1; echo "mamba-ssm build rc=$?" >>"$LOG"
) &
MAMBA_PID=$!

# 3. meanwhile: recbole-ssm's own kernels on CUDA (the fused ones are not importable yet)
say "pytest, recbole-ssm kernels on CUDA (while the kernels build)"
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_models_gpu.py tests/test_ops_conv_backend.py \
    tests/test_stepwise.py >"$OUT/pytest-own.log" 2>&1
say "pytest (own kernels) rc=$?: $(tail -1 "$OUT/pytest-own.log")"

wait $MAMBA_PID  # causal-conv1d may still be building: its op runs recbole-ssm's path meanwhile
python3 -c 'from recbole_ssm.ops import backend as B; print("fused kernels import:", B.mamba_selective_scan() is not None, B.mamba_ssd() is not None, B.causal_conv1d_kernels() is not None)' 2>&1 | tee -a "$LOG"
python3 -c 'import mamba_ssm' >>"$LOG" 2>&1 || say "import mamba_ssm failed (above)"

# 4. the fused kernels against recbole-ssm's
say "pytest, fused kernels"
timeout $(( $(left) > 60 ? 240 : 1 )) python3 -m pytest -v -rfE --tb=short --timeout=100 -p no:cacheprovider -o addopts="" \
    tests/test_ops_gpu.py tests/test_models_gpu.py \
    >"$OUT/pytest-fused.log" 2>&1
say "pytest (fused) rc=$?: $(tail -1 "$OUT/pytest-fused.log")"

# 5. timings
bench() {  # output-folder [env assignments...]
    local out=$1; shift
    local t=$(( $(left) - 10 ))
    if [ "$t" -lt 60 ]; then say "skipped $out: ${t}s left"; return; fi
    say "bench efficiency -> $out (limit ${t}s)"
    env "$@" timeout "$t" python3 run_recbole_ssm.py bench efficiency --models=SASRec,Mamba4Rec,2Mamba4Rec,Hydra4Rec \
        --lengths="$LENGTHS" --batch=32 --repeats=5 --time_budget=20 --timeout=120 --device=cuda --threads=1 \
        --output="$out" >"$OUT/$(basename "$out").log" 2>&1
    say "bench $out rc=$?"
}
bench results/efficiency-cuda
bench results/efficiency-cuda-torch RECBOLE_SSM_BACKEND=torch
tar czf "$OUT/results.tgz" --exclude=synthetic results/efficiency-cuda results/efficiency-cuda-torch 2>/dev/null
kill $CONV_PID 2>/dev/null
say "done"
