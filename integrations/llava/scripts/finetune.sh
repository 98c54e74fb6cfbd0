#!/usr/bin/env bash
# LLaVA-v1.5 + SemHiTok, stage 2 of 2: visual instruction tuning.
#
# Reproduces the LLaVA-v1.5 setting of the SemHiTok paper (Tab. 4: LLaVA-v1.5 recipe, Vicuna-7B):
# full fine-tuning of the LLM and projector on llava_v1_5_mix665k with the "v1" (vicuna_v1)
# template, starting from the projector of pretrain.sh; lr 2e-5, 1 epoch, global batch 128
# (16 per GPU x 8 GPUs), ZeRO-3, pad-to-square images, modality-length grouping. Every
# hyper-parameter is the one of LLaVA's scripts/v1_5/finetune.sh; what differs is the vision
# tower (SemHiTok), the projector (Dual-MLP) and the launcher (semhitok_llava.train instead of
# llava/train/train_mem.py). The finetune refuses a pretrain projector trained on another
# tokenizer.
#
# Run from the folder that holds LLaVA's playground/ layout (or set DATA):
#   bash integrations/llava/scripts/finetune.sh [extra training flags, which override ours]
#
# Environment (default in brackets), besides those of _train_common.sh:
#   PRETRAIN_DIR    output of pretrain.sh, holding mm_projector.bin
#                   [./checkpoints/llava-v1.5-7b-semhitok-pretrain]
#   OUTPUT_DIR      [./checkpoints/llava-v1.5-7b-semhitok]; its name must contain "llava", or
#                   LLaVA's load_pretrained_model will not build the vision tower at eval time
#   BATCH_PER_GPU   per-device batch [16]; keep BATCH_PER_GPU x GRAD_ACCUM x GPUs = 128
set -euo pipefail
# shellcheck source=_train_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_train_common.sh"

PRETRAIN_DIR=${PRETRAIN_DIR:-./checkpoints/llava-v1.5-7b-semhitok-pretrain}
OUTPUT_DIR=${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-semhitok}
BATCH_PER_GPU=${BATCH_PER_GPU:-16}
DATA_PATH=$DATA/llava_v1_5_mix665k.json
PROJECTOR_BIN=$PRETRAIN_DIR/mm_projector.bin
[[ -f $DATA_PATH ]] || die "$DATA_PATH not found (set DATA to the folder holding llava_v1_5_mix665k.json)"
[[ -f $PROJECTOR_BIN ]] || die "$PROJECTOR_BIN not found: run pretrain.sh first (or set PRETRAIN_DIR)"
out_name=${OUTPUT_DIR%/}
out_name=${out_name##*/}
[[ ${out_name,,} == *llava* ]] ||
    die "OUTPUT_DIR's name '$out_name' must contain 'llava' (LLaVA's load_pretrained_model builds the vision tower only then)"

launch zero3.json \
    --version v1 \
    --data_path "$DATA_PATH" \
    --image_folder "$DATA" \
    --pretrain_mm_mlp_adapter "$PROJECTOR_BIN" \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --output_dir "$OUTPUT_DIR" \
    --per_device_train_batch_size "$BATCH_PER_GPU" \
    --save_steps 50000 \
    --learning_rate 2e-5 \
    "$@"
