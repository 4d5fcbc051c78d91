#!/usr/bin/env bash
# The README's main command: the Gradio demo on the bundled defaults (checkpoints/default for the
# speech LM, checkpoints/codec/* for the codec lab), bound to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m slm demo "$@"
