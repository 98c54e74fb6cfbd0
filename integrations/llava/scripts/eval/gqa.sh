#!/usr/bin/env bash
# GQA (testdev-balanced) for LLaVA-v1.5 + SemHiTok, as LLaVA's scripts/v1_5/eval/gqa.sh: one
# process per GPU in CUDA_VISIBLE_DEVICES, each answering its chunk (--num-chunks/--chunk-idx)
# with greedy decoding (--temperature 0) and the vicuna_v1 template; the chunks are merged,
# converted by LLaVA's scripts/convert_gqa_for_eval.py and scored by GQA's official eval.py.
# The answering step is semhitok-llava-vqa instead of llava.eval.model_vqa_loader.
#
# Data: $EVAL/gqa/llava_gqa_testdev_balanced.jsonl (LLaVA's eval.zip); GQA's official download
# under $EVAL/gqa/data (images/, testdev_balanced_*.json, and the evaluation script as eval/eval.py).
#   CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 LLAVA_REPO=/path/to/LLaVA \
#       bash integrations/llava/scripts/eval/gqa.sh [semhitok-llava-vqa flags]
# Environment: CKPT, NAME, EVAL, PYTHON, LLAVA_REPO (required; see _common.sh).
# Answers: $EVAL/gqa/answers/llava_gqa_testdev_balanced/$NAME/merge.jsonl; predictions for
# eval.py: $EVAL/gqa/data/testdev_balanced_predictions.json (overwritten on each run).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=_common.sh
source "$HERE/_common.sh"

CONVERT=$(llava_repo_file scripts/convert_gqa_for_eval.py)

SPLIT=llava_gqa_testdev_balanced
GQA=$EVAL/gqa
GQADIR=$GQA/data
QUESTIONS=$GQA/$SPLIT.jsonl
ANSWER_DIR=$GQA/answers/$SPLIT/$NAME
require_file "$QUESTIONS" "extract LLaVA's eval.zip into $EVAL"
require_dir "$GQADIR/images" "GQA images, from GQA's official download"
require_file "$GQADIR/eval/eval.py" "GQA's official evaluation script"

run_chunked "$ANSWER_DIR" "$QUESTIONS" "$GQADIR/images" "$@"

"$PYTHON" "$CONVERT" --src "$ANSWER_DIR/merge.jsonl" --dst "$GQADIR/testdev_balanced_predictions.json"

# eval.py reads its inputs relative to the folder it runs in, as upstream runs it.
(cd "$GQADIR" && "$PYTHON" eval/eval.py --tier testdev_balanced)
