#!/usr/bin/env bash
# The suite's GPU cases on one device, for the README's GPU table: tokenize at both paper presets
# and train at siglip-l16-256 (bf16 autocast; every train variant incl. torch.compile and fused
# AdamW, the frozen-inputs share and the host-sync count per step).
#   bash benchmarks/gpu.sh [OUT_DIR]        (PYTHON=... to pick the interpreter)
# Budget: under 8 minutes on one H200 (issue 7); the train case compiles once per stage, which
# is most of its time, so siglip-so400m14-384's train case is a separate command:
#   python -m benchmarks --device cuda --cases limit,train --presets siglip-so400m14-384
# Not yet run: no GPU was lent to the sessions since it was written.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
python="${PYTHON:-python}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # random-weight presets: nothing to download
time "$python" -m benchmarks --device cuda --cases limit,tokenize \
    --presets siglip-l16-256,siglip-so400m14-384 --batches 32,128 \
    --out "$out/suite_cuda_tokenize.json" --plots "$out/plots_cuda"
time "$python" -m benchmarks --device cuda --cases limit,train --presets siglip-l16-256 \
    --batches 32 --out "$out/suite_cuda_train.json" --plots "$out/plots_cuda"
