#!/usr/bin/env bash
# MME (perception + cognition) for LLaVA-v1.5 + SemHiTok, as LLaVA's scripts/v1_5/eval/mme.sh:
# one process, greedy decoding (--temperature 0), vicuna_v1 template, then LLaVA's
# convert_answer_to_mme.py and MME's official eval_tool/calculation.py for the scores.
# The answering step is semhitok-llava-vqa instead of llava.eval.model_vqa_loader.
#
# Data under $EVAL/MME, laid out as LLaVA's docs/Evaluation.md says: llava_mme.jsonl and
# convert_answer_to_mme.py (both from LLaVA's eval.zip), MME_Benchmark_release_version/ (the
# MME images and question/answer files) and eval_tool/ (MME's official tool, calculation.py).
# convert_answer_to_mme.py is not in the llava-torch wheel: when $EVAL/MME lacks it, it is taken
# from $LLAVA_REPO/playground/data/eval/MME/ (a LLaVA checkout with eval.zip extracted in it).
#   CUDA_VISIBLE_DEVICES=0 bash integrations/llava/scripts/eval/mme.sh [semhitok-llava-vqa flags]
# Environment: CKPT, NAME, EVAL, PYTHON, LLAVA_REPO (see _common.sh).
# Answers: $EVAL/MME/answers/$NAME.jsonl; scores: $EVAL/MME/eval_tool/answers/$NAME/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=_common.sh
source "$HERE/_common.sh"

MME=$EVAL/MME
QUESTIONS=$MME/llava_mme.jsonl
IMAGES=$MME/MME_Benchmark_release_version
ANSWERS=$MME/answers/$NAME.jsonl
require_file "$QUESTIONS" "extract LLaVA's eval.zip into $EVAL"
require_dir "$IMAGES" "MME's data, from the MME benchmark's official release"
require_file "$MME/eval_tool/calculation.py" "MME's official eval_tool"

# Find the converter before the (long) answering step, so that a missing file fails early.
if [[ -f $MME/convert_answer_to_mme.py ]]; then
    CONVERT="$(cd "$MME" && pwd)/convert_answer_to_mme.py"
else
    [[ -n ${LLAVA_REPO:-} ]] ||
        die "$MME/convert_answer_to_mme.py not found and LLAVA_REPO is not set: extract LLaVA's eval.zip into $EVAL, or point LLAVA_REPO at a LLaVA checkout that holds playground/data/eval/MME/convert_answer_to_mme.py"
    CONVERT=$(llava_repo_file playground/data/eval/MME/convert_answer_to_mme.py)
fi

answer "$QUESTIONS" "$IMAGES" "$ANSWERS" "$@"

# Both tools read and write paths relative to the folder they run in, as upstream runs them.
(cd "$MME" && "$PYTHON" "$CONVERT" --experiment "$NAME")
(cd "$MME/eval_tool" && "$PYTHON" calculation.py --results_dir "answers/$NAME")
