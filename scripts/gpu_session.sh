#!/usr/bin/env bash
# The work of a session that draws the GPU machine, prepared so that one device call does it all
# (a drawn session has 15 device minutes, the machine's start included, 10 minutes a call).
#
#   1. here, once:     bash scripts/gpu_session.sh stage
#        puts what the device needs besides the checkout into .gpu/carry/ (git-ignored through
#        .git/info/exclude): the covid-cxr data and wheels, for the device's Python (3.12), of
#        the packages lungseg needs that a CUDA PyTorch image may lack; fails when the checkout
#        and .gpu/carry together would not fit the 64 MiB a call carries.
#   2. on the device:  run(command="bash scripts/gpu_session.sh device", carry=[".gpu/carry"],
#                          timeout_s=600)
#        phases, each time-boxed, each packed into $OUT/session.tar the moment it ends, so a
#        phase that runs out of time loses only itself:
#          install  (GPU_INSTALL_S, 60 s): import what lungseg needs; install what is missing
#                   from the staged wheels; a module neither there nor staged stops the call
#          bench    (GPU_BENCH_S, 200 s): python -m benchmarks $GPU_BENCH_ARGS -> records/
#          train    (GPU_TRAIN_S, 75 s per model): scripts/train_shipped.py train MODEL for each
#                   of $GPU_MODELS (default: unet fcn deeplabv3 unet-fast; $GPU_EPOCHS overrides
#                   the recipe's epochs); a model out of time is stopped with Ctrl-C, which keeps
#                   its finished epochs, and packed as it is -> runs/MODEL/
#        session.tar also holds phases.tsv (phase, exit status, seconds) and every log. It is
#        the only file the call returns (16 MiB at most: runs travel as fp16 best weights).
#   3. here again:     bash scripts/gpu_session.sh collect FILES_AT
#        records/cuda.json -> benchmarks/records/, BENCHMARKS.md re-rendered; the runs adopted
#        into $GPU_WORK (default .gpu/work, never carried: a second device call carries only
#        .gpu/carry again); then, to ship them:
#        python scripts/train_shipped.py package --work .gpu/work --models MODEL... \
#            --data ../shared/data/covid-cxr
#
# GPU_DEVICE=cpu runs the device half on this machine's CPU (the test suite does, with small
# settings), so its plumbing cannot rot while no session draws a GPU.
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."

# GPU_CARRY, GPU_SITE and GPU_WORK move what is staged, installed and adopted (the tests do).
CARRY=${GPU_CARRY:-.gpu/carry}
SITE=${GPU_SITE:-/tmp/site}
#: Import name -> distribution of what lungseg (and the benchmark's peer) imports on the device
#: besides torch and numpy. A staged wheel is installed without its dependencies: the last
#: check of the install phase imports everything again, so a missing dependency shows there.
NEEDED="cv2=opencv-python-headless scipy=scipy yaml=pyyaml typer=typer rich=rich
matplotlib=matplotlib PIL=pillow jinja2=jinja2 pydicom=pydicom monai=monai"
#: Staged by default: small, and missing from the H200 image. Name more with GPU_WHEELS.
STAGED="pydicom monai"

stage() {
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    rm -rf "$CARRY"
    mkdir -p "$CARRY/whl" "$CARRY/data"
    cp -r "${GPU_SOURCE:-../shared/data/covid-cxr}" "$CARRY/data/covid-cxr"
    local python=.venv/bin/python
    [ -x "$python" ] || python=python3
    if [ "${GPU_STAGE_WHEELS:-1}" = 1 ]; then
        # shellcheck disable=SC2086
        "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d "$CARRY/whl" $STAGED ${GPU_WHEELS:-}
    fi
    local tree carry
    tree=$(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1)
    carry=$(du -sb "$CARRY" | cut -f1)
    echo "checkout $((tree / 1048576)) MiB + $CARRY $((carry / 1048576)) MiB of the 64 MiB a call carries"
    if [ $((tree + carry)) -gt $((62 * 1048576)) ]; then
        echo "too large: stage fewer wheels (GPU_WHEELS) or less data" >&2
        return 1
    fi
}

# One phase: run "$@" under a time limit (Ctrl-C first, so lungseg keeps its finished work, then
# kill 20 s later), note its status and time, and pack $STAGE into the archive.
phase() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS status=0
    timeout --signal=INT --kill-after=20 "$limit" "$@" >"$STAGE/logs/$name.log" 2>&1 || status=$?
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >>"$STAGE/phases.tsv"
    tail -n 3 "$STAGE/logs/$name.log" | sed "s/^/$name: /"
    # Rewrite the archive beside it, then move it over: a call cut off mid-write keeps the last.
    tar -cf "$OUT/.session.tar" -C "$STAGE" . && mv "$OUT/.session.tar" "$OUT/session.tar"
    return "$status"
}

