#!/usr/bin/env bash
# The tiny checkpoints on open-ended sets (train/data/open_sets.py), on this CPU, in stages that resume:
#   vae    ColourAutoencoderKL (m2m/autoencoder.py) on open sets, once;
#   vae-full  the shipped colour autoencoder trained on at full resolution with a falling learning rate, twice
#          side by side (one core each): as it is (4 latent channels) and widened to $WIDE_CHANNELS
#          (m2m.autoencoder.widen_latents): $R/vae-full-4ch and $R/vae-full-${WIDE_CHANNELS}ch;
#   base   M2M-Self (64 context tokens) and M2M-DINO side by side, one core each, for $MINUTES; run it
#          again, in this session or the next, and both go on from their last checkpoint (same batches,
#          same curve) until --steps;
#   more [VARIANT...]  both shipped models (or those named) (checkpoints/m2m-{self,dino}-tiny) trained on, on sets they have not seen
#          (--seed $MORE_SEED), side by side, for $MINUTES: another cosine of $MORE_SELF_STEPS / $MORE_DINO_STEPS
#          steps from $MORE_LR; use its own R (R=runs/open-cpu-more), so that eval and install read it;
#   tokens the A/B of the context's pooling: the shipped M2M-Self trained on as "more self" does, twice side by
#          side from the same weights on the same sets, pooled as shipped ($R/m2m-self-tiny) and with $WIDE_TOKENS
#          context tokens per image and layer ($R/tokens$WIDE_TOKENS/m2m-self-tiny: R=$R/tokens$WIDE_TOKENS for eval-one
#          and install);
#   eval   the label-free set metrics of both (train/evaluation/evaluate.py): c = 4 on open:heldout and
#          open:hard (32 sets), c = 3 on the photos (8 sets);
#   install [VARIANT...]  both (or those named) into checkpoints/m2m-{self,dino}-tiny, run by hand once they score better (docs/open-sets.md).
#          The shipped task models are full pipelines (scripts/train_tasks_cpu.sh), so replacing a general model
#          leaves them as they are.
#   tasks  the four task adapters (LoRA) over the bases in checkpoints/m2m-{self,dino}-tiny, two at a time, one
#          core each, $TASK_MINUTES each (novel views rendered to $R/nvs first);
#   eval-tasks  train/evaluation/tasks.py on each: the new adapter and the shipped one, side by side;
#   install-tasks  the new adapters into checkpoints/, over the open-set bases (by hand, once they score better).
#   bash scripts/train_open_cpu.sh vae && bash scripts/train_open_cpu.sh base && bash scripts/train_open_cpu.sh eval
# The drawings' atlas comes from Debian packages (python -m train.data.sprites --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
PY=${PY:-.venv/bin/python}
R=${R:-runs/open-cpu}
MINUTES=${MINUTES:-60}     # wall-clock budget of each base run per call
VAE_MINUTES=${VAE_MINUTES:-55}
VAE_FULL_STEPS=${VAE_FULL_STEPS:-450}  # ~6 s a step of 32 images at 128x128 on one of 2 busy cores
WIDE_CHANNELS=${WIDE_CHANNELS:-8}
SELF_STEPS=${SELF_STEPS:-900}  # the cosine schedules: M2M-Self takes ~7 s a step on one of 2 busy cores,
DINO_STEPS=${DINO_STEPS:-1200}  # M2M-DINO ~5 s (fp32: bf16 is emulated on an AVX2-only CPU, many times slower)
VAE=${VAE:-checkpoints/vae-tiny-open}  # the shipped colour autoencoder; or "$R/vae-colour" from the vae stage
DINO=${DINO:-checkpoints/m2m-dino-tiny/image_encoder}  # the shipped tiny DINOv2 (MIS-synth); or one pretrained on
                                                       # open sets: python -m train.training.encoder --data open:train
SPRITES=${SPRITES:-data/sprites.npz}
MORE_SELF_STEPS=${MORE_SELF_STEPS:-600}
MORE_DINO_STEPS=${MORE_DINO_STEPS:-800}
MORE_LR=${MORE_LR:-2e-4}
MORE_SEED=${MORE_SEED:-1}  # the shipped runs drew their sets with seed 0
WIDE_TOKENS=${WIDE_TOKENS:-256}  # tokens: 256 = the 16x16 level's whole map, unpooled
TASK_MINUTES=${TASK_MINUTES:-15}
NVS_OBJECTS=${NVS_OBJECTS:-600}

vae() {
    mkdir -p "$R"
    [ -f "$SPRITES" ] || $PY -m train.data.sprites --out "$SPRITES"
    OMP_NUM_THREADS=2 $PY -m train.training.autoencoder --data open:train --eval-data open:heldout \
        --steps 2000 --warm-steps 1800 --batch-sets 8 --minutes "$VAE_MINUTES" --save-every 200 \
        --out "$R/vae-colour" > "$R/vae-colour.log" 2>&1
}

