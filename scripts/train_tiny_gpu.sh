#!/usr/bin/env bash
# The embedded tiny checkpoints on one GPU: both M2M runs side by side on it (the same code as
# scripts/train_tiny.sh, with 4x the batch and 3x the steps), then the four task adapters (LoRA)
# fine-tuned from them, while the CPU renders the novel-view shards they need.
#   bash scripts/train_tiny_gpu.sh           # base, then tasks; runs/gpu holds everything
#   bash scripts/train_tiny_gpu.sh base      # only the two base models (and the novel-view shards)
#   bash scripts/train_tiny_gpu.sh tasks     # only the four adapters, from runs/gpu/m2m-*-tiny
#   bash scripts/train_tiny_gpu.sh install   # runs/gpu/* -> checkpoints/ (base folders and adapters)
#   INIT=checkpoints bash scripts/train_tiny_gpu.sh   # go on from the shipped base models (new data seed)
# The autoencoder (runs/vae-tiny-decoder) and the DINO encoder come first: train_tiny.sh makes them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
PY=${PY:-.venv/bin/python}
R=${R:-runs/gpu}
MINUTES=${MINUTES:-5}            # each base run; both share the GPU
TASK_MINUTES=${TASK_MINUTES:-2}  # each adapter; all four share the GPU
WORKERS=${WORKERS:-5}            # data workers per base run (MIS-synth is drawn on the CPU, ~270 images/s/core)
TASK_WORKERS=${TASK_WORKERS:-3}
NVS_OBJECTS=${NVS_OBJECTS:-1200}
NVS_WORKERS=${NVS_WORKERS:-3}
ENCODER=${ENCODER:-runs/dino-tiny}
INIT=${INIT:-}                   # a folder of m2m-{self,dino}-tiny pipelines to go on from (else from scratch)
VAE=${VAE:-runs/vae-tiny-decoder}  # scripts/train_tiny.sh makes it (or runs/vae-tiny: the same latents)
export OMP_NUM_THREADS=1

install() {
    install_models
    du -sh checkpoints/*
}


base() {
    mkdir -p "$R"
    local args=(--vae "$VAE" --steps 3500 --lr 5e-4 --warmup 200 --ema-decay 0.999 --batch-sets 32
                --min-k 2 --max-k 6 --workers "$WORKERS" --log-every 50 --val-every 250 --checkpoint-every 1000 --sample-every 1000
                --max-minutes "$MINUTES" --export-fp16)
    $PY -m train.data.nvs --out "$R/nvs" --split train --objects "$NVS_OBJECTS" --workers "$NVS_WORKERS" \
        > "$R/nvs.log" 2>&1 &
    for v in self dino; do
        local start=()  # from scratch, or on from $INIT (its own frozen encoder; fresh optimizer; new sets: seed 1)
        if [ -n "$INIT" ]; then start=(--init "$INIT/m2m-$v-tiny" --seed 1)
        elif [ "$v" = dino ]; then start=(--image-encoder "$ENCODER"); fi
        $PY -m train.training.m2m --variant "$v" --out "$R/m2m-$v-tiny" "${args[@]}" "${start[@]}" \
            > "$R/m2m-$v-tiny.log" 2>&1 &
    done
    wait_all
}

tasks() {
    local args=(--lora-rank 16 --steps 1200 --lr 1e-3 --warmup 50 --ema-decay 0.995 --batch-sets 32
                --min-k 2 --max-k 5 --workers "$TASK_WORKERS" --log-every 25 --val-every 100 --checkpoint-every 400 --sample-every 400
                --max-minutes "$TASK_MINUTES")
    for v in self dino; do
        $PY -m train.training.m2m --variant "$v" --init "$R/m2m-$v-tiny/pipeline" --task nvs --data "$R/nvs" \
            --val-data nvs:heldout --out "$R/m2m-$v-tiny-nvs" "${args[@]}" > "$R/m2m-$v-tiny-nvs.log" 2>&1 &
        $PY -m train.training.m2m --variant "$v" --init "$R/m2m-$v-tiny/pipeline" --task procedure \
            --data procedure:train --val-data procedure:heldout --out "$R/m2m-$v-tiny-procedure" "${args[@]}" \
            > "$R/m2m-$v-tiny-procedure.log" 2>&1 &
    done
    wait_all
}

case "${1:-all}" in
    base) base ;;
    tasks) tasks ;;
    install) install ;;
    all) base && tasks ;;
    *) echo "usage: $0 [all|base|tasks|install]" >&2; exit 2 ;;
esac
