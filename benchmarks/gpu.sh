#!/usr/bin/env bash
# Every GPU case through the one runner, on one CUDA device, bf16, JSON only (no plots):
#   tokenize   both paper presets, batches 1, 32, 128
#   train      stage 2 (pixel) at siglip-l16-256, batch 32, plain and torch.compile, with the
#              host syncs of each step
#   llava_tower      LLaVA's CLIP-L/336 against both SemHiTok towers, batch 64
#   mllm_generation  the Qwen2.5-7B shape at the paper's vocabulary, 16 x 16 image tokens
# Usage: bash benchmarks/gpu.sh [--dry-run] [OUT_DIR]     (OUT_DIR: default $OUT, else
# benchmarks/results). It installs the project first (scripts/setup.sh with the train, bench,
# llava and mllm extras) unless PYTHON names an interpreter that already has them. Planned to
# take about 7 minutes on one H100 or H200 once installed, most of it compiling the stage-2 step
# and building the random 7B model. --dry-run runs the same commands on the CPU at the tiny sizes
# to check the plumbing (tests/test_benchmarks.py runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry=1
  shift
fi
out="${1:-${OUT:-benchmarks/results}}"
if [[ -z "${PYTHON:-}" ]]; then
  bash scripts/setup.sh train,bench,llava,mllm
  PYTHON="${SEMHITOK_VENV:-.venv}/bin/python"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # random-weight models: nothing to download
export PYTHONPATH="tests${PYTHONPATH:+:$PYTHONPATH}"  # the MLLM case's tiny text tokenizer

if ((dry)); then
  common=(--device cpu --quick --repeats 1)
  presets=tiny l16=tiny batches=1,2 train_batch=2 tower_batch=1 lm=tiny grid=2
else
  common=(--device cuda)
  presets=siglip-l16-256,siglip-so400m14-384 l16=siglip-l16-256
  batches=1,32,128 train_batch=32 tower_batch=64 lm=qwen2.5-7b grid=16
fi

bench() {  # one runner call; its JSON lands in $out as <case>_<device>[_quick].json
  echo "== python -m benchmarks $*" >&2
  time "$PYTHON" -m benchmarks "${common[@]}" --results "$out" --no-plots "$@"
}
bench tokenize --presets "$presets" --batches "$batches"
bench train --presets "$l16" --stages pixel --variants compile --batches "$train_batch"
bench llava_tower --presets "$presets" --batches "$tower_batch"
bench mllm_generation --lm "$lm" --grid "$grid" --repeats 3