install() {
    mkdir -p "$SITE"
    local pair module dist missing=()
    for pair in $NEEDED; do
        module=${pair%%=*}
        dist=${pair#*=}
        python3 -c "import $module" 2>/dev/null && continue
        local wheel
        wheel=$(ls "$CARRY"/whl/"${dist//-/_}"-*.whl "$CARRY"/whl/"$dist"-*.whl 2>/dev/null | head -n 1 || true)
        if [ -z "$wheel" ]; then
            missing+=("$dist")
            continue
        fi
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$wheel"
        echo "installed $dist from $wheel"
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "missing on this machine and not staged: ${missing[*]} (stage with GPU_WHEELS)" >&2
        return 1
    fi
    local modules
    modules=$(for pair in $NEEDED; do printf '%s,' "${pair%%=*}"; done)
    python3 -c "import torch, ${modules%,}; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
}

train_model() {
    local model=$1
    trap 'true' INT # the time box's Ctrl-C stops the training, not the packing after it
    local epochs=()
    [ -n "${GPU_EPOCHS:-}" ] && epochs=(--epochs "$GPU_EPOCHS")
    local status=0
    python3 scripts/train_shipped.py train "$model" --data "$CARRY/data/covid-cxr" \
        --work "$STAGE/../work" --device "$DEVICE" "${epochs[@]}" || status=$?
    # Packed whatever happened: a run stopped by its time box keeps its finished epochs.
    python3 scripts/train_shipped.py pack --work "$STAGE/../work" --out "$STAGE/runs" "$model"
    return "$status"
}

device() {
    OUT=${OUT:?run this through the device tool, which sets OUT}
    DEVICE=${GPU_DEVICE:-cuda}
    local tmp
    tmp=$(mktemp -d)
    trap "rm -rf '$tmp'" EXIT
    STAGE=$tmp/session
    mkdir -p "$STAGE/logs" "$STAGE/records" "$STAGE/runs"
    export OUT DEVICE STAGE PYTHONPATH=$SITE:$PWD/src PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >"$STAGE/gpu.txt" 2>&1 ||
        echo "no nvidia-smi" >"$STAGE/gpu.txt"
    phase install "${GPU_INSTALL_S:-60}" bash "$SELF" install || return 1
    if [ -z "${GPU_SKIP_BENCH:-}" ]; then
        # shellcheck disable=SC2086
        phase bench "${GPU_BENCH_S:-200}" python3 -m benchmarks ${GPU_BENCH_ARGS:---device $DEVICE} \
            --data "$CARRY/data" --records "$STAGE/records" --out "$STAGE/BENCHMARKS.md" || true
    fi
    local model
    for model in ${GPU_MODELS-unet fcn deeplabv3 unet-fast}; do
        phase "train-$model" "${GPU_TRAIN_S:-75}" bash "$SELF" train-model "$model" || true
    done
    cat "$STAGE/phases.tsv"
}

collect() {
    local files_at=${1:?give the folder that the device call copied its files to (files_at)}
    local python=.venv/bin/python
    local unpacked
    unpacked=$(mktemp -d)
    trap "rm -rf '$unpacked'" EXIT
    tar -xf "$files_at/session.tar" -C "$unpacked"
    cat "$unpacked/phases.tsv"
    if [ -f "$unpacked/records/cuda.json" ]; then
        cp "$unpacked/records/cuda.json" benchmarks/records/cuda.json
        "$python" -m benchmarks --render
    fi
    if [ -n "$(ls "$unpacked/runs" 2>/dev/null)" ]; then
        tar -cf "$unpacked/runs.tar" -C "$unpacked" runs
        "$python" scripts/train_shipped.py adopt --work "${GPU_WORK:-.gpu/work}" \
            --data "${GPU_SOURCE:-../shared/data/covid-cxr}" "$unpacked/runs.tar"
    fi
}

case "${1:-}" in
stage) stage ;;
device) device ;;
collect) collect "${2:-}" ;;
install) install ;;               # a phase of device, run by it
train-model) train_model "$2" ;; # a phase of device, run by it
*)
    sed -n '2,31p' "$SELF"
    exit 2
    ;;
esac
