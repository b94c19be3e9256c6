#!/usr/bin/env bash
# The GPU check (one CUDA machine, < 8 minutes, nothing downloaded): with the stock packages of a
# CUDA PyTorch image plus this project (pip install --no-deps -e . keeps the image's torch) and
# onnxruntime-gpu for the artifact rows (the `cuda` extra; without it they print the export's refusal),
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# prints one table (benchmarks/gpu_check.py: 7B-shaped bf16 decode, eager vs CUDA graphs, bandwidth
# fraction; tiny default fp16/int4 ONNX on the CUDA provider vs torch), then profiles the tiny space
# on the GPU into OUT_DIR/profile (default runs/gpu-check) and fits a decode-latency predictor on it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu-check}"
mkdir -p "$out"
python3 benchmarks/gpu_check.py
python3 -m llamanas_deploy profile --model tiny --space tiny --device cuda --precision bf16 --samples 24 \
  --visits 1 --target gpu-check --out "$out/profile" --quiet
python3 -m llamanas_deploy fit --profile "$out/profile" --metric decode_ms --out "$out/gpu-check-torch-bf16-decode_ms.json" \
  || echo "fit: see the message above"
