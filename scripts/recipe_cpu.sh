#!/usr/bin/env bash
# The recipe table (docs/open-sets.md §6): M2M-Self trained from scratch on open sets, one recipe change per run, at
# equal wall-clock on one core each, two runs side by side; then each scored on open:heldout (c = 4, 64 sets).
#   bash scripts/recipe_cpu.sh all                         # everything below, in order (about 3 x $MINUTES + 25 min)
#   bash scripts/recipe_cpu.sh round1 | round2 | round3   # the runs, two at a time ($MINUTES each)
#   bash scripts/recipe_cpu.sh eval NAME...                # score runs (default: all that have a pipeline)
#   bash scripts/recipe_cpu.sh table                       # the markdown table (bench/recipe_table.py)
# Every run: the colour autoencoder, 64 context tokens (but `tokens16`), v-prediction, lr 5e-4 after 50 warm-up steps
# and then near constant (a cosine over 100k steps), so that a run stopped by the clock is not favoured by its decay.
# The EMA row needs no run of its own: `base` exports its EMA weights (pipeline) and its raw ones (pipeline-raw).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
PY=${PY:-.venv/bin/python}
R=${R:-runs/recipe}
MINUTES=${MINUTES:-20}
SPRITES=${SPRITES:-data/sprites.npz}
declare -A FLAGS=(
    [base]="--export-raw"
    [min-snr]="--min-snr-gamma 5"
    [logit-normal]="--timestep-sampler logit-normal"
    [zero-snr]="--zero-terminal-snr"
    [tokens16]="--context-tokens 16"
)

run() {  # NAME: one run, resumable (same command again)
    local name=$1
    [[ -v FLAGS[$name] ]] || { echo "unknown run $name: one of ${!FLAGS[*]}" >&2; exit 2; }
    mkdir -p "$R"
    # shellcheck disable=SC2086  # FLAGS are words, after the defaults: a repeated flag's last value wins
    OMP_NUM_THREADS=1 $PY -m train.training.m2m --variant self --context-tokens 64 ${FLAGS[$name]} \
        --data open:train --val-data open:heldout --sprites "$SPRITES" --vae checkpoints/vae-tiny-open \
        --steps 100000 --lr 5e-4 --warmup 50 --ema-decay 0.999 --batch-sets 8 --min-k 2 --max-k 6 \
        --mixed-precision no --log-every 10 --val-every 50 --checkpoint-every 50 --sample-every 100000 \
        --max-minutes "$MINUTES" --out "$R/$name" >> "$R/$name.log" 2>&1
}

pair() { run "$1" & run "$2" & wait_all || { echo "a run failed: $R/$1.log, $R/$2.log" >&2; exit 1; }; }

score() {  # FOLDER TAG
    OMP_NUM_THREADS=${THREADS:-1} $PY -m train.evaluation.evaluate --checkpoint "$1" --data open:heldout --contexts 4 \
        --sets 64 --generate 2 --steps 15 --out "$R/eval-$2.json" > "$R/eval-$2.log" 2>&1 \
        || { echo "evaluation of $1 failed: $R/eval-$2.log" >&2; return 1; }
}

evaluate() {  # [NAME...]
    local name names=("$@")
    [ ${#names[@]} -gt 0 ] || names=("${!FLAGS[@]}")
    for name in "${names[@]}"; do
        [ -f "$R/$name/pipeline/model_index.json" ] || continue
        score "$R/$name/pipeline" "$name"
        [ "$name" != base ] || score "$R/$name/pipeline-raw" base-raw
    done
}

case "${1:-}" in
    all) pair base min-snr; pair logit-normal zero-snr
         run tokens16 & evaluate base min-snr logit-normal zero-snr
         wait_all || { echo "the tokens16 run failed: $R/tokens16.log" >&2; exit 1; }
         evaluate tokens16 ;;
    round1) pair base min-snr ;;
    round2) pair logit-normal zero-snr ;;
    round3) run tokens16 ;;  # alone on one core: score the others on the second meanwhile
    run) run "${2:?usage: $0 run NAME}" ;;
    eval) evaluate "${@:2}" ;;
    table) $PY bench/recipe_table.py --runs "$R" ;;
    *) echo "usage: $0 all|round1|round2|round3|run NAME|eval [NAME...]|table" >&2; exit 2 ;;
esac
