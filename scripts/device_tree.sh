#!/usr/bin/env bash
# The working tree for a lent GPU machine (issue 26; docs/training.md). The device tool sends the tracked files,
# the untracked ones git does not ignore and the paths a call carries: at most 64 MiB in all. The checkpoints
# alone are over 100 MB, so for the call the tree keeps only what scripts/gpu_run.sh reads:
#   bash scripts/device_tree.sh slim      # sparse checkout of the code and both base models; diffusers as wheels
#                                         # (.whl/) and the drawings packed into the room left
#                                         # (data/sprites-gpu.npz.xz); prints the size and the call to make
#   bash scripts/device_tree.sh size      # what would travel now, carried paths included
#   bash scripts/device_tree.sh restore   # every tracked file back (git sparse-checkout disable)
# WHEELHOUSE=DIR takes the wheels from DIR instead of the package index; ATLAS the drawings' atlas to pack.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
PY=${PY:-$(default_python)}
LIMIT=$((64 * 1024 * 1024))
MARGIN=${MARGIN:-$((1024 * 1024))}
ATLAS=${ATLAS:-data/sprites.npz}
PACKED=data/sprites-gpu.npz.xz
CARRY=(.whl "$PACKED")
# what the GPU machine lacks (docs: /work/.library/device/KINDS.md lists its packages): diffusers and its one need
WHEELS=(diffusers importlib_metadata)
SPARSE=('/*' '!/checkpoints/*/' '/checkpoints/m2m-self-tiny/' '/checkpoints/m2m-dino-tiny/' '!/docs/' '!/examples/'
        '!/demo/')

bytes_of() {  # PATH...: their files' bytes (0 for what is missing)
    local total=0 f
    while IFS= read -r -d '' f; do total=$((total + $(stat -c %s "$f"))); done \
        < <(for p in "$@"; do [ -e "$p" ] && find "$p" -type f -print0; done)
    echo $total
}

tree_bytes() {  # the tracked files present and the untracked ones git does not ignore
    local total=0 f
    while IFS= read -r -d '' f; do
        [ -f "$f" ] && total=$((total + $(stat -c %s "$f")))
    done < <(git ls-files -z --cached --others --exclude-standard)
    echo $total
}

size() {
    local tree carried
    tree=$(tree_bytes) carried=$(bytes_of "${CARRY[@]}")
    echo "travels: tree $((tree / 1024)) KiB + carried $((carried / 1024)) KiB = $(((tree + carried) / 1024)) KiB" \
         "of $((LIMIT / 1024)) KiB"
    [ $((tree + carried)) -le $LIMIT ] || { echo "over the device's 64 MiB" >&2; return 1; }
}

wheels() {  # this venv's versions, for CPython 3.12 on x86-64 (the GPU machine's python3); or $WHEELHOUSE's
    rm -rf .whl && mkdir -p .whl
    if [ -n "${WHEELHOUSE:-}" ]; then cp "$WHEELHOUSE"/*.whl .whl/ && return; fi
    local name pins=()
    for name in "${WHEELS[@]}"; do
        pins+=("$name==$($PY -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name")")
    done
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
}

sprites() {  # the drawings into the room the rest leaves
    [ -f "$ATLAS" ] || { echo "no $ATLAS: python -m train.data.sprites first (README)" >&2; exit 1; }
    local room
    room=$((LIMIT - MARGIN - $(tree_bytes) - $(bytes_of .whl)))
    [ $room -gt 1000000 ] || { echo "no room left for the drawings ($room bytes)" >&2; exit 1; }
    $PY -m train.data.sprites --pack "$PACKED" --atlas "$ATLAS" --max-mb "$(awk -v r=$room 'BEGIN { print r / 1e6 }')"
}

slim() {
    git sparse-checkout set --no-cone "${SPARSE[@]}"
    wheels
    sprites
    size
    cat <<CALL
Now the device tool's run, with carry [".whl", "$PACKED"] and the command:
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && bash scripts/gpu_run.sh "\$OUT"
then: bash scripts/device_tree.sh restore && bash scripts/install_gpu_run.sh <the files' folder>
CALL
}

case "${1:-}" in
    slim) slim ;;
    size) size ;;
    restore) git sparse-checkout disable ;;
    *) echo "usage: $0 slim|size|restore" >&2; exit 2 ;;
esac
