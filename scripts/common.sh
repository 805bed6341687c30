# Shared by the training scripts (sourced; needs $PY and $R).

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
