#!/usr/bin/env bash
# Install what scripts/gpu_run.sh brought back (issue 26): unpack OUT_DIR, put back each model's frozen parts from
# the shipped checkpoint it was trained from, score new and shipped side by side (train/evaluation/evaluate.py, the
# same sets and seeds, c = 4, on open:simple and open:heldout) and install each variant only where it scores better:
# the mean of colour and shape retrieval over both sources (more than $MARGIN above the shipped one's).
#   bash scripts/install_gpu_run.sh OUT_DIR              # installs into checkpoints/
#   bash scripts/install_gpu_run.sh OUT_DIR --dry-run    # tiny evaluation, installs into OUT_DIR/installed/ instead
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
out_dir_args "$0" "$@"
PY=${PY:-$(default_python)}
U="$OUT/unpacked"
MARGIN=${MARGIN:-0}  # install where new > shipped + MARGIN (a test sets -1 to take the install path whatever scores)
if [ -z "$DRY" ]; then
    TARGET=checkpoints EVAL=(--sets 64 --generate 2 --steps 15)
else
    TARGET="$OUT/installed" EVAL=(--sets 2 --generate 1 --steps 2)
fi

unpack() {
    ls "$OUT"/models.tar.* > /dev/null 2>&1 || { echo "no models.tar.* in $OUT: did gpu_run.sh train?" >&2; exit 1; }
    rm -rf "$U" && mkdir -p "$U"
    cat "$OUT"/models.tar.* | tar -C "$U" -xf -
    [ ! -f "$OUT/logs.tar.gz" ] || tar -C "$U" -xzf "$OUT/logs.tar.gz"
}

complete() {  # VARIANT: the frozen parts (not trained, not sent) back from the shipped model
    local v=$1 new="$U/m2m-$1-tiny/pipeline" part
    for part in vae image_encoder; do
        [ ! -d "checkpoints/m2m-$v-tiny/$part" ] || cp -r "checkpoints/m2m-$v-tiny/$part" "$new/$part"
    done
}

score() {  # CHECKPOINT TAG: mean colour and shape retrieval over both sources
    OMP_NUM_THREADS=${THREADS:-2} $PY -m train.evaluation.evaluate --checkpoint "$1" --data open:simple open:heldout \
        --contexts 4 "${EVAL[@]}" --out "$U/eval-$2.json" > "$U/eval-$2.log" 2>&1 \
        || { echo "evaluation of $1 failed: $U/eval-$2.log" >&2; exit 1; }
    $PY - "$U/eval-$2-simple.json" "$U/eval-$2-heldout.json" <<'EOF'
import json, sys
scores = [next(iter(json.load(open(p))["results"].values()))["model"] for p in sys.argv[1:]]
print(sum(s["colour_retrieval"] + s["shape_retrieval"] for s in scores) / (2 * len(scores)))
EOF
}

install_variant() {  # VARIANT
    local v=$1 new shipped
    [ -f "$U/m2m-$v-tiny/pipeline/model_index.json" ] || { echo "M2M-$v: not trained in this run"; return 0; }
    complete "$v"
    new=$(score "$U/m2m-$v-tiny/pipeline" "$v-new")
    shipped=$(score "checkpoints/m2m-$v-tiny" "$v-shipped")
    echo "M2M-$v: new $new, shipped $shipped (mean colour and shape retrieval, open:simple and open:heldout)"
    if awk -v a="$new" -v b="$shipped" -v m="$MARGIN" 'BEGIN { exit !(a > b + m) }'; then
        mkdir -p "$TARGET" && rm -rf "${TARGET:?}/m2m-$v-tiny" && cp -r "$U/m2m-$v-tiny/pipeline" "$TARGET/m2m-$v-tiny"
        echo "M2M-$v: installed into $TARGET/m2m-$v-tiny"
    else
        echo "M2M-$v: not better, not installed"
    fi
}

unpack
for v in self dino; do install_variant "$v"; done
