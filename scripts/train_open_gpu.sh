#!/usr/bin/env bash
# The embedded tiny checkpoints on open-ended sets (train/data/open_sets.py), on one GPU, from scratch:
#   prep   the autoencoder, the set embedder (metrics) and the tiny DINOv2, side by side;
#   base   M2M-Self, M2M-Self with 16 context tokens (the A/B of the recipe) and M2M-DINO, side by side;
#   tasks  the four task adapters (LoRA) over the new bases, side by side;
#   install  $R/* -> checkpoints/ (base folders, adapters rebased, set embedder).
# Every set is rendered on the GPU itself (no data loader, no CPU in the loop).
#   bash scripts/train_open_gpu.sh            # prep, base, tasks; $R holds everything
#   DEVICE=cpu PREP_MIN=0.3 BASE_MIN=0.5 TASK_MIN=0.3 BATCH=4 R=/tmp/dry bash scripts/train_open_gpu.sh  # a CPU dry run
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
PY=${PY:-.venv/bin/python}
R=${R:-runs/open}
DEVICE=${DEVICE:-cuda}
PREP_MIN=${PREP_MIN:-2}    # each prep run; all three share the GPU
BASE_MIN=${BASE_MIN:-4.5}  # each base run; all three share the GPU
TASK_MIN=${TASK_MIN:-1}    # each adapter; all four share the GPU
BATCH=${BATCH:-64}         # sets per step of the base runs
NVS_OBJECTS=${NVS_OBJECTS:-600}
PRECISION=${PRECISION:-bf16}
SPRITES=${SPRITES:-data/sprites.npz}  # python -m train.data.sprites (needs Debian's openclipart-png, fonts-noto-color-emoji)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}


prep() {
    mkdir -p "$R"
    $PY -m train.training.autoencoder --data open:train --eval-data open:heldout,open:hard --device "$DEVICE" \
        --steps 3000 --warm-steps 800 --batch-sets $((BATCH / 2)) --lr 2e-3 --save-every 500 --eval-sets 16 \
        --minutes "$PREP_MIN" --out "$R/vae-open" > "$R/vae-open.log" 2>&1 &
    $PY -m train.training.set_embedder --device "$DEVICE" --steps 3000 --batch-sets $((BATCH * 2)) --eval-every 500 \
        --minutes "$PREP_MIN" --out "$R/set-embedder" > "$R/set-embedder.log" 2>&1 &
    $PY -m train.training.encoder --data open:train --device "$DEVICE" --steps 2000 --batch-sets $((BATCH / 2)) \
        --save-every 500 --eval-sets 32 --minutes "$PREP_MIN" --out "$R/dino-open" > "$R/dino-open.log" 2>&1 &
    wait_all
}

base() {
    local args=(--data open:train --val-data open:heldout --sprites "$SPRITES" --vae "$R/vae-open" --steps 3000
                --lr 5e-4 --warmup 150 --ema-decay 0.999 --batch-sets "$BATCH" --min-k 2 --max-k 6
                --mixed-precision "$PRECISION" --log-every 50 --val-every 250 --checkpoint-every 1000
                --sample-every 100000 --max-minutes "$BASE_MIN" --export-fp16)
    $PY -m train.data.nvs --out "$R/nvs" --split train --objects "$NVS_OBJECTS" --workers 3 > "$R/nvs.log" 2>&1 &
    $PY -m train.training.m2m --variant self --context-tokens 64 --out "$R/m2m-self-tiny" "${args[@]}" \
        > "$R/m2m-self-tiny.log" 2>&1 &
    $PY -m train.training.m2m --variant self --context-tokens 16 --out "$R/m2m-self16-tiny" "${args[@]}" \
        > "$R/m2m-self16-tiny.log" 2>&1 &
    $PY -m train.training.m2m --variant dino --image-encoder "$R/dino-open" --out "$R/m2m-dino-tiny" "${args[@]}" \
        > "$R/m2m-dino-tiny.log" 2>&1 &
    wait_all
}

tasks() {
    local args=(--lora-rank 16 --steps 1200 --lr 1e-3 --warmup 50 --ema-decay 0.995 --batch-sets "$BATCH"
                --min-k 2 --max-k 5 --workers 3 --mixed-precision "$PRECISION" --log-every 25 --val-every 100
                --checkpoint-every 400 --sample-every 100000 --max-minutes "$TASK_MIN")
    for v in self dino; do
        $PY -m train.training.m2m --variant "$v" --init "$R/m2m-$v-tiny/pipeline" --task nvs --data "$R/nvs" \
            --val-data nvs:heldout --out "$R/m2m-$v-tiny-nvs" "${args[@]}" > "$R/m2m-$v-tiny-nvs.log" 2>&1 &
        $PY -m train.training.m2m --variant "$v" --init "$R/m2m-$v-tiny/pipeline" --task procedure \
            --data procedure:train --val-data procedure:heldout --out "$R/m2m-$v-tiny-procedure" "${args[@]}" \
            > "$R/m2m-$v-tiny-procedure.log" 2>&1 &
    done
    wait_all
}

install() {
    install_models
    rm -rf checkpoints/set-embedder && cp -r "$R/set-embedder" checkpoints/set-embedder
    du -sh checkpoints/*
}

case "${1:-all}" in
    prep) prep ;;
    base) base ;;
    tasks) tasks ;;
    install) install ;;
    all) prep && base && tasks ;;
    *) echo "usage: $0 [all|prep|base|tasks|install]" >&2; exit 2 ;;
esac
