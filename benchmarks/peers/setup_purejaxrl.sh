#!/usr/bin/env bash
# The PureJaxRL peer of benchmarks/ppo_vs_purejaxrl.py: its source and its interpreter.
#   PEERS=~/peers bash benchmarks/peers/setup_purejaxrl.sh
# PureJaxRL needs gymnax 0.0.9 (a five-value env.step); the JAX versions are this project's
# lower bounds, so both sides compile with the same XLA.
set -euo pipefail
PEERS=${PEERS:-$HOME/peers}
mkdir -p "$PEERS"
[ -d "$PEERS/purejaxrl/purejaxrl" ] || git clone --depth 1 https://github.com/luchris429/purejaxrl "$PEERS/purejaxrl"
python3 -m venv "$PEERS/venv_purejaxrl"
# Brax (with the MuJoCo it was tried with) for ppo_continuous_action.py: --variant continuous.
"$PEERS/venv_purejaxrl/bin/pip" install -q jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 optax==0.2.8 distrax chex \
    gymnax==0.0.9 brax==0.14.2 mujoco==4.0.1 mujoco-mjx==3.17.0
echo "peer python: $PEERS/venv_purejaxrl/bin/python   peer source: $PEERS/purejaxrl"