vae_full() {  # CHANNELS: one full-resolution run, on one core
    OMP_NUM_THREADS=1 $PY -m train.training.autoencoder --init checkpoints/vae-tiny-open --latent-channels "$1" \
        --data open:train --eval-data open:heldout --steps "$VAE_FULL_STEPS" --warm-steps 0 --lr 5e-4 --batch-sets 8 \
        --minutes "$VAE_MINUTES" --save-every 50 --out "$R/vae-full-$1ch" > "$R/vae-full-$1ch.log" 2>&1
}

vae_full_both() {
    [ "$WIDE_CHANNELS" -gt 4 ] || { echo "WIDE_CHANNELS must be more than the 4 latent channels there are" >&2; exit 2; }
    mkdir -p "$R"
    [ -f "$SPRITES" ] || $PY -m train.data.sprites --out "$SPRITES"
    vae_full 4 & vae_full "$WIDE_CHANNELS" &
    wait_all
}

base() {
    [ -d "$DINO" ] || OMP_NUM_THREADS=2 $PY -m train.training.encoder --data open:train --out "$DINO"
    local args=(--data open:train --val-data open:heldout --sprites "$SPRITES" --vae "$VAE"
                --lr 5e-4 --warmup 200 --ema-decay 0.999 --batch-sets 8 --min-k 2 --max-k 6 --mixed-precision no
                --log-every 10 --val-every 100 --checkpoint-every 100 --sample-every 100000
                --max-minutes "$MINUTES" --export-fp16)
    OMP_NUM_THREADS=1 $PY -m train.training.m2m --variant self --context-tokens 64 --steps "$SELF_STEPS" --out "$R/m2m-self-tiny" \
        "${args[@]}" >> "$R/m2m-self-tiny.log" 2>&1 &
    OMP_NUM_THREADS=1 $PY -m train.training.m2m --variant dino --image-encoder "$DINO" --steps "$DINO_STEPS" --out "$R/m2m-dino-tiny" \
        "${args[@]}" >> "$R/m2m-dino-tiny.log" 2>&1 &
    wait_all
}

more_one() {  # VARIANT OUT [FLAG...]: the shipped model trained on into OUT, on one core
    local v=$1 out=$2 steps=$MORE_SELF_STEPS
    [ "$v" = self ] || steps=$MORE_DINO_STEPS
    mkdir -p "$(dirname "$out")"
    OMP_NUM_THREADS=1 $PY -m train.training.m2m --variant "$v" --init "checkpoints/m2m-$v-tiny" --steps "$steps" \
        --out "$out" --data open:train --val-data open:heldout --sprites "$SPRITES" --lr "$MORE_LR" --warmup 30 \
        --ema-decay 0.999 --batch-sets 8 --min-k 2 --max-k 6 --mixed-precision no --seed "$MORE_SEED" \
        --log-every 10 --val-every 100 --checkpoint-every 50 --sample-every 100000 --max-minutes "$MINUTES" \
        --export-fp16 "${@:3}" >> "$out.log" 2>&1
}

refuse_base_r() {
    [ "$R" != runs/open-cpu ] || { echo "$1 trains into an R of its own (R=runs/open-cpu-more): $R holds the base runs, which it would resume" >&2; exit 2; }
}

more() {  # [VARIANT...]: both by default
    local v variants=("$@")
    [ $# -gt 0 ] || variants=(self dino)
    refuse_base_r more
    for v in "${variants[@]}"; do
        case $v in self | dino) ;; *) echo "no variant $v: self or dino" >&2; exit 2 ;; esac
    done
    for v in "${variants[@]}"; do
        more_one "$v" "$R/m2m-$v-tiny" &
    done
    wait_all
}

tokens() {  # the shipped M2M-Self trained on twice from the same weights on the same sets: pooled as shipped, and not
    refuse_base_r tokens
    more_one self "$R/m2m-self-tiny" &
    more_one self "$R/tokens$WIDE_TOKENS/m2m-self-tiny" --context-tokens "$WIDE_TOKENS" &
    wait_all
}

evaluate() {  # VARIANT [CHECKPOINT [TAG]]
    local v=${1:?usage: $0 eval-one self|dino [CHECKPOINT [TAG]]} ckpt=${2:-} tag=${3:-} spec
    ckpt=${ckpt:-$R/m2m-$v-tiny/pipeline}
    tag=${tag:-$(echo "$ckpt" | tr / _)}
    for spec in "heldout open:heldout 4 32 2" "hard open:hard 4 32 2" "photos folders:examples/zero-shot 3 8 1"; do
        set -- $spec  # name, source, contexts, sets, images generated per set
        OMP_NUM_THREADS=${THREADS:-2} $PY -m train.evaluation.evaluate --checkpoint "$ckpt" --data "$2" --contexts "$3" \
            --sets "$4" --generate "$5" --steps 15 --out "$R/eval-$tag-$1.json" > "$R/eval-$tag-$1.log" 2>&1 \
            || { echo "evaluation of $ckpt on $2 failed: $R/eval-$tag-$1.log" >&2; return 1; }
    done
}

