#!/usr/bin/env bash
# The work of a session that draws the GPU machine, prepared so that one device call does it all
# (a drawn session has 15 device minutes, the machine's start included).
#
#   1. here, once:     bash scripts/gpu_session.sh stage
#        copies ../shared/data/covid-cxr and a MONAI wheel (the benchmark's peer) into .gpu/,
#        which git ignores (.git/info/exclude) and the device call carries.
#   2. on the device:  run(command="bash scripts/gpu_session.sh device", carry=[".gpu"],
#                          timeout_s=600)
#        a. python -m benchmarks --device cuda  -> $OUT/cuda.json, $OUT/bench.log
#        b. scripts/train_shipped.py train MODEL --device cuda for each of $GPU_MODELS
#           (default: unet fcn deeplabv3 unet-fast; $GPU_EPOCHS overrides the recipe's epochs)
#           -> $OUT/runs-MODEL.tar (packed without optimizer state), $OUT/train.log
#        Set GPU_SKIP_BENCH=1 or GPU_MODELS="" to do only one half.
#   3. here again:     bash scripts/gpu_session.sh collect FILES_AT
#        cuda.json -> benchmarks/records/, BENCHMARKS.md re-rendered; the runs adopted into
#        .gpu/work/runs (data prepared here, split checked); then, to ship them:
#        python scripts/train_shipped.py package --work .gpu/work --models MODEL... \
#            --data ../shared/data/covid-cxr
#
# The device has PyTorch (CUDA), numpy, OpenCV, SciPy, scikit-image, typer, rich and PyYAML;
# MONAI is carried as a wheel and lungseg runs from src/ (PYTHONPATH), not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() {
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    mkdir -p .gpu/whl .gpu/data
    rm -rf .gpu/data/covid-cxr
    cp -r ../shared/data/covid-cxr .gpu/data/
    local python=.venv/bin/python
    [ -x "$python" ] || python=python3
    "$python" -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl "monai==1.6.1"
    du -sh .gpu
}

device() {
    local out=${OUT:?run this through the device tool, which sets OUT}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
    local device=${GPU_DEVICE:-cuda}  # GPU_DEVICE=cpu tries the plumbing on a machine without one
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee "$out/gpu.txt" || true
    if [ -z "${GPU_SKIP_BENCH:-}" ]; then
        python3 -m benchmarks --device "$device" --data .gpu/data 2>&1 | tee "$out/bench.log" || true
        cp "benchmarks/records/$device.json" "$out/" || true
    fi
    local models=${GPU_MODELS-unet fcn deeplabv3 unet-fast}
    local epochs=()
    [ -n "${GPU_EPOCHS:-}" ] && epochs=(--epochs "$GPU_EPOCHS")
    for model in $models; do  # one model failing does not stop the others
        if ! python3 scripts/train_shipped.py train "$model" --data .gpu/data/covid-cxr \
            --work /tmp/gpu-work --device "$device" "${epochs[@]}" >"/tmp/train-$model.log" 2>&1
        then
            echo "$model: training failed" | tee -a "$out/train.log"
        fi
        tail -n 5 "/tmp/train-$model.log" | tee -a "$out/train.log"
    done
    if [ -n "$models" ]; then
        # shellcheck disable=SC2086
        python3 scripts/train_shipped.py pack --work /tmp/gpu-work --out "$out" $models \
            | tee -a "$out/train.log"
    fi
}

collect() {
    local files_at=${1:?give the folder that the device call copied its files to (files_at)}
    local python=.venv/bin/python
    if [ -f "$files_at/cuda.json" ]; then
        cp "$files_at/cuda.json" benchmarks/records/cuda.json
        "$python" -m benchmarks --render
    fi
    shopt -s nullglob
    local archives=("$files_at"/runs-*.tar)
    if [ ${#archives[@]} -gt 0 ]; then
        "$python" scripts/train_shipped.py adopt --work .gpu/work --data ../shared/data/covid-cxr \
            "${archives[@]}"
    fi
}

case "${1:-}" in
stage) stage ;;
device) device ;;
collect) collect "${2:-}" ;;
*)
    sed -n '2,22p' "$0"
    exit 2
    ;;
esac
