#!/usr/bin/env bash
# The task-model runs in flight (issue 27; docs/tasks.md), one queue per core. Each run goes on from its run
# folder's last checkpoint, so the same command resumes a queue after a restart; a finished run is scored again.
#   nohup bash scripts/tasks_queue.sh nvs > runs/queue-nvs.out 2>&1 &          # core A
#   nohup bash scripts/tasks_queue.sh procedure > runs/queue-procedure.out 2>&1 &    # core B
# Then, for a run that beats the installed model: R=<its folder> bash scripts/train_tasks_cpu.sh install ...
set -euo pipefail
cd "$(dirname "$0")/.."

from() {  # FOLDER SOURCE RUN...: a new run folder starts as a copy of SOURCE's runs (a resumed model)
    local to=$1 src=$2
    shift 2
    mkdir -p "$to"
    for run in "$@"; do
        [ -d "$to/$run" ] && continue
        [ -d "$src/$run" ] || { echo "$to/$run starts from $src/$run, which this machine lacks (runs/ is not kept)" >&2
                                exit 1; }
        cp -r "$src/$run" "$to/"
    done
}

nvs() {  # M2M-DINO's novel-view model 1,900 -> 3,800 steps on 3,000 training objects (it had 600)
    [ -d data/nvs-3000 ] || NVS_OBJECTS=3000 NVS_DATA=data/nvs-3000 bash scripts/train_tasks_cpu.sh data
    from runs/tasks-nvs3000 runs/tasks-nvslong vae-channels-nvs scratch-step-dino-nvs
    NVS_DATA=data/nvs-3000 STEPS=3800 COOLDOWN=600 MINUTES=900 SEQUENCES=90 VAE=channels CHANGE_SCALE=1.3 \
        R=runs/tasks-nvs3000 bash scripts/train_tasks_cpu.sh run scratch-step dino nvs
}

procedure() {  # M2M-Self's procedure model 6,800 -> 13,600 steps (MINUTES: a budget over all resumes)
    from runs/tasks-x4 runs/tasks-x2 vae-channels-procedure scratch-step-self-procedure
    STEPS=13600 COOLDOWN=1200 MINUTES=1200 SEQUENCES=90 VAE=channels CHANGE_SCALE=2.7 \
        R=runs/tasks-x4 bash scripts/train_tasks_cpu.sh run scratch-step self procedure
}

case ${1:-} in
    nvs) nvs ;;
    procedure) procedure ;;
    *) echo "usage: bash scripts/tasks_queue.sh nvs|procedure" >&2
       exit 2 ;;
esac
