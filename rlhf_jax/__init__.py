"""RLHF on Flax transformers: tokenizer, transformer with KV cache, sampling and SFT.

Importing ``ppo_jax`` first sets the XLA:CPU flag that avoids a known deadlock of vmapped programs.
"""

import ppo_jax  # noqa: F401  (sets XLA_FLAGS before JAX starts)
from ppo_jax.run import prng

prng.install()  # sampling draws a small random array per token: fuse its hash
