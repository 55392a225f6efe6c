"""PPO and the policy-gradient family on vectorised gymnax environments, in JAX."""

import os as _os

# PITFALLS 17: XLA:CPU's concurrency-optimised scheduler can deadlock vmapped programs
# that contain a batched QR (orthogonal init) on a 2-core machine. Turning it off cost
# nothing measurable; it only has effect if set before the CPU backend starts.
_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
if "xla_cpu_enable_concurrency_optimized_scheduler" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

from ppo_jax.config import HParams, PPOConfig, preset, stack_hparams  # noqa: E402
from ppo_jax.train import TrainOutput, TrainState, make_train  # noqa: E402

__all__ = ["PPOConfig", "HParams", "preset", "stack_hparams", "make_train", "TrainOutput", "TrainState"]
__version__ = "0.1.0"
