#!/usr/bin/env bash
# The whole benchmark set on a CUDA device in one go (issue 17). Run from the repository root on a machine with a
# GPU, after `pip install -e ".[dev]"` with a CUDA build of torch:
#
#     bash benchmarks/gpu.sh            # cuda:0; results in benchmarks/results/cuda/
#     DEVICE=cuda:1 bash benchmarks/gpu.sh
#
# The GPU path is CUDA + bf16 autocast + channels_last + compile (FEATVIS_FAST=bf16,compile); floor.py measures it
# against eager fp32 and the exact (folded, channels-last) default side by side, with the accuracy cost of bf16.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
PY="${PY:-python}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script needs a GPU')"
mkdir -p benchmarks/results/cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee benchmarks/results/cuda/gpu.txt
# the floor: every candidate, batch 1/8/32 and 128/224 px, and batch 64/128 where a GPU shines
"$PY" benchmarks/floor.py --device "$DEVICE" --table-batches 1 8 32 128 --batches 32 128
# end to end before/after the fast path, and with the GPU path switched on
"$PY" benchmarks/fast_e2e.py --device "$DEVICE" --tasks saliency ig32 pgd10 lucid200 \
  --configs before after bf16 bf16,compile
# the per-method cost ratios and the attack/optvis steps, on the device
for script in attribution.py attack_step.py optvis.py fooling.py; do
  "$PY" benchmarks/on_device.py "$DEVICE" "benchmarks/$script"
done
echo "results: benchmarks/results/cuda/"
