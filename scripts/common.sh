# Shared by the training scripts (sourced; needs $PY and $R).

default_python() {  # this checkout's venv, else the machine's python3 (a GPU machine's holds torch)
    [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3
}

out_dir_args() {  # SCRIPT OUT_DIR [--dry-run]: sets OUT and DRY, or exits with the usage
    OUT=${2:-}
    DRY=${3:-}
    if [ -z "$OUT" ] || { [ -n "$DRY" ] && [ "$DRY" != --dry-run ]; }; then
        echo "usage: $1 OUT_DIR [--dry-run]" >&2
        exit 2
    fi
}

score_both() {  # CHECKPOINT PREFIX: c = 4 on open:simple (32 sets) and open:heldout (64), into PREFIX-{simple,heldout}
    local source sets
    for source in simple:32 heldout:64; do
        sets=${source#*:} source=${source%%:*}
        OMP_NUM_THREADS=${THREADS:-1} $PY -m train.evaluation.evaluate --checkpoint "$1" --data "open:$source" \
            --contexts 4 --sets "$sets" --generate 2 --steps 15 --out "$2-$source.json" > "$2-$source.log" 2>&1 \
            || { echo "evaluation of $1 on open:$source failed: $2-$source.log" >&2; return 1; }
    done
}

wait_all() {  # the background jobs; fails (after all have ended) if one did
    local failed=0
    for pid in $(jobs -p); do wait "$pid" || failed=1; done
    return $failed
}

install_adapters() {  # $R/m2m-{self,dino}-tiny-{nvs,procedure}/pipeline -> checkpoints/, over the bases there
    local v task dst
    for v in self dino; do
        for task in nvs procedure; do
            dst="checkpoints/m2m-$v-tiny-$task"
            rm -rf "$dst" && cp -r "$R/m2m-$v-tiny-$task/pipeline" "$dst"
            $PY -c "import sys; from m2m.adapters import rebase; rebase(*sys.argv[1:])" "$dst" "checkpoints/m2m-$v-tiny"
        done
    done
}

install_models() {  # $R/m2m-{self,dino}-tiny[-task]/pipeline -> checkpoints/, adapters rebased onto the copies
    local v
    for v in self dino; do
        rm -rf "checkpoints/m2m-$v-tiny" && cp -r "$R/m2m-$v-tiny/pipeline" "checkpoints/m2m-$v-tiny"
    done
    install_adapters
}
