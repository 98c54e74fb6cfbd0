#!/usr/bin/env bash
# SEED-Bench (image + video questions) for LLaVA-v1.5 + SemHiTok, as LLaVA's
# scripts/v1_5/eval/seed.sh: one process per GPU in CUDA_VISIBLE_DEVICES, each answering its chunk
# (--num-chunks/--chunk-idx) with greedy decoding (--temperature 0) and the vicuna_v1 template;
# the chunks are merged and scored by LLaVA's scripts/convert_seed_for_submission.py, which
# prints the accuracy per question type, for images and videos, and writes the leaderboard file.
# The answering step is semhitok-llava-vqa instead of llava.eval.model_vqa_loader.
#
# Data under $EVAL/seed_bench: llava-seed-bench.jsonl (LLaVA's eval.zip), SEED-Bench.json,
# SEED-Bench-image/ and SEED-Bench-video-image/ (middle frames), as LLaVA's docs/Evaluation.md says.
#   CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 LLAVA_REPO=/path/to/LLaVA \
#       bash integrations/llava/scripts/eval/seed.sh [semhitok-llava-vqa flags]
# Environment: CKPT, NAME, EVAL, PYTHON, LLAVA_REPO (required; see _common.sh).
# Answers: $EVAL/seed_bench/answers/$NAME/merge.jsonl;
# upload file: $EVAL/seed_bench/answers_upload/$NAME.jsonl.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=_common.sh
source "$HERE/_common.sh"

CONVERT=$(llava_repo_file scripts/convert_seed_for_submission.py)

SEED=$EVAL/seed_bench
QUESTIONS=$SEED/llava-seed-bench.jsonl
ANNOTATIONS=$SEED/SEED-Bench.json
ANSWER_DIR=$SEED/answers/$NAME
UPLOAD=$SEED/answers_upload/$NAME.jsonl
require_file "$QUESTIONS" "extract LLaVA's eval.zip into $EVAL"
require_file "$ANNOTATIONS" "SEED-Bench's official annotation file"
require_dir "$SEED/SEED-Bench-image" "SEED-Bench images"

run_chunked "$ANSWER_DIR" "$QUESTIONS" "$SEED" "$@"

mkdir -p "$(dirname "$UPLOAD")"
"$PYTHON" "$CONVERT" \
    --annotation-file "$ANNOTATIONS" \
    --result-file "$ANSWER_DIR/merge.jsonl" \
    --result-upload-file "$UPLOAD"
