# shellcheck shell=bash
# Shared setup for the SemHiTok LLaVA-v1.5 eval scripts in this folder; sourced, not run.
#
# Environment (default in brackets):
#   CKPT        fine-tuned model: a folder (or hub id) whose name contains "llava"
#               [./checkpoints/llava-v1.5-7b-semhitok]
#   NAME        tag for answer/result files [the model name LLaVA derives from CKPT]
#   EVAL        LLaVA's eval data root (eval.zip extracted, plus each benchmark's data)
#               [./playground/data/eval]
#   PYTHON      interpreter for the scoring steps and the module fallback [python]
#   LLAVA_REPO  checkout of haotian-liu/LLaVA, for the scripts that only live in its repo
#               (seed.sh and gqa.sh need it; the llava-torch wheel ships only llava/)
# Extra command-line arguments of an eval script are passed on to semhitok-llava-vqa
# (e.g. --device cpu, --max_new_tokens 128).

SCRIPT_NAME=$(basename "$0")
die() {
    echo "$SCRIPT_NAME: error: $*" >&2
    exit 1
}

CKPT=${CKPT:-./checkpoints/llava-v1.5-7b-semhitok}
EVAL=${EVAL:-./playground/data/eval}
PYTHON=${PYTHON:-python}

# The model name as llava.mm_utils.get_model_name_from_path computes it: the last path component,
# or "<parent>_checkpoint-N" for an intermediate checkpoint.
llava_model_name() {
    local path=$1 last parent
    while [[ $path == */ ]]; do path=${path%/}; done
    last=${path##*/}
    if [[ $last == checkpoint-* && $path == */* ]]; then
        parent=${path%/*}
        parent=${parent##*/}
        echo "${parent}_${last}"
    else
        echo "$last"
    fi
}

MODEL_NAME=$(llava_model_name "$CKPT")
[[ ${MODEL_NAME,,} == *llava* ]] ||
    die "CKPT's model name '$MODEL_NAME' must contain 'llava': LLaVA's load_pretrained_model builds the vision tower only then (rename the folder, e.g. llava-v1.5-7b-semhitok)"
NAME=${NAME:-$MODEL_NAME}

# The question-answering entry point: the console script, or the module when the script is not on
# PATH (e.g. a venv that is not activated but whose python is given as PYTHON).
if command -v semhitok-llava-vqa >/dev/null; then
    VQA=(semhitok-llava-vqa)
else
    VQA=("$PYTHON" -m semhitok_llava.vqa)
fi

require_file() { # PATH [HINT]
    [[ -f $1 ]] || die "$1 not found${2:+ ($2)}"
}

require_dir() { # PATH [HINT]
    [[ -d $1 ]] || die "$1 not found${2:+ ($2)}"
}

# Prints the absolute path of FILE inside the LLaVA repo checkout given by LLAVA_REPO, or fails.
llava_repo_file() { # FILE
    [[ -n ${LLAVA_REPO:-} ]] ||
        die "LLAVA_REPO is not set: point it at a checkout of https://github.com/haotian-liu/LLaVA (its $1 is needed; the llava-torch wheel does not ship it)"
    [[ -f $LLAVA_REPO/$1 ]] ||
        die "$LLAVA_REPO/$1 not found: LLAVA_REPO must be a checkout of haotian-liu/LLaVA"
    echo "$(cd "$LLAVA_REPO" && pwd)/$1"
}

# answer QUESTION_FILE IMAGE_FOLDER ANSWERS_FILE [VQA FLAGS...]: greedy answers with the
# vicuna_v1 template, as every LLaVA-v1.5 eval script asks for them.
answer() {
    local question_file=$1 image_folder=$2 answers_file=$3
    shift 3
    "${VQA[@]}" \
        --model-path "$CKPT" \
        --question-file "$question_file" \
        --image-folder "$image_folder" \
        --answers-file "$answers_file" \
        --temperature 0 \
        --conv-mode vicuna_v1 \
        "$@"
}

# run_chunked ANSWER_DIR QUESTION_FILE IMAGE_FOLDER [VQA FLAGS...]
# Like LLaVA's multi-GPU eval scripts: one process per GPU in CUDA_VISIBLE_DEVICES (default: GPU
# 0), each answering its chunk into ANSWER_DIR/<chunks>_<idx>.jsonl; the chunks are then
# concatenated, in order, into ANSWER_DIR/merge.jsonl. Fails if any process fails.
CHUNK_PIDS=()
run_chunked() {
    local answer_dir=$1 question_file=$2 image_folder=$3
    shift 3
    local gpus chunks idx pid failed=0
    IFS=',' read -ra gpus <<<"${CUDA_VISIBLE_DEVICES:-0}"
    ((${#gpus[@]} > 0)) || gpus=(0)
    chunks=${#gpus[@]}
    trap 'kill "${CHUNK_PIDS[@]}" 2>/dev/null; exit 130' INT
    trap 'kill "${CHUNK_PIDS[@]}" 2>/dev/null; exit 143' TERM
    for ((idx = 0; idx < chunks; idx++)); do
        CUDA_VISIBLE_DEVICES=${gpus[idx]} answer "$question_file" "$image_folder" \
            "$answer_dir/${chunks}_${idx}.jsonl" --num-chunks "$chunks" --chunk-idx "$idx" "$@" &
        CHUNK_PIDS+=("$!")
    done
    for pid in "${CHUNK_PIDS[@]}"; do
        wait "$pid" || failed=1
    done
    trap - INT TERM
    ((failed == 0)) || die "answering failed in at least one of the $chunks chunk(s); see the log above"

    local merged=$answer_dir/merge.jsonl
    : >"$merged"
    for ((idx = 0; idx < chunks; idx++)); do
        cat "$answer_dir/${chunks}_${idx}.jsonl" >>"$merged"
    done
}
