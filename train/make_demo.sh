#!/usr/bin/env bash
# Reproduces the demo model (train/README.md): the Python standard library's source as corpus, a 4096-token
# byte-level BPE, the `demo` preset trained with the same `python -m train` as phi-1.5, under 30 minutes on
# 2 CPU cores. The held-out split is whole modules. Writes data/stdlib/, runs/demo/ and train/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m train.data stdlib --out data/stdlib --vocab-size 4096 --heldout-fraction 0.05 --seed 0 --force
python -m train --preset demo --data data/stdlib/mixture.json --out runs/demo --resume \
  --seq-len 512 --global-batch 16 --micro-batch 8 --max-steps 400 --lr 1e-3 --warmup-steps 30 \
  --eval-every 100 --eval-tokens 200000 --save-every 100 --save-dtype fp16 --seed 1234
python -m train.demo_report runs/demo train/demo