install() {  # [VARIANT...]: both by default
    local v variants=("$@")
    [ $# -gt 0 ] || variants=(self dino)
    for v in "${variants[@]}"; do
        [ -f "$R/m2m-$v-tiny/pipeline/model_index.json" ] || { echo "no trained $R/m2m-$v-tiny/pipeline" >&2; exit 1; }
    done
    for v in "${variants[@]}"; do
        rm -rf "checkpoints/m2m-$v-tiny" && cp -r "$R/m2m-$v-tiny/pipeline" "checkpoints/m2m-$v-tiny"
    done
    du -sh checkpoints
}

adapter() {  # VARIANT TASK: one adapter over checkpoints/m2m-VARIANT-tiny, resumable
    local v=$1 task=$2 data=procedure:train
    [ "$task" = procedure ] || data="$R/nvs"
    OMP_NUM_THREADS=1 $PY -m train.training.m2m --variant "$v" --init "checkpoints/m2m-$v-tiny" --task "$task" \
        --data "$data" --val-data "$task:heldout" --lora-rank 16 --steps 1200 --lr 1e-3 --warmup 50 --ema-decay 0.995 \
        --batch-sets 8 --min-k 2 --max-k 5 --workers 0 --mixed-precision no --log-every 10 --val-every 50 \
        --checkpoint-every 50 --sample-every 100000 --max-minutes "$TASK_MINUTES" --out "$R/m2m-$v-tiny-$task" \
        >> "$R/m2m-$v-tiny-$task.log" 2>&1
}

tasks() {
    local v task  # adapters over the open-set bases in checkpoints/m2m-{self,dino}-tiny
    mkdir -p "$R"
    if [ ! -f "$R/nvs/done" ]; then
        OMP_NUM_THREADS=1 $PY -m train.data.nvs --out "$R/nvs" --objects "$NVS_OBJECTS" --workers 2 > "$R/nvs.log" 2>&1 \
            || { echo "rendering novel views failed: $R/nvs.log" >&2; exit 1; }
        touch "$R/nvs/done"
    fi
    for task in nvs procedure; do
        adapter self "$task" & adapter dino "$task" &
        wait_all || { echo "an adapter run failed: $R/m2m-*-tiny-$task.log" >&2; exit 1; }
    done
}

evaluate_task() {  # TASK ADAPTER BASE TAG: train/evaluation/tasks.py, on one core
    OMP_NUM_THREADS=1 $PY -m train.evaluation.tasks --task "$1" --checkpoint "$2" --base "$3" --sequences 30 \
        --ks 1 2 4 --steps 20 --out "$R/tasks-$4.json" > "$R/tasks-$4.log" 2>&1
}

evaluate_tasks() {  # the new adapter over the open-set base and the shipped one over its own base, side by side
    local v task shipped_base
    for task in nvs procedure; do
        for v in self dino; do
            shipped_base="checkpoints/m2m-$v-tiny"  # beside a full task pipeline: the general model; an adapter: its base
            [ ! -f "checkpoints/m2m-$v-tiny-$task/adapter_config.json" ] || shipped_base=$($PY -c \
                "import sys; from m2m.adapters import base_folder; print(base_folder(sys.argv[1]))" "checkpoints/m2m-$v-tiny-$task")
            evaluate_task "$task" "$R/m2m-$v-tiny-$task/pipeline" "checkpoints/m2m-$v-tiny" "new-$v-$task" &
            evaluate_task "$task" "checkpoints/m2m-$v-tiny-$task" "$shipped_base" "shipped-$v-$task" &
            wait_all || { echo "a task evaluation failed: $R/tasks-*-$v-$task.log" >&2; exit 1; }
        done
    done
}

install_tasks() {
    local v task
    for v in self dino; do
        for task in nvs procedure; do
            [ -f "$R/m2m-$v-tiny-$task/pipeline/adapter_config.json" ] || { echo "no adapter $R/m2m-$v-tiny-$task" >&2; exit 1; }
        done
    done
    install_adapters
    du -sh checkpoints
}

case "${1:-}" in
    vae) vae ;;
    vae-full) vae_full_both ;;
    base) base ;;
    more) more "${@:2}" ;;
    tokens) tokens ;;
    eval) evaluate self; evaluate dino ;;
    eval-one) evaluate "${@:2}" ;;  # VARIANT [CHECKPOINT [TAG]]: one model, e.g. a snapshot of the learning curve
    install) install "${@:2}" ;;
    tasks) tasks ;;
    eval-tasks) evaluate_tasks ;;
    install-tasks) install_tasks ;;
    *) echo "usage: $0 vae|vae-full|base|more|tokens|eval|eval-one|install|tasks|eval-tasks|install-tasks" >&2; exit 2 ;;
esac
