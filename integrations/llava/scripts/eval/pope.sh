#!/usr/bin/env bash
# POPE (object hallucination) for LLaVA-v1.5 + SemHiTok, as LLaVA's scripts/v1_5/eval/pope.sh:
# one process, greedy decoding (--temperature 0), vicuna_v1 template, then
# llava.eval.eval_pope (accuracy, precision, recall, F1, yes-ratio for each POPE split).
# The answering step is semhitok-llava-vqa instead of llava.eval.model_vqa_loader.
#
# Data under $EVAL/pope: llava_pope_test.jsonl (LLaVA's eval.zip), val2014/ (COCO val2014
# images), coco/ (the coco_pope_*.json files from POPE's output/coco).
#   CUDA_VISIBLE_DEVICES=0 bash integrations/llava/scripts/eval/pope.sh [semhitok-llava-vqa flags]
# Environment: CKPT, NAME, EVAL, PYTHON (see _common.sh). Answers: $EVAL/pope/answers/$NAME.jsonl
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=_common.sh
source "$HERE/_common.sh"

POPE=$EVAL/pope
QUESTIONS=$POPE/llava_pope_test.jsonl
IMAGES=$POPE/val2014
ANNOTATIONS=$POPE/coco
ANSWERS=$POPE/answers/$NAME.jsonl
require_file "$QUESTIONS" "extract LLaVA's eval.zip into $EVAL"
require_dir "$IMAGES" "COCO val2014 images"
require_dir "$ANNOTATIONS" "POPE's output/coco annotation files"

answer "$QUESTIONS" "$IMAGES" "$ANSWERS" "$@"

"$PYTHON" -m llava.eval.eval_pope \
    --annotation-dir "$ANNOTATIONS" \
    --question-file "$QUESTIONS" \
    --result-file "$ANSWERS"
