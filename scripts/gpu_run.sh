#!/usr/bin/env bash
# One command for a GPU machine (issue 26): in at most $TOTAL_MIN minutes of wall-clock, in this order,
#   1. checks the environment (Python packages, the GPU, the drawings' atlas, the shipped checkpoints);
#   2. the training throughput bench, both variants (bench/train_throughput.py);
#   3. the context-cost bench at SD-2.1-base size (bench/context_cost.py: the GPU figures of issue 12 part C);
#   4. trains both shipped tiny models on (checkpoints/m2m-{self,dino}-tiny), side by side, for the minutes left,
#      with the design the architecture table chose ($SELF_DESIGN, $DINO_DESIGN);
#   5. packs into OUT_DIR at most 8 files of at most 15 MiB each: the benches' JSON, the logs, and both trained
#      models without their frozen parts (autoencoder, DINOv2), split into pieces.
# scripts/install_gpu_run.sh OUT_DIR unpacks them here, scores them beside the shipped ones and installs the better.
#   bash scripts/gpu_run.sh OUT_DIR              # on the GPU machine (python3 there holds torch; see docs/training.md)
#   bash scripts/gpu_run.sh OUT_DIR --dry-run    # the same steps on this CPU at tiny sizes, in under 3 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
out_dir_args "$0" "$@"
PY=${PY:-$(default_python)}
SPRITES=${SPRITES:-data/sprites.npz}
[ -f "$SPRITES" ] || [ ! -f data/sprites-gpu.npz.xz ] || SPRITES=data/sprites-gpu.npz.xz  # scripts/device_tree.sh's pack
source scripts/design.sh  # SELF_DESIGN, DINO_DESIGN: the architecture table's choice (docs/open-sets.md §9)
START=$(date +%s)
if [ -z "$DRY" ]; then
    DEVICE=cuda TOTAL_MIN=${TOTAL_MIN:-9} BENCH_S=30 COST_S=60 BATCH=${BATCH:-256} K=4 PRECISION=bf16
    # eager, to fit in its seconds: the compiled rate is the training runs' (images_per_s in their log.csv)
    BENCH_ARGS=(--batch-sets "$BATCH" --k "$K" --steps 8 --warmup 2 --channels-last)
    COST_ARGS=(--preset sd21-base --device cuda --dtype fp16 --steps 20 --repeats 1 --contexts 1 16
               --modes plain self dino self-ref self-last)
    FAST=(--compile --channels-last)
else
    DEVICE=cpu TOTAL_MIN=${TOTAL_MIN:-1.5} BENCH_S=240 COST_S=240 BATCH=2 K=2 PRECISION=no  # limits a loaded CPU meets
    BENCH_ARGS=(--batch-sets 2 --k 2 --steps 1 --warmup 0)
    COST_ARGS=(--preset tiny --latent-size 8 --steps 2 --repeats 1 --contexts 0 1 --modes plain self self-ref self-last)
    FAST=()
fi
mkdir -p "$OUT/work"
LOG="$OUT/work/gpu_run.log"
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

check_env() {
    say "environment"
    $PY - "$DEVICE" <<'EOF' 2>&1 | tee -a "$LOG"
import sys, torch, diffusers, transformers, accelerate
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
      f"transformers {transformers.__version__}, accelerate {accelerate.__version__}")
if sys.argv[1] == "cuda":
    assert torch.cuda.is_available(), "no CUDA device: run with --dry-run on a CPU"
    print(torch.cuda.get_device_name(), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF
    for v in self dino; do
        [ -f "checkpoints/m2m-$v-tiny/model_index.json" ] || { say "no checkpoints/m2m-$v-tiny"; exit 1; }
    done
    [ -f "$SPRITES" ] || say "no drawings' atlas at $SPRITES: the sets are drawn without drawings (scripts/device_tree.sh)"
}

bench() {  # NAME SECONDS COMMAND...: a bench under its time limit; a bench that fails or overruns is logged, not fatal
    local name=$1 limit=$2
    say "$name (at most ${limit}s)"
    timeout "$limit" "${@:3}" --json "$OUT/$name.json" >> "$LOG" 2>&1 || say "$name failed or ran out of time"
}

train_one() {  # VARIANT MINUTES DESIGN...
    local v=$1 minutes=$2
    $PY -m train.training.m2m --variant "$v" --init "checkpoints/m2m-$v-tiny" --out "$OUT/work/m2m-$v-tiny" \
        --data open:train --val-data open:heldout --sprites "$SPRITES" --seed 4 --steps 1000000 --lr 5e-4 \
        --warmup 100 --ema-decay 0.9995 --batch-sets "$BATCH" --min-k "$K" --max-k "$K" \
        --mixed-precision "$PRECISION" "${FAST[@]}" --log-every 20 --val-every 200 --checkpoint-every 1000 \
        --sample-every 1000000 --max-minutes "$minutes" --export-fp16 "${@:3}" > "$OUT/work/m2m-$v-tiny.log" 2>&1
}

train_both() {  # side by side for the minutes left, less a minute to pack
    local left
    left=$(awk -v t="$TOTAL_MIN" -v s="$(( $(date +%s) - START ))" 'BEGIN { m = t - s / 60 - 1; print (m > 0.2 ? m : 0.2) }')
    say "training both variants for $left minutes each, side by side"
    # shellcheck disable=SC2086  # the designs are flags
    train_one self "$left" $SELF_DESIGN &
    # shellcheck disable=SC2086
    train_one dino "$left" $DINO_DESIGN &
    wait_all || { say "a training run failed: $OUT/work/m2m-*-tiny.log"; tail -5 "$OUT"/work/m2m-*-tiny.log; }
}

pack() {  # the models without their frozen parts, split in 15 MiB pieces; logs and curves in one archive
    say "packing"
    local models=()
    for v in self dino; do
        [ -f "$OUT/work/m2m-$v-tiny/pipeline/model_index.json" ] && models+=("m2m-$v-tiny/pipeline")
    done
    [ ${#models[@]} -gt 0 ] && tar -C "$OUT/work" -cf - --exclude=vae --exclude=image_encoder "${models[@]}" \
        | split -b 15M -d - "$OUT/models.tar."
    tar -C "$OUT/work" -czf "$OUT/logs.tar.gz" --exclude=checkpoints --exclude=pipeline --exclude=samples .
    rm -rf "$OUT/work"
    ls -la "$OUT"
}

check_env
bench throughput "$BENCH_S" $PY bench/train_throughput.py --device "$DEVICE" "${BENCH_ARGS[@]}"
bench context-cost "$COST_S" $PY bench/context_cost.py "${COST_ARGS[@]}"
train_both
say "done in $(( $(date +%s) - START ))s"
pack
