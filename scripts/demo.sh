#!/usr/bin/env bash
# The README's main command: the Gradio demo on the bundled defaults (checkpoints/default for the
# speech LM, checkpoints/codec/* for the codec lab), bound to 127.0.0.1. It decodes with int8 backbone
# weights: the 25 Hz bundle runs TTS at RTF ~0.38 that way on 2 CPU threads, ~0.8 in fp32 (README "TTS speed
# on CPU"); `.venv/bin/slm demo` without --int8 is the fp32 path.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m slm demo --int8 "$@"
