"""RLHF on Flax transformers: tokenizer, transformer with KV cache, sampling, SFT, reward
models, DPO and RL (PPO, GRPO, RLOO) against a reward model or a task's gold reward.

Importing it changes no global state (see :func:`ppo_jax.configure`)."""
