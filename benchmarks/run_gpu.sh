#!/usr/bin/env bash
# The GPU benchmark of DnD on full-size architectures as one prepared script
# (docs/performance.md, "Running the GPU benchmark").
#
#   bash benchmarks/run_gpu.sh fetch            # on a machine with PyPI: wheels into .whl/
#   bash benchmarks/run_gpu.sh run [LIMIT] [OUT]  # on the GPU machine
#
# `fetch` downloads the packages a bare GPU image may lack (diffusers; pure Python) into .whl/ so
# they can travel with the checkout to a machine without network access.  `run` installs them
# (from .whl/ when present, else with pip from the index when diffusers is missing), prints the
# device, and runs benchmarks/gpu_dnd.py with a time limit of LIMIT seconds (default 420):
# configurations that would not finish in time are projected from the measured per-call
# latencies.  Results go to OUT (default benchmarks/results): gpu_dnd.md, the latencies JSON
# for `python -m dndbench cost --latencies` and the log.  The whole run, model building included,
# ends within LIMIT + 90 seconds.  GPU_DND_ARGS adds options (e.g. "--compile", or "--smoke" to
# try the script on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DIFFUSERS_VERSION=${DIFFUSERS_VERSION:-0.42.1}

case "${1:-run}" in
fetch)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "diffusers==$DIFFUSERS_VERSION"
    ls -l .whl
    ;;
run)
    limit=${2:-420}
    out=${3:-benchmarks/results}
    mkdir -p "$out"
    if compgen -G ".whl/*.whl" > /dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/gpu_bench_site .whl/*.whl
        export PYTHONPATH="/tmp/gpu_bench_site${PYTHONPATH:+:$PYTHONPATH}"
    elif ! "$PYTHON" -c "import diffusers" 2> /dev/null; then
        "$PYTHON" -m pip install -q -e .
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    "$PYTHON" -c "import torch, transformers, diffusers; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, \
'diffusers', diffusers.__version__)"
    set -o pipefail
    timeout $((limit + 90)) "$PYTHON" benchmarks/gpu_dnd.py --time-limit "$limit" \
        --models-dir /tmp/gpu_bench_models --out "$out/gpu_dnd.md" \
        --latencies-out "$out/gpu_dnd_latencies.json" ${GPU_DND_ARGS:-} 2>&1 \
        | tee "$out/gpu_dnd.log"
    ;;
*)
    echo "usage: bash benchmarks/run_gpu.sh fetch | run [LIMIT_SECONDS] [OUT_DIR]" >&2
    exit 2
    ;;
esac
