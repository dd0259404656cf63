#!/usr/bin/env bash
# Bring the GPU wheels (onnxruntime-gpu, TensorRT, cuda-python) to an offline GPU machine.
#
#   scripts/gpu_wheels.sh download DIR [cu13|cu12]  # on a connected machine: fetch the wheels
#   scripts/gpu_wheels.sh split DIR [MiB]           # cut each wheel into parts (default 60 MiB)
#   scripts/gpu_wheels.sh join DIR                  # on the GPU machine: reassemble, check sha256
#   scripts/gpu_wheels.sh install DIR [EXTRAS]      # pip install from DIR only (default gpu,trt)
#
# TensorRT's -libs wheels are not on PyPI (PyPI holds stubs that fetch them at install time):
# `download` takes them from NVIDIA's Python index, given as NVIDIA_INDEX_URL (see TensorRT's
# installation guide). `split` exists for transfers with a per-file or per-call size limit;
# docs/GPU.md lists the wheel sizes. Python version and platform default to this machine's;
# set PY_VERSION (e.g. 3.12) and PLATFORM (e.g. manylinux_2_28_x86_64) for another target.
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,7p' "$0"; exit 2; }
PYTHON=${PYTHON:-python3}

case "$cmd" in
download)
    cuda=${3:-cu13}
    case "$cuda" in
        cu13) pins=("onnxruntime-gpu>=1.28,<2" "tensorrt-cu13>=10.13.2,<12" "cuda-python>=13,<14") ;;
        cu12) pins=("onnxruntime-gpu>=1.23,<1.27" "tensorrt-cu12>=10.3,<12" "cuda-python>=12.6,<13") ;;
        *) echo "error: CUDA variant must be cu13 or cu12, got '$cuda'" >&2; exit 2 ;;
    esac
    extra=()
    [ -n "${NVIDIA_INDEX_URL:-}" ] && extra=(--extra-index-url "$NVIDIA_INDEX_URL")
    target=()
    [ -n "${PY_VERSION:-}" ] && target+=(--python-version "$PY_VERSION")
    [ -n "${PLATFORM:-}" ] && target+=(--platform "$PLATFORM")
    mkdir -p "$dir"
    # --no-deps: the GPU machines seen so far already hold torch's CUDA and cuDNN libraries;
    # add DEPS=1 to also fetch onnxruntime-gpu's [cuda,cudnn] nvidia-* wheels (~1.2 GiB).
    deps=(--no-deps)
    [ "${DEPS:-0}" = 1 ] && deps=()
    "$PYTHON" -m pip download --only-binary=:all: "${deps[@]}" "${target[@]}" "${extra[@]}" \
        -d "$dir" "${pins[@]}"
    if [ "${DEPS:-0}" != 1 ]; then   # TensorRT's own pieces and cuda-python's bindings
        major=${cuda#cu}
        "$PYTHON" -m pip download --only-binary=:all: --no-deps "${target[@]}" "${extra[@]}" \
            -d "$dir" "tensorrt-cu${major}-libs" "tensorrt-cu${major}-bindings" \
            "cuda-bindings>=${major},<$((major + 1))" cuda-pathfinder
    fi
    (cd "$dir" && sha256sum ./*.whl > SHA256SUMS && ls -l --block-size=M ./*.whl)
    ;;
split)
    size=${3:-60}
    for wheel in "$dir"/*.whl; do
        if [ "$(stat -c %s "$wheel")" -gt $((size * 1048576)) ]; then
            split -b "${size}M" -d -a 3 "$wheel" "$wheel.part."
            rm "$wheel"
        fi
    done
    ls "$dir" | sed -n 's/\.part\.[0-9]*$//p' | sort | uniq -c
    ;;
join)
    for first in "$dir"/*.whl.part.000; do
        [ -e "$first" ] || continue
        wheel=${first%.part.000}
        cat "$wheel".part.* > "$wheel.tmp" && mv "$wheel.tmp" "$wheel" && rm "$wheel".part.*
    done
    (cd "$dir" && sha256sum -c SHA256SUMS)
    ;;
install)
    extras=${3:-gpu,trt}
    # exactly one ONNX Runtime build: the CPU one goes before the GPU one comes in
    "$PYTHON" -m pip uninstall -y onnxruntime >/dev/null 2>&1 || true
    "$PYTHON" -m pip install --no-index --find-links "$dir" --no-deps "$dir"/*.whl
    "$PYTHON" -m pip install --no-index --find-links "$dir" --no-deps -e ".[$extras]"
    "$PYTHON" -c "from runtime.model.gpu_env import environment; import json; \
print(json.dumps(environment(), indent=1))"
    ;;
*)
    echo "error: unknown command '$cmd' (download, split, join, install)" >&2; exit 2 ;;
esac
