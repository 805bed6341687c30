#!/usr/bin/env bash
# Train a shipped model on, on one core, with the design the architecture table chose (scripts/design.sh), in
# chunks: each chunk trains $CHUNK_MINUTES (resumable: the same command again goes on from the last checkpoint),
# then scores the export on open:simple and open:heldout and adds a row to the ledger (docs/ledger.csv).
#   bash scripts/train_on_cpu.sh run self|dino      # chunk after chunk until stopped (nohup ... &)
#   bash scripts/train_on_cpu.sh chunk self|dino    # one chunk and its ledger row
#   bash scripts/train_on_cpu.sh install self|dino  # the last export into checkpoints/, by hand once it scores better
#   bash scripts/train_on_cpu.sh flags self|dino    # the training command's flags, without running it
# The rate stays flat (--steps far off); to end on a cool-down, one chunk with STEPS near the last checkpoint's step
# and COOLDOWN=N: flat, then linear to zero over the last N steps (--cooldown-steps), e.g.
#   STEPS=1300 COOLDOWN=200 bash scripts/train_on_cpu.sh chunk self
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
source scripts/design.sh
PY=${PY:-.venv/bin/python}
R=${R:-runs/train-on}
CHUNK_MINUTES=${CHUNK_MINUTES:-100}
SPRITES=${SPRITES:-data/sprites.npz}
SEED=${SEED:-5}  # the shipped runs drew their sets with seeds 0-3
STEPS=${STEPS:-1000000}
COOLDOWN=${COOLDOWN:-0}

design() { [ "$1" = self ] && echo "$SELF_DESIGN" || echo "$DINO_DESIGN"; }
tag() { [ "$1" = self ] && echo "$SELF_TAG" || echo "$DINO_TAG"; }

train_flags() {  # VARIANT: the design's flags come last: where it sets one of these, it wins
    echo "--variant $1 --init checkpoints/m2m-$1-tiny --data open:train --val-data open:heldout --sprites $SPRITES" \
        "--seed $SEED --steps $STEPS --cooldown-steps $COOLDOWN --lr 2e-4 --warmup 30 --ema-decay 0.999" \
        "--batch-sets 8 --min-k 2 --max-k 6 --mixed-precision no --log-every 10 --val-every 50 --checkpoint-every 50" \
        "--sample-every 1000000 --max-minutes $CHUNK_MINUTES --export-fp16 --out $R/m2m-$1-tiny $(design "$1")"
}

train_chunk() {  # VARIANT
    mkdir -p "$R"
    [ -f "$SPRITES" ] || $PY -m train.data.sprites --out "$SPRITES"
    # shellcheck disable=SC2046  # flags
    OMP_NUM_THREADS=1 $PY -m train.training.m2m $(train_flags "$1") >> "$R/m2m-$1-tiny.log" 2>&1
}

score() {  # VARIANT: the export on both sources, then its ledger row
    local v=$1 out="$R/m2m-$1-tiny"
    score_both "$out/pipeline" "$out/eval"
    $PY -m train.evaluation.ledger add --model "$(tag "$v")" \
        --checkpoint "$out/pipeline" --evals "$out/eval-simple.json" "$out/eval-heldout.json" --log "$out/log.csv"
}

case "${1:-}:${2:-}" in
    run:self | run:dino) while true; do train_chunk "$2"; score "$2"; done ;;
    chunk:self | chunk:dino) train_chunk "$2"; score "$2" ;;
    flags:self | flags:dino) train_flags "$2" ;;
    install:self | install:dino)
        [ -f "$R/m2m-$2-tiny/pipeline/model_index.json" ] || { echo "no export in $R/m2m-$2-tiny/pipeline" >&2; exit 1; }
        rm -rf "checkpoints/m2m-$2-tiny" && cp -r "$R/m2m-$2-tiny/pipeline" "checkpoints/m2m-$2-tiny" ;;
    *) echo "usage: $0 run|chunk|install|flags self|dino" >&2; exit 2 ;;
esac
