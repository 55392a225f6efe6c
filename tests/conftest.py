import os

# PITFALLS 17: set before JAX's CPU backend starts (ppo_jax sets it too, on import).
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=false")

import ppo_jax  # noqa: E402,F401
