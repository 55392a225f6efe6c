#!/usr/bin/env bash
# The PyTorch peers of the RLHF benchmarks, CPU only (about 1.5 GB each):
#   VENV_ROOT=~/venvs bash benchmarks/peers/setup_trl.sh          # rlhf-trl: TRL 1.12 (the newest with PPO)
#   VENV_ROOT=~/venvs bash benchmarks/peers/setup_trl.sh latest   # rlhf-trl-latest: the newest TRL and PEFT
# torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA build, and TRL's
# own dependency on it is then already met by the CPU wheel.
set -euo pipefail
VENV_ROOT=${VENV_ROOT:-$HOME/venvs}
PY=${PYTHON:-python3}
mkdir -p "$VENV_ROOT"
if [ "${1:-}" = latest ]; then
  venv="$VENV_ROOT/rlhf-trl-latest"
  $PY -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q "trl==1.16.0" "peft==0.21.2" requests
else
  venv="$VENV_ROOT/rlhf-trl"
  $PY -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q "trl==1.12.0" "transformers==5.24.0" "accelerate==1.15.0" "datasets==5.2.0" requests
fi
"$venv/bin/python" -c "import torch, transformers, trl; print('$venv', torch.__version__, transformers.__version__, trl.__version__)"
