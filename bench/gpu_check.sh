#!/usr/bin/env bash
# The GPU measurement of the scale benchmark, in one step, for a machine with one NVIDIA GPU:
#   1. bench/features.py --use-gpu: the backbone's throughput on Ray Data against the
#      forward ceiling, on all HiRISE files;
#   2. bench/scale.py with every job on the GPU (--set scaling.use_gpu=true) at 7,500 and
#      75,000 rows: the same table as on CPUs, plus each stage's mean GPU utilisation.
# Needs `make venv` on the machine (the pinned torch brings its CUDA libraries) and
# ../shared/data/hirise-map-proj-v3 beside the repository. SIZES="7500 25000" for a
# shorter run. Never part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" bench/features.py --use-gpu --limit 0 --batch-size 256 --repeats 1
# shellcheck disable=SC2086
"$PY" bench/scale.py --sizes ${SIZES:-7500 75000} --jobs dec dac desom --gpu --set scaling.use_gpu=true
