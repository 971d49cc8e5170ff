#!/bin/sh
# Segment every CT in the inputs folder into the outputs folder (FLARE22 container contract).
# Usage: predict.sh [INPUTS] [OUTPUTS]   (defaults /workspace/inputs and /workspace/outputs)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m inference -i "${1:-/workspace/inputs}" -o "${2:-/workspace/outputs}"
