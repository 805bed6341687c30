#!/usr/bin/env bash
# Task models that do their task (issue 27; docs/tasks.md): novel views and procedures, trained on one core beside
# the shapes run, resumable, each scored by train/evaluation/tasks.py beside copying the last image.
#   bash scripts/train_tasks_cpu.sh data                        # the novel-view training renders, once ($NVS_DATA)
#   bash scripts/train_tasks_cpu.sh run APPROACH VARIANT TASK   # $MINUTES of training (over all resumes), then scored
#   bash scripts/train_tasks_cpu.sh eval APPROACH VARIANT TASK  # score it again
#   bash scripts/train_tasks_cpu.sh install APPROACH VARIANT TASK   # into checkpoints/m2m-VARIANT-tiny-TASK, by hand
#   bash scripts/train_tasks_cpu.sh flags APPROACH VARIANT TASK     # the training command's flags, without running it
# APPROACH is how a task model is made (the table of docs/tasks.md compares them at equal minutes):
#   adapter   a LoRA (rank 16) over the shipped open-set base, its ISA trained in full
#   scratch   a new half-width pipeline trained on the task's data alone (the colour autoencoder and, for
#             M2M-DINO, the shipped DINOv2 frozen); full pipelines, small enough to ship four
#   scratch-last  scratch, with a UNet that also reads the last given image's latent (--last-image-input)
#   scratch-change  scratch-last denoising the change from the last image (--last-image-change)
#   scratch-scaled  scratch-change with the change times $CHANGE_SCALE (--last-image-change-scale: 1 / the change's
#             rms, python -m train.training.latent_stats --changes; 4.4 on procedure:train, shipped autoencoder),
#             drawn on the last image's own pixels (--last-image-pixels, generation only) where its largest
#             channel is at least $CHANGE_FLOOR (--last-image-change-floor: under it, the sampler's noise)
#   scratch-step  scratch-scaled, its UNet also reading the last step, last image minus the one before
#             (--last-step-input: where the set last changed, pixel for pixel)
#   scratch-relative  scratch-step, each change (and step read) in units of its last step from a set's third image
#             on (--last-image-change-relative: a colour boundary's small turn as loud as a table's large one)
#   tune-last     the shipped open-set base, fine-tuned in full, its UNet widened to read the last image too
# M2M-Self takes the design of scripts/design.sh where it changes no weight's shape (reference attention).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/design.sh
PY=${PY:-.venv/bin/python}
R=${R:-runs/tasks}
MINUTES=${MINUTES:-45}
NVS_OBJECTS=${NVS_OBJECTS:-600}  # how many objects `data` renders ...
NVS_DATA=${NVS_DATA:-data/nvs}  # ... into this folder, the novel-view models' training renders
CHANGE_SCALE=${CHANGE_SCALE:-4.4}  # scratch-scaled: see the header
CHANGE_FLOOR=${CHANGE_FLOOR:-0.5}  # scratch-scaled: see the header (docs/tasks.md chose it for both tasks)
SEQUENCES=${SEQUENCES:-30}  # held-out sequences each score takes
STEPS=${STEPS:-100000}  # a run's --steps: far off, so the rate stays flat; to end on a cool-down, resume with
COOLDOWN=${COOLDOWN:-0}  # STEPS near and COOLDOWN=N (--cooldown-steps: flat, then linear to zero over the last N)
VAE=${VAE:-checkpoints/vae-tiny-open}  # scratch approaches: the autoencoder; `channels`: the same with per-channel
# latent stats fitted on the task's training sets (made once, into $R/vae-channels-TASK), e.g. the procedure model
# of docs/tasks.md: VAE=channels CHANGE_SCALE=2.7 R=runs/tasks-channels bash scripts/train_tasks_cpu.sh run \
#     scratch-scaled self procedure   (MINUTES=N: resumes to N minutes in all)

data_for() { [ "$1" = nvs ] && echo "$NVS_DATA" || echo procedure:train; }

approach_flags() {  # APPROACH VARIANT
    local design=""
    [ "$2" = dino ] || design=$SELF_DESIGN
    case $1 in
        adapter) echo "--init checkpoints/m2m-$2-tiny --lora-rank 16 --lr 1e-3 $design" ;;
        scratch) local enc=""
                 [ "$2" = self ] || enc="--image-encoder checkpoints/m2m-$2-tiny/image_encoder"
                 echo "--unet-width 0.5 --vae $VAE $enc --lr 1e-3 --context-tokens 64 $design" ;;
        scratch-last) echo "$(approach_flags scratch "$2") --last-image-input" ;;
        scratch-change) echo "$(approach_flags scratch "$2") --last-image-change" ;;
        scratch-scaled) echo "$(approach_flags scratch-change "$2") --last-image-change-scale $CHANGE_SCALE" ;;
        scratch-step) echo "$(approach_flags scratch-scaled "$2") --last-step-input" ;;
        scratch-relative) echo "$(approach_flags scratch-step "$2") --last-image-change-relative" ;;
        tune-last) echo "--init checkpoints/m2m-$2-tiny --lr 2e-4 --last-image-input $design" ;;
        *) echo "no approach $1: adapter, scratch, scratch-last, scratch-change, scratch-scaled, scratch-step," \
               "scratch-relative or tune-last" >&2
           exit 2 ;;
    esac
}

