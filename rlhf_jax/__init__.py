"""RLHF on Flax transformers: tokenizer, transformer with KV cache, sampling, SFT, reward
models, DPO and RL (PPO, GRPO, RLOO and the GRPO family's options) against a reward model, a
task's gold reward or your Python reward functions (``rlhf_jax.rl``).

Importing it changes no global state (see :func:`ppo_jax.configure`)."""
