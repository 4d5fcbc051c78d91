#!/usr/bin/env bash
# The README's main command. Runs the best end-to-end job that exists on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
if $PY -c "import demos.app" 2>/dev/null; then
  exec $PY -m slm.cli demo "$@"
fi
echo "[demo] the Gradio demo has not landed yet; building a small synthetic corpus instead (see README)."
exec $PY -m slm.cli data synth --hours 0.05 --out data/demo-corpus
