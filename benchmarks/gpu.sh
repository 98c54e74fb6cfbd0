#!/usr/bin/env bash
# The suite's GPU cases on one device: tokenize and train (bf16 autocast; the train case adds
# torch.compile and fused AdamW variants), paper presets, for the README's GPU table.
#   bash benchmarks/gpu.sh [OUT_DIR]        (PYTHON=... to pick the interpreter)
# Budget: under 8 minutes on one H200 (issue 7). Not yet run: no GPU time was left when it was
# written; the first run's wall time is printed at the end and recorded in the JSON (wall_s).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
python="${PYTHON:-python}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # random-weight presets: nothing to download
time "$python" -m benchmarks --device cuda --cases limit,tokenize,train \
    --presets siglip-l16-256,siglip-so400m14-384 --batches 32,128 \
    --out "$out/suite_cuda.json" --plots "$out/plots_cuda"
