# shellcheck shell=bash
# Shared by pretrain.sh and finetune.sh (sourced, not run): the settings both LLaVA-v1.5 stages
# share, and `launch ZERO_JSON FLAGS...`, which runs LLaVA's train() through our launcher with
# them plus the stage's own FLAGS (then the script's extra arguments, which override ours).
#
# Environment (default in brackets):
#   LLM             base language model [lmsys/vicuna-7b-v1.5]
#   SEMHITOK        tokenizer: preset, save_pretrained folder or hub id; the same in both stages
#                   [siglip-l16-256]
#   PROJECTOR       dual_mlp2x_gelu (paper's Dual-MLP), mlp2x_gelu or linear [dual_mlp2x_gelu]
#   SELECT_FEATURE  patch | semantic (Tab. 7 row 1) | code; the same in both stages [patch]
#   DATA            LLaVA playground data root [./playground/data]
#   GRAD_ACCUM      gradient accumulation steps [1]; keep the global batch of each stage
#   ATTN            --attn_implementation: auto | flash_attention_2 | sdpa | eager [auto]
#   REPORT_TO       wandb | tensorboard | none ... [wandb]
#   DS_ARGS         extra arguments for the deepspeed launcher, e.g. "--include localhost:0,1,2,3"
#                   (by default it uses every local GPU, or those in CUDA_VISIBLE_DEVICES)
# --mm_vision_select_layer -2 is kept from upstream for parity; the SemHiTok tower ignores it.

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# the DeepSpeed ZeRO configs ship with the core package (shared with `semhitok-qwen train`)
ZERO_DIR="$(cd "$HERE/../../../semhitok_plugin/configs/deepspeed" && pwd)"
SCRIPT_NAME=$(basename "$0")
die() { echo "$SCRIPT_NAME: error: $*" >&2; exit 1; }

LLM=${LLM:-lmsys/vicuna-7b-v1.5}
SEMHITOK=${SEMHITOK:-siglip-l16-256}
PROJECTOR=${PROJECTOR:-dual_mlp2x_gelu}
SELECT_FEATURE=${SELECT_FEATURE:-patch}
DATA=${DATA:-./playground/data}
GRAD_ACCUM=${GRAD_ACCUM:-1}
ATTN=${ATTN:-auto}
REPORT_TO=${REPORT_TO:-wandb}
read -ra DS_LAUNCH <<< "${DS_ARGS:-}"
command -v deepspeed >/dev/null || die "deepspeed is not on PATH (pip install deepspeed)"

launch() {
    local zero=$1
    shift
    deepspeed "${DS_LAUNCH[@]}" --module semhitok_llava.train \
        --deepspeed "$ZERO_DIR/$zero" \
        --attn_implementation "$ATTN" \
        --model_name_or_path "$LLM" \
        --vision_tower "semhitok:$SEMHITOK" \
        --mm_projector_type "$PROJECTOR" \
        --mm_vision_select_feature "$SELECT_FEATURE" \
        --mm_vision_select_layer -2 \
        --mm_use_im_start_end False \
        --mm_use_im_patch_token False \
        --bf16 True \
        --num_train_epochs 1 \
        --per_device_eval_batch_size 4 \
        --gradient_accumulation_steps "$GRAD_ACCUM" \
        --evaluation_strategy no \
        --save_strategy steps \
        --save_total_limit 1 \
        --weight_decay 0. \
        --warmup_ratio 0.03 \
        --lr_scheduler_type cosine \
        --logging_steps 1 \
        --tf32 True \
        --model_max_length 2048 \
        --gradient_checkpointing True \
        --dataloader_num_workers 4 \
        --lazy_preprocess True \
        --report_to "$REPORT_TO" \
        "$@"
}
