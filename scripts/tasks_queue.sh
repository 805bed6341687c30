#!/usr/bin/env bash
# The task-model runs of issue 27 (docs/tasks.md), one queue per core, each run a doubling of an installed model. Each
# run goes on from its run folder's last checkpoint, so the same command resumes a queue after a restart; a run that
# reached its steps and was scored since is skipped. A run stopped by its MINUTES budget (over all its resumes)
# short of its steps is scored again at each restart: raise MINUTES to go on. Two queues never train one folder at once
# (a lock per run).
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
        cp -r "$src/$run" "$to/.$run.copy" && mv "$to/.$run.copy" "$to/$run"  # whole, or not at all
    done
}

finished() {  # RUN STEPS: the run reached STEPS and was scored since (a queue skips it)
    local last
    last=$(tail -n 1 "$1/log.csv" 2>/dev/null | cut -d, -f1)
    [[ $last =~ ^[0-9]+$ ]] && [ "$last" -ge "$2" ] && [ "$1/eval-tasks.json" -nt "$1/log.csv" ]
}

run() {  # FOLDER STEPS COOLDOWN VARIANT TASK: a scratch-step run to STEPS, the last COOLDOWN cooled
    local scale=2.7  # the change scale of each task (docs/tasks.md)
    [ "$5" = procedure ] || scale=1.3
    finished "$1/scratch-step-$4-$5" "$2" && return
    STEPS=$2 COOLDOWN=$3 MINUTES=${MINUTES:-1200} SEQUENCES=90 VAE=channels CHANGE_SCALE=$scale R=$1 \
        flock -n "$1/scratch-step-$4-$5.lock" bash scripts/train_tasks_cpu.sh run scratch-step "$4" "$5" \
        || { echo "$1/scratch-step-$4-$5: another queue is training it, or it failed" >&2; exit 1; }
}

nvs() {  # novel views on 3,000 training objects (the first models had 600): M2M-DINO 1,900 -> 3,800 steps, then
    [ -d data/nvs-3000 ] || NVS_OBJECTS=3000 NVS_DATA=data/nvs-3000 bash scripts/train_tasks_cpu.sh data
    export NVS_DATA=data/nvs-3000  # M2M-Self 4,400 -> 8,800, then M2M-DINO 3,800 -> 7,600
    from runs/tasks-nvs3000 runs/tasks-nvslong vae-channels-nvs scratch-step-dino-nvs
    run runs/tasks-nvs3000 3800 600 dino nvs
    from runs/tasks-nvs3000 runs/tasks-nvsx2 scratch-step-self-nvs
    run runs/tasks-nvs3000 8800 1000 self nvs
    from runs/tasks-nvs3000-x2 runs/tasks-nvs3000 vae-channels-nvs scratch-step-dino-nvs
    run runs/tasks-nvs3000-x2 7600 1000 dino nvs
}

procedure() {  # another doubling of each procedure model: M2M-Self 6,800 -> 13,600 steps, then M2M-DINO
    from runs/tasks-x4 runs/tasks-x2 vae-channels-procedure scratch-step-self-procedure  # 3,400 -> 6,800 -> 13,600
    run runs/tasks-x4 13600 1200 self procedure
    from runs/tasks-x4 runs/tasks-x2 scratch-step-dino-procedure
    run runs/tasks-x4 13600 1200 dino procedure
}

case ${1:-} in
    nvs) nvs ;;
    procedure) procedure ;;
    *) echo "usage: bash scripts/tasks_queue.sh nvs|procedure" >&2
       exit 2 ;;
esac
