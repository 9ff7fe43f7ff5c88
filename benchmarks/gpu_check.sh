#!/usr/bin/env bash
# The prepared device check (see benchmarks/gpu_check.py): CUDA vs CPU, then the training
# benchmarks, into a JSON. Needs only torch and torchvision; installs nothing, no network.
#   bash benchmarks/gpu_check.sh [OUT.json] [gpu_check.py options, e.g. --device cpu]
# OUT.json defaults to $OUT/gpu_check.json when $OUT is set, else ./gpu_check.json.
# PYTHON picks the interpreter (default: python3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-${OUT:-.}/gpu_check.json}"
shift $(( $# > 0 ? 1 : 0 ))
# The package comes from this working tree (the device machine gets a copy, not an install).
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$root/benchmarks/gpu_check.py" --out "$out" "$@"
