#!/usr/bin/env bash
# Prepares what tools/gpu-check.sh needs on a CUDA machine that has PyTorch but no network:
#   .whl/  wheels of RecBole and the few of its needs such an image may lack (for Python 3.12)
#   .src/  the mamba-ssm and causal-conv1d sources, their builds narrowed to one GPU
#          architecture (GPU_ARCH, default 90: Hopper) so that they compile in minutes
# Both folders are for one machine's check and are never committed (.gitignore).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
GPU_ARCH=${GPU_ARCH:-90}
MAMBA_VERSION=${MAMBA_VERSION:-2.3.2.post1}
CONV_VERSION=${CONV_VERSION:-1.7.0}

mkdir -p .whl .src
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    recbole==1.2.1 colorlog==4.7.2 texttable==1.7.2 thop==0.1.1.post2209072238 pandas==2.3.3 pytz==2026.6 tzdata==2026.6

fetch_sdist() {  # name version: the sdist from PyPI (pip download would try to build its metadata)
    local url
    url=$(curl -sf "https://pypi.org/pypi/$1/json" | python3 -c \
        'import json, sys; print([f["url"] for f in json.load(sys.stdin)["releases"][sys.argv[1]] if f["packagetype"] == "sdist"][0])' "$2")
    curl -sfL "$url" | tar xz -C .src
}
find .src -mindepth 1 -maxdepth 1 ! -name prebuilt -exec rm -rf {} +  # keeps prebuilt/ (gpu-check.sh)
fetch_sdist mamba-ssm "$MAMBA_VERSION"
fetch_sdist causal-conv1d "$CONV_VERSION"
for setup in .src/*/setup.py; do
    python3 - "$setup" "$GPU_ARCH" <<'EOF'
import sys

path, arch = sys.argv[1], sys.argv[2]
text = open(path).read()
marker = "    # HACK: The compiler flag"
if text.count(marker) != 1:
    sys.exit(f"{path}: the architecture list is not where expected; narrow it by hand")
one = f'    cc_flag = ["-gencode", "arch=compute_{arch},code=sm_{arch}"]  # one architecture: a short build\n\n'
text = text.replace(marker, one + marker)
text = text.replace('                    "--ptxas-options=-v",\n', "").replace('                    "-lineinfo",\n', "")
open(path, "w").write(text)
EOF
done
du -sh .whl .src
