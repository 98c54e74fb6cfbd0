#!/usr/bin/env bash
# LLaVA-v1.5 + SemHiTok, stage 1 of 2: feature-alignment pre-training.
#
# Reproduces the LLaVA-v1.5 setting of the SemHiTok paper (Tab. 4: LLaVA-v1.5 recipe, Vicuna-7B):
# only the projector is trained (--tune_mm_mlp_adapter), on LLaVA-Pretrain's
# blip_laion_cc_sbu_558k with the "plain" template, lr 1e-3, 1 epoch, global batch 256
# (32 per GPU x 8 GPUs), ZeRO-2. Every hyper-parameter is the one of LLaVA's
# scripts/v1_5/pretrain.sh; what differs is the vision tower (SemHiTok), the projector
# (Dual-MLP) and the launcher (semhitok_llava.train instead of llava/train/train_mem.py).
# The output folder holds mm_projector.bin, which finetune.sh starts from.
#
# Run from the folder that holds LLaVA's playground/ layout (or set DATA):
#   bash integrations/llava/scripts/pretrain.sh [extra training flags, which override ours]
#
# Environment (default in brackets), besides those of _train_common.sh:
#   OUTPUT_DIR      [./checkpoints/llava-v1.5-7b-semhitok-pretrain]
#   BATCH_PER_GPU   per-device batch [32]; keep BATCH_PER_GPU x GRAD_ACCUM x GPUs = 256
set -euo pipefail
# shellcheck source=_train_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_train_common.sh"

OUTPUT_DIR=${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-semhitok-pretrain}
BATCH_PER_GPU=${BATCH_PER_GPU:-32}
DATA_PATH=$DATA/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json
IMAGE_FOLDER=$DATA/LLaVA-Pretrain/images
[[ -f $DATA_PATH ]] || die "$DATA_PATH not found (set DATA to the folder holding LLaVA-Pretrain/)"
[[ -d $IMAGE_FOLDER ]] || die "$IMAGE_FOLDER not found (set DATA to the folder holding LLaVA-Pretrain/)"

launch zero2.json \
    --version plain \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --tune_mm_mlp_adapter True \
    --output_dir "$OUTPUT_DIR" \
    --per_device_train_batch_size "$BATCH_PER_GPU" \
    --save_steps 24000 \
    --learning_rate 1e-3 \
    "$@"
