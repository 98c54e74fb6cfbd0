#!/usr/bin/env bash
# LLaVA-v1.5 + SemHiTok, stage 1 of 2: feature-alignment pre-training.
#
# Reproduces the LLaVA-v1.5 setting of the SemHiTok paper (Tab. 4: LLaVA-v1.5 recipe, Vicuna-7B):
# only the projector is trained (--tune_mm_mlp_adapter), on LLaVA-Pretrain's
# blip_laion_cc_sbu_558k with the "plain" template, lr 1e-3, 1 epoch, global batch 256
# (32 per GPU x 8 GPUs). Every hyper-parameter is the one of LLaVA's scripts/v1_5/pretrain.sh;
# what differs is the vision tower (SemHiTok), the projector (Dual-MLP), the 7B LLM, and the
# launcher (our `semhitok_llava.train` module instead of llava/train/train_mem.py).
# The output folder holds mm_projector.bin, which finetune.sh starts from.
#
# Run from the folder that holds LLaVA's playground/ layout (or set DATA):
#   bash integrations/llava/scripts/pretrain.sh [extra training flags, which override ours]
#
# Environment (default in brackets):
#   LLM             base language model [lmsys/vicuna-7b-v1.5]
#   SEMHITOK        tokenizer: preset, save_pretrained folder or hub id [siglip-l16-256]
#   PROJECTOR       dual_mlp2x_gelu (paper's Dual-MLP), mlp2x_gelu or linear [dual_mlp2x_gelu]
#   SELECT_FEATURE  patch | semantic (Tab. 7 row 1) | code; use the same in finetune.sh [patch]
#   DATA            LLaVA playground data root [./playground/data]
#   OUTPUT_DIR      [./checkpoints/llava-v1.5-7b-semhitok-pretrain]
#   BATCH_PER_GPU   per-device batch [32]; keep BATCH_PER_GPU x GRAD_ACCUM x GPUs = 256
#   GRAD_ACCUM      gradient accumulation steps [1]
#   ATTN            --attn_implementation: auto | flash_attention_2 | sdpa | eager [auto]
#   REPORT_TO       wandb | tensorboard | none ... [wandb]
#   DS_ARGS         extra arguments for the deepspeed launcher, e.g. "--include localhost:0,1,2,3"
#                   (by default it uses every local GPU, or those in CUDA_VISIBLE_DEVICES)
# --mm_vision_select_layer -2 is kept from upstream for parity; the SemHiTok tower ignores it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "pretrain.sh: error: $*" >&2; exit 1; }

LLM=${LLM:-lmsys/vicuna-7b-v1.5}
SEMHITOK=${SEMHITOK:-siglip-l16-256}
PROJECTOR=${PROJECTOR:-dual_mlp2x_gelu}
SELECT_FEATURE=${SELECT_FEATURE:-patch}
DATA=${DATA:-./playground/data}
OUTPUT_DIR=${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-semhitok-pretrain}
BATCH_PER_GPU=${BATCH_PER_GPU:-32}
GRAD_ACCUM=${GRAD_ACCUM:-1}
ATTN=${ATTN:-auto}
REPORT_TO=${REPORT_TO:-wandb}
read -ra DS_LAUNCH <<< "${DS_ARGS:-}"

DATA_PATH=$DATA/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json
IMAGE_FOLDER=$DATA/LLaVA-Pretrain/images
[[ -f $DATA_PATH ]] || die "$DATA_PATH not found (set DATA to the folder holding LLaVA-Pretrain/)"
[[ -d $IMAGE_FOLDER ]] || die "$IMAGE_FOLDER not found (set DATA to the folder holding LLaVA-Pretrain/)"
command -v deepspeed >/dev/null || die "deepspeed is not on PATH (pip install deepspeed)"

deepspeed "${DS_LAUNCH[@]}" --module semhitok_llava.train \
    --deepspeed "$HERE/zero2.json" \
    --attn_implementation "$ATTN" \
    --model_name_or_path "$LLM" \
    --version plain \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "semhitok:$SEMHITOK" \
    --mm_projector_type "$PROJECTOR" \
    --mm_vision_select_feature "$SELECT_FEATURE" \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --bf16 True \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$BATCH_PER_GPU" \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --evaluation_strategy no \
    --save_strategy steps \
    --save_steps 24000 \
    --save_total_limit 1 \
    --learning_rate 1e-3 \
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
