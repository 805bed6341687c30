#!/usr/bin/env bash
# The architecture table (issue 25; docs/open-sets.md §9): each row trained from scratch on open sets for $MINUTES of
# one core, two rows side by side, on the same seed stream; then each scored on open:simple and open:heldout.
#   bash scripts/arch_cpu.sh all                   # every round below in turn, each pair scored after it (resumable)
#   bash scripts/arch_cpu.sh pair ROW ROW          # two rows side by side, resumable (the same command again)
#   bash scripts/arch_cpu.sh run ROW               # one row alone
#   bash scripts/arch_cpu.sh eval [ROW...]         # score rows (default: every row with a pipeline)
#   bash scripts/arch_cpu.sh table                 # the markdown table (bench/arch_table.py)
#   bash scripts/arch_cpu.sh command ROW           # print the row's training command
# MINUTES count training steps only (not validation or checkpoints), over all resumes, so that a row interrupted
# by the end of a session resumes to the same budget. The baseline is today's shipped recipe: the colour
# autoencoder, v-prediction, ISA in attn2 with 64 pooled context tokens, lr 5e-4 after 50 warm-up steps and then
# near constant (a cosine over 100k steps, so that a run stopped by the clock is not favoured by its decay), EMA
# 0.999, 8 sets of 2-6 images a step. Every other row changes one thing.
# The rows scored so far drew their sets before the batched draws (commit ae963d4; every set's content changed
# after it). A row meant to compare with them runs from a worktree at that commit, with R, SPRITES and PY here:
#   git worktree add ../wt-table ae963d4 && cd ../wt-table && R=$OLDPWD/runs/arch SPRITES=$OLDPWD/data/sprites.npz \
#       PY=$OLDPWD/.venv/bin/python bash scripts/arch_cpu.sh run curriculum
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
PY=${PY:-.venv/bin/python}
R=${R:-runs/arch}
MINUTES=${MINUTES:-45}
CURRICULUM_MINUTES=${CURRICULUM_MINUTES:-15}  # curriculum: the first minutes on open:simple-train, then open:train
SPRITES=${SPRITES:-data/sprites.npz}
DINO_ENCODER=${DINO_ENCODER:-checkpoints/m2m-dino-tiny/image_encoder}  # the shipped tiny DINOv2 (frozen)
VAE_CHANNELS=${VAE_CHANNELS:-$R/vae-channels}  # channels: the autoencoder with per-channel latent stats (made once)
declare -A FLAGS=(
    [base]=""
    [tokens256]="--context-tokens 256"
    [reference]="--reference-images 2"
    [half]="--unet-width 0.5"
    [lr1e-3]="--lr 1e-3"
    [lr2e-3]="--lr 2e-3"
    [curriculum]=""  # the data changes, not the model: see run()
    [dino]="--variant dino --image-encoder $DINO_ENCODER"
    [dino-fine]="--variant dino --image-encoder $DINO_ENCODER --image-encoder-size 256"
    [channels]="--vae $VAE_CHANNELS"  # every latent channel at mean 0, std 1 (docs/tasks.md; made by run())
)

train_row() {  # NAME MINUTES DATA: one row, resumable; MINUTES of training over all its resumes (--budget-minutes)
    # shellcheck disable=SC2046  # the command is words
    OMP_NUM_THREADS=1 $(row_command "$@") >> "$R/$1.log" 2>&1
}

row_command() {  # NAME MINUTES DATA: the row's training command; its flags come last, so that they win
    local name=$1 minutes=$2 data=$3
    echo "$PY -m train.training.m2m --variant self --context-tokens 64 --data $data --val-data open:heldout" \
        "--sprites $SPRITES --vae checkpoints/vae-tiny-open --steps 100000 --lr 5e-4 --warmup 50 --ema-decay 0.999" \
        "--batch-sets 8 --min-k 2 --max-k 6 --mixed-precision no --log-every 10 --val-every 50" \
        "--checkpoint-every 50 --sample-every 100000 --budget-minutes $minutes --export-fp16 --out $R/$name" \
        "${FLAGS[$name]}"
}

run() {  # NAME
    local name=$1
    [[ -v FLAGS[$name] ]] || { echo "unknown row $name: one of ${!FLAGS[*]}" >&2; exit 2; }
    mkdir -p "$R"
    [ -f "$SPRITES" ] || $PY -m train.data.sprites --out "$SPRITES"
    if [ "$name" = channels ] && [ ! -f "$VAE_CHANNELS/config.json" ]; then
        OMP_NUM_THREADS=1 $PY -m train.training.latent_stats --vae checkpoints/vae-tiny-open --data open:train \
            --sets 256 --out "$VAE_CHANNELS"  # open:train's drawings from data/sprites.npz
    fi
    if [ "$name" = curriculum ]; then  # a budget spent is a no-op on resume: both phases rerun safely
        train_row "$name" "$CURRICULUM_MINUTES" open:simple-train
    fi
    train_row "$name" "$MINUTES" open:train
}

pair() {  # one or two rows, side by side
    local name
    for name in "$@"; do run "$name" & done
    wait_all || { echo "a row of $* failed: see $R/<row>.log" >&2; exit 1; }
}

score() {  # ROW: skipped when scored already (delete its JSONs to score again)
    [ ! -f "$R/eval-$1-simple.json" ] || [ ! -f "$R/eval-$1-heldout.json" ] || return 0
    score_both "$R/$1/pipeline" "$R/eval-$1"
}

evaluate() {  # [ROW...]
    local name names=("$@")
    [ ${#names[@]} -gt 0 ] || names=("${!FLAGS[@]}")
    for name in "${names[@]}"; do
        [ -f "$R/$name/pipeline/model_index.json" ] || continue
        score "$name"
    done
}

ROUNDS=("base reference" "half tokens256" "lr1e-3 lr2e-3" "curriculum dino" "dino-fine" "base channels")

all() {  # each round's rows side by side, then both scored side by side
    local round
    for round in "${ROUNDS[@]}"; do
        # shellcheck disable=SC2086  # a round is its rows
        pair $round
        for name in $round; do evaluate "$name" & done
        wait_all || { echo "an evaluation of $round failed" >&2; exit 1; }
    done
}

case "${1:-}" in
    all) all ;;
    command) [[ -v FLAGS[${2:-}] ]] || { echo "unknown row ${2:-}: one of ${!FLAGS[*]}" >&2; exit 2; }
             row_command "$2" "$MINUTES" open:train ;;  # what `run ROW` runs (the curriculum: its second phase)
    pair) pair "${@:2}" ;;
    run) run "${2:?usage: $0 run ROW}" ;;
    eval) evaluate "${@:2}" ;;
    table) $PY bench/arch_table.py --runs "$R" ;;
    *) echo "usage: $0 all|pair ROW [ROW]|run ROW|eval [ROW...]|table|command ROW" >&2; exit 2 ;;
esac
