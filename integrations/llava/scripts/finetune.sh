#!/usr/bin/env bash
# LLaVA-v1.5 + SemHiTok, stage 2 of 2: visual instruction tuning.
#
# Reproduces the LLaVA-v1.5 setting of the SemHiTok paper (Tab. 4: LLaVA-v1.5 recipe, Vicuna-7B):
# full fine-tuning of the LLM and projector on llava_v1_5_mix665k with the "v1" (vicuna_v1)
# template, starting from the projector of pretrain.sh; lr 2e-5, 1 epoch, global batch 128
# (16 per GPU x 8 GPUs), ZeRO-3, pad-to-square images, modality-length grouping. Every
# hyper-parameter is the one of LLaVA's scripts/v1_5/finetune.sh; what differs is the vision
# tower (SemHiTok), the projector (Dual-MLP), the 7B LLM, and the launcher (our
# `semhitok_llava.train` module instead of llava/train/train_mem.py).
#
# Run from the folder that holds LLaVA's playground/ layout (or set DATA):
#   bash integrations/llava/scripts/finetune.sh [extra training flags, which override ours]
#
# Environment (default in brackets):
#   LLM             base language model [lmsys/vicuna-7b-v1.5]
#   SEMHITOK        tokenizer: preset, save_pretrained folder or hub id; same as in pretrain.sh
#                   [siglip-l16-256]
#   PROJECTOR       same as in pretrain.sh [dual_mlp2x_gelu]
#   SELECT_FEATURE  same as in pretrain.sh: patch | semantic | code [patch]
#   DATA            LLaVA playground data root; images are looked up under it [./playground/data]
#   PRETRAIN_DIR    output of pretrain.sh, holding mm_projector.bin
#                   [./checkpoints/llava-v1.5-7b-semhitok-pretrain]
#   OUTPUT_DIR      [./checkpoints/llava-v1.5-7b-semhitok]; its name must contain "llava", or
#                   LLaVA's load_pretrained_model will not build the vision tower at eval time
#   BATCH_PER_GPU   per-device batch [16]; keep BATCH_PER_GPU x GRAD_ACCUM x GPUs = 128
#   GRAD_ACCUM      gradient accumulation steps [1]
#   ATTN            --attn_implementation: auto | flash_attention_2 | sdpa | eager [auto]
#   REPORT_TO       wandb | tensorboard | none ... [wandb]
#   DS_ARGS         extra arguments for the deepspeed launcher, e.g. "--include localhost:0,1,2,3"
#                   (by default it uses every local GPU, or those in CUDA_VISIBLE_DEVICES)
# --mm_vision_select_layer -2 is kept from upstream for parity; the SemHiTok tower ignores it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "finetune.sh: error: $*" >&2; exit 1; }

LLM=${LLM:-lmsys/vicuna-7b-v1.5}
SEMHITOK=${SEMHITOK:-siglip-l16-256}
PROJECTOR=${PROJECTOR:-dual_mlp2x_gelu}
SELECT_FEATURE=${SELECT_FEATURE:-patch}
DATA=${DATA:-./playground/data}
PRETRAIN_DIR=${PRETRAIN_DIR:-./checkpoints/llava-v1.5-7b-semhitok-pretrain}
OUTPUT_DIR=${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-semhitok}
BATCH_PER_GPU=${BATCH_PER_GPU:-16}
GRAD_ACCUM=${GRAD_ACCUM:-1}
ATTN=${ATTN:-auto}
REPORT_TO=${REPORT_TO:-wandb}
read -ra DS_LAUNCH <<< "${DS_ARGS:-}"

DATA_PATH=$DATA/llava_v1_5_mix665k.json
PROJECTOR_BIN=$PRETRAIN_DIR/mm_projector.bin
[[ -f $DATA_PATH ]] || die "$DATA_PATH not found (set DATA to the folder holding llava_v1_5_mix665k.json)"
[[ -f $PROJECTOR_BIN ]] || die "$PROJECTOR_BIN not found: run pretrain.sh first (or set PRETRAIN_DIR)"
out_name=${OUTPUT_DIR%/}
out_name=${out_name##*/}
[[ ${out_name,,} == *llava* ]] ||
    die "OUTPUT_DIR's name '$out_name' must contain 'llava' (LLaVA's load_pretrained_model builds the vision tower only then)"
command -v deepspeed >/dev/null || die "deepspeed is not on PATH (pip install deepspeed)"

deepspeed "${DS_LAUNCH[@]}" --module semhitok_llava.train \
    --deepspeed "$HERE/zero3.json" \
    --attn_implementation "$ATTN" \
    --model_name_or_path "$LLM" \
    --version v1 \
    --data_path "$DATA_PATH" \
    --image_folder "$DATA" \
    --vision_tower "semhitok:$SEMHITOK" \
    --pretrain_mm_mlp_adapter "$PROJECTOR_BIN" \
    --mm_projector_type "$PROJECTOR" \
    --mm_vision_select_feature "$SELECT_FEATURE" \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$BATCH_PER_GPU" \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --evaluation_strategy no \
    --save_strategy steps \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-5 \
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
