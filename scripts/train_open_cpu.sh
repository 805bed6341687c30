#!/usr/bin/env bash
# The tiny checkpoints on open-ended sets (train/data/open_sets.py), on this CPU, in stages that resume:
#   vae    ColourAutoencoderKL (m2m/autoencoder.py) on open sets, once;
#   base   M2M-Self (64 context tokens) and M2M-DINO side by side, one core each, for $MINUTES; run it
#          again, in this session or the next, and both go on from their last checkpoint (same batches,
#          same curve) until --steps;
#   eval   the label-free set metrics of both (train/evaluation/evaluate.py) at c = 4 on open:heldout.
# Nothing is installed into checkpoints/: a model is shipped only when it scores better (docs/open-sets.md).
#   bash scripts/train_open_cpu.sh vae && bash scripts/train_open_cpu.sh base && bash scripts/train_open_cpu.sh eval
# The drawings' atlas comes from Debian packages (python -m train.data.sprites --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
R=${R:-runs/open-cpu}
MINUTES=${MINUTES:-60}     # wall-clock budget of each base run per call
VAE_MINUTES=${VAE_MINUTES:-55}
STEPS=${STEPS:-20000}      # the cosine schedule's length: many calls' worth on a CPU
DINO=${DINO:-checkpoints/m2m-dino-tiny/image_encoder}  # the shipped tiny DINOv2 (MIS-synth); or one pretrained on
                                                       # open sets: python -m train.training.encoder --data open:train
SPRITES=${SPRITES:-data/sprites.npz}

vae() {
    mkdir -p "$R"
    [ -f "$SPRITES" ] || $PY -m train.data.sprites --out "$SPRITES"
    OMP_NUM_THREADS=2 $PY -m train.training.autoencoder --data open:train --eval-data open:heldout \
        --steps 2000 --warm-steps 1800 --batch-sets 8 --minutes "$VAE_MINUTES" --save-every 200 \
        --out "$R/vae-colour" > "$R/vae-colour.log" 2>&1
}

base() {
    [ -d "$DINO" ] || OMP_NUM_THREADS=2 $PY -m train.training.encoder --data open:train --out "$DINO"
    local args=(--data open:train --val-data open:heldout --sprites "$SPRITES" --vae "$R/vae-colour" --steps "$STEPS"
                --lr 5e-4 --warmup 200 --ema-decay 0.999 --batch-sets 8 --min-k 2 --max-k 6 --mixed-precision no
                --log-every 10 --val-every 100 --checkpoint-every 100 --sample-every 100000
                --max-minutes "$MINUTES" --export-fp16)
    OMP_NUM_THREADS=1 $PY -m train.training.m2m --variant self --context-tokens 64 --out "$R/m2m-self-tiny" \
        "${args[@]}" >> "$R/m2m-self-tiny.log" 2>&1 &
    OMP_NUM_THREADS=1 $PY -m train.training.m2m --variant dino --image-encoder "$DINO" --out "$R/m2m-dino-tiny" \
        "${args[@]}" >> "$R/m2m-dino-tiny.log" 2>&1 &
    wait
}

evaluate() {
    for v in self dino; do
        OMP_NUM_THREADS=2 $PY -m train.evaluation.evaluate --checkpoint "$R/m2m-$v-tiny/pipeline" --data open:heldout \
            --contexts 4 --sets 32 --generate 2 --steps 15 --out "$R/eval-$v.json" > "$R/eval-$v.log" 2>&1
    done
}

case "${1:-}" in
    vae) vae ;;
    base) base ;;
    eval) evaluate ;;
    *) echo "usage: $0 vae|base|eval" >&2; exit 2 ;;
esac
