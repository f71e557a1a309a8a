#!/usr/bin/env bash
# Device check for the TensorRT path. Run it on a machine with an NVIDIA GPU and TensorRT's Python
# bindings (a Jetson with JetPack 6/7, or an x86 GPU server with `pip install tensorrt`), in this
# repository with compress installed (`make install`, or `pip install -e '.[tensorrt]'`).
#
#   scripts/device_check_tensorrt.sh [target]      # default target: jetson-orin-nano
#
# 1. `compress run` makes the TensorRT-ready QDQ ONNX of resnet18 with ModelOpt (CPU) and checks it;
#    its report's accuracy is EMULATED on ONNX Runtime CPU.
# 2. `compress build` builds the INT8 engine and an FP16 engine of the same model, validates the INT8
#    engine on the same eval data and times both with CUDA events, then prints one table: FP32
#    reference, INT8 emulated, INT8 engine (accuracy) and INT8 vs FP16 engine latency. It exits 3 when
#    a gate fails (e.g. INT8 no faster than FP16) and writes engines/<target>/model.engine + manifest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${1:-jetson-orin-nano}"
PY="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-runs/device-check}"
"$PY" -c "import tensorrt, torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print('TensorRT', tensorrt.__version__, 'on', torch.cuda.get_device_name(0))"
sed "s/target: jetson-orin-nano/target: ${TARGET}/" recipes/jetson-orin-int8.yaml > "recipes/.device-check-${TARGET}.yaml"
trap 'rm -f "recipes/.device-check-${TARGET}.yaml"' EXIT
"$PY" -m compress.cli run "recipes/.device-check-${TARGET}.yaml" --out "$OUT"
RUN="$(ls -dt "$OUT"/resnet18-jetson-orin-int8-* | head -1)"
"$PY" -m compress.cli build "$RUN" --target "$TARGET"
