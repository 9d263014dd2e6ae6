#!/usr/bin/env bash
# One short GPU check (see benchmarks/gpu_check.py): prints one table. No downloads, no installs: it runs with the
# checkout's .venv when there is one (uv sync --frozen), else $PYTHON, else python3.
#   benchmarks/gpu_check.sh                 # CUDA machine, under 5 minutes
#   benchmarks/gpu_check.sh --cpu-smoke     # the same code paths on the CPU, tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  py=.venv/bin/python
else
  py=python3
fi
export LIPSYNC_OFFLINE=1  # fakes only: a missing file is an error, never a download
exec "$py" benchmarks/gpu_check.py "$@"
