#!/usr/bin/env bash
# Entrypoint of the edgeseg GPU image. For `segment` and `watch`: make sure a TensorRT engine
# built on this GPU model, with this TensorRT, from this ONNX is in the cache (building it
# the first time, a few minutes), then run edgeseg with --model set to it (a --model of your
# own given after the command wins). Any other command runs as given.
set -euo pipefail

die() {
    echo "edgeseg-gpu: $*" >&2
    exit 1
}

engine_for_this_gpu() {
    local cache=${EDGESEG_ENGINE_CACHE:-/cache} onnx=${EDGESEG_TRT_ONNX:-} gpu trt key dir tmp
    if [ -z "$onnx" ]; then
        local candidates=(/opt/edgeseg/models/*.onnx)
        if [ ${#candidates[@]} -ne 1 ] || [ ! -f "${candidates[0]}" ]; then
            die "expected one .onnx in /opt/edgeseg/models; set EDGESEG_TRT_ONNX to choose"
        fi
        onnx=${candidates[0]}
    fi
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) ||
        die "no NVIDIA GPU visible: run the container with --gpus all, or use edgeseg:cpu"
    [ -n "$gpu" ] || die "no NVIDIA GPU visible: run the container with --gpus all"
    trt=$(python3 -c 'import tensorrt; print(tensorrt.__version__)') || die "TensorRT missing"
    key=$(sha256sum "$onnx" | cut -c 1-16)
    dir="$cache/${gpu//[^A-Za-z0-9]/_}-trt$trt-$key"
    if [ ! -d "$dir" ]; then
        echo "edgeseg-gpu: building the TensorRT engine for this $gpu (first start only)" >&2
        mkdir -p "$cache"
        tmp=$(mktemp -d "$cache/.building.XXXXXX")
        if ! edgeseg export --model "$onnx" --target trt-int8 --out "$tmp" >&2; then
            rm -rf "$tmp"
            die "building the engine failed (see above); the cache is unchanged"
        fi
        # Atomic: a container that finished first keeps its engine, this copy is dropped.
        mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
    fi
    local engines=("$dir"/*.engine)
    [ -f "${engines[0]}" ] || die "no engine in $dir: remove that folder to build it again"
    echo "${engines[0]}"
}

case ${1:-} in
    segment | watch)
        command=$1
        shift
        engine=$(engine_for_this_gpu)
        exec edgeseg "$command" --model "$engine" "$@"
        ;;
    *)
        exec edgeseg "$@"
        ;;
esac