scaled_flags() {  # APPROACH: the scaled change is drawn on the last image's own pixels (a procedure's step, and a
    # turn's background, change few of them)
    case $1 in scratch-scaled | scratch-step | scratch-relative) echo "--last-image-pixels --last-image-change-floor $CHANGE_FLOOR" ;; esac
}

check() {  # APPROACH VARIANT TASK
    case $2:$3 in self:nvs | self:procedure | dino:nvs | dino:procedure) ;;
        *) echo "usage: $0 run|eval|install|flags adapter|scratch|scratch-last|scratch-change|scratch-scaled|scratch-step|scratch-relative|tune-last self|dino nvs|procedure" >&2; exit 2 ;; esac
    approach_flags "$1" "$2" > /dev/null
}

use_vae() {  # TASK: VAE=channels becomes this task's per-channel stats in $R (fitted by `train` once)
    [ "$VAE" != channels ] || VAE="$R/vae-channels-$1"
}

train_flags() {  # APPROACH VARIANT TASK: every flag of the training command (use_vae first)
    echo "--variant $2 --task $3 --data $(data_for "$3") --val-data $3:heldout --steps $STEPS --warmup 50" \
        "--ema-decay 0.999 --batch-sets 8 --min-k 2 --max-k 5 --workers 0 --mixed-precision no --log-every 10" \
        "--val-every 50 --checkpoint-every 50 --sample-every 100000 --budget-minutes $MINUTES --export-fp16" \
        "--cooldown-steps $COOLDOWN" \
        "--out $R/$1-$2-$3 $(approach_flags "$1" "$2") $(scaled_flags "$1")"
}

train() {  # APPROACH VARIANT TASK
    mkdir -p "$R"
    [ "$3" = procedure ] || [ -d "$NVS_DATA" ] || data
    if [ "$VAE" = channels ]; then
        use_vae "$3"
        [ -f "$VAE/config.json" ] || OMP_NUM_THREADS=1 $PY -m train.training.latent_stats --vae checkpoints/vae-tiny-open \
            --data "$(data_for "$3")" --sets 128 --changes --out "$VAE"  # prints the change's rms and scale
    fi
    # shellcheck disable=SC2046  # flags
    OMP_NUM_THREADS=1 $PY -m train.training.m2m $(train_flags "$@") >> "$R/$1-$2-$3.log" 2>&1
}

score() {  # APPROACH VARIANT TASK
    local out="$R/$1-$2-$3"
    OMP_NUM_THREADS=1 $PY -m train.evaluation.tasks --task "$3" --checkpoint "$out/pipeline" --sequences "$SEQUENCES" \
        --ks 2 4 --steps 20 --out "$out/eval-tasks.json" > "$out/eval-tasks.log" 2>&1
    tail -n 12 "$out/eval-tasks.log"
}

data() {  # into $NVS_DATA whole, or not at all (a folder there is taken as rendered)
    rm -rf "$NVS_DATA.partial"
    OMP_NUM_THREADS=1 $PY -m train.data.nvs --out "$NVS_DATA.partial" --split train --objects "$NVS_OBJECTS"
    mv "$NVS_DATA.partial" "$NVS_DATA"
}

case "${1:-}" in
    data) data ;;
    run) check "${@:2}"; train "${@:2}"; score "${@:2}" ;;
    eval) check "${@:2}"; score "${@:2}" ;;
    flags) check "${@:2}"; use_vae "$4"; train_flags "${@:2}" ;;
    install) check "${@:2}"
        out="$R/$2-$3-$4/pipeline"
        [ -f "$out/model_index.json" ] || [ -f "$out/adapter_config.json" ] || { echo "no export in $out" >&2; exit 1; }
        rm -rf "checkpoints/m2m-$3-tiny-$4" && cp -r "$out" "checkpoints/m2m-$3-tiny-$4"
        [ ! -f "$out/adapter_config.json" ] || $PY -c "import sys; from m2m.adapters import rebase; rebase(*sys.argv[1:])" \
            "checkpoints/m2m-$3-tiny-$4" "checkpoints/m2m-$3-tiny" ;;
    *) echo "usage: $0 data | run|eval|install|flags APPROACH self|dino nvs|procedure (APPROACH: see the header)" >&2
       exit 2 ;;
esac
