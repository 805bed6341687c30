#!/usr/bin/env bash
# Train the embedded tiny checkpoints from scratch on MIS-synth, on a CPU: the exact commands behind
# checkpoints/m2m-{self,dino}-tiny (see checkpoints/README.md for the measured time and hardware).
#   bash scripts/train_tiny.sh            # runs/ holds everything; checkpoints/ is written at the end
# Each step resumes where it stopped when run again (the two M2M runs from their last checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MINUTES=${MINUTES:-58}   # wall-clock budget of each M2M run; both run side by side, one core each
# M2M runs: bf16 autocast with fp32 weights where the CPU has AVX512 (~30 % more steps per hour there, the same
# loss per step), else plain fp32: an AVX2-only CPU emulates bf16, many times slower (docs/training.md)
PRECISION=${PRECISION:-$($PY -c 'import torch; from train.training.m2m import bf16_is_fast
print("bf16" if bf16_is_fast(torch.device("cpu")) else "no")')}
export OMP_NUM_THREADS=1

[ -f runs/vae-tiny/metrics.json ] || OMP_NUM_THREADS=2 $PY -m train.training.autoencoder --out runs/vae-tiny
[ -f runs/dino-tiny/metrics.json ] || OMP_NUM_THREADS=2 $PY -m train.training.encoder --out runs/dino-tiny
# the decoder again, on the task data's colours too (the encoder, so the latent space, stays as it is)
[ -f runs/nvs-train/train-00003.tar ] || $PY -m train.data.nvs --out runs/nvs-train --objects 400 --per-shard 100 --workers 2
[ -f runs/vae-tiny-decoder/metrics.json ] || OMP_NUM_THREADS=2 $PY -m train.training.autoencoder --init runs/vae-tiny \
    --decoder-only --warm-steps 0 --steps 1000 --lr 5e-4 --data synth:train,procedure:train,runs/nvs-train \
    --eval-data synth:heldout,procedure:heldout,nvs:heldout --out runs/vae-tiny-decoder

common=(--vae runs/vae-tiny-decoder --steps 1200 --lr 4e-4 --warmup 100 --batch-sets 8 --min-k 2 --max-k 6 --workers 0
        --log-every 10 --val-every 50 --checkpoint-every 100 --sample-every 250 --max-minutes "$MINUTES" --export-fp16
        --mixed-precision "$PRECISION")
$PY -m train.training.m2m --variant self --out runs/m2m-self-tiny "${common[@]}" > runs/m2m-self-tiny.log 2>&1 &
$PY -m train.training.m2m --variant dino --image-encoder runs/dino-tiny --out runs/m2m-dino-tiny "${common[@]}" \
    > runs/m2m-dino-tiny.log 2>&1 &
wait

for v in self dino; do
    rm -rf "checkpoints/m2m-$v-tiny" && cp -r "runs/m2m-$v-tiny/pipeline" "checkpoints/m2m-$v-tiny"
done
du -sh checkpoints/*
