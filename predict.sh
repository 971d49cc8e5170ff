#!/bin/sh
# Segment every CT in the inputs folder into the outputs folder (FLARE22 container contract).
# Usage: predict.sh [INPUTS [OUTPUTS [python -m inference options...]]]
# (defaults /workspace/inputs and /workspace/outputs; e.g. predict.sh in out --weights DIR)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
inputs=${1:-/workspace/inputs}
outputs=${2:-/workspace/outputs}
[ $# -ge 2 ] && shift 2 || shift $#
exec "${PYTHON:-python3}" -m inference -i "$inputs" -o "$outputs" "$@"
