#!/usr/bin/env bash
# The GPU check: inference frames/s, DTKD step with and without the teacher cache, exact resume under bf16,
# torchrun against one process; one CSV ($OUT/gpu_check.csv when OUT is set, else bench/results/).
#   bash bench/gpu_check.sh                 # on a GPU, about 5 minutes
#   bash bench/gpu_check.sh --device cpu    # tiny sizes and counts: seconds (the CI test)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python bench/gpu_check.py "$@"
