"""RLHF update rules by name, one signature, as ``ppo_jax.algorithms.UPDATES`` does for the
classic algorithms.

``UPDATES[config.algo](config, policy, critic, policy_tx, critic_tx, prompt_len=P)`` builds a
rule ``rule(state, gen, score, key, out, logp, ref_logp) -> (models, kl_tok, metrics)``: from
one batch of sampled responses (``gen``, their scores, the policy's forward pass ``out`` and the
policy's and reference's tempered log-probs of the response tokens, ``[B, N]``) it returns the
four model states ``(policy_params, critic_params, policy_opt, critic_opt)``, the per-token KL
estimate ``[B, N]`` and the rule's own metrics. ``critic`` is None when the values come from a
head on the policy (PPO's ``policy-head``) or when the rule has no critic (GRPO, RLOO).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppo_jax import losses
from rlhf_jax.group_advantages import group_advantages, to_tokens
from rlhf_jax.ppo import (
    GroupBatch,
    TokenBatch,
    kl_penalty,
    make_group_update,
    make_ppo_update,
    per_token_rewards,
    token_advantages,
    whiten,
)
from rlhf_jax.transformer import response_positions


def critic_rule(config, policy, critic, policy_tx, critic_tx, *, prompt_len: int):
    """PPO: per-token rewards (docs/theory.md §11), token-level GAE on the critic's values (or
    the policy's value head), the clipped update of both models."""
    update = make_ppo_update(policy, critic, policy_tx, critic_tx, prompt_len=prompt_len, epochs=config.epochs,
                             minibatches=config.minibatches, temperature=config.temperature)

    def rule(state, gen, score, key, out, logp, ref_logp):
        seq, am, mask = gen.sequences, gen.attention_mask, gen.response_mask
        scalar = out.scalar if critic is None else critic.apply({"params": state.critic_params}, seq, am).scalar
        values = response_positions(scalar, prompt_len) * mask.astype(jnp.float32)
        rewards, kl_tok = per_token_rewards(score, logp, ref_logp, mask, state.kl_coef, config.kl_estimator)
        adv, returns = token_advantages(rewards, values, mask, config.gamma, config.gae_lambda)
        if config.whiten_advantages:
            adv = whiten(adv, mask)
        batch = TokenBatch(seq, am, mask, logp, values, adv, returns)
        *models, m = update(state.policy_params, state.critic_params, state.policy_opt, state.critic_opt, batch,
                            key, config.clip_eps, config.value_clip_eps, config.ent_coef, config.vf_coef)
        own = {"non_score_reward": (-state.kl_coef * kl_tok).sum(axis=1).mean(),
               "explained_variance": losses.explained_variance(values, returns, mask),
               "value_mean": losses.masked_mean(values, mask), **m}
        return models, kl_tok, own

    return rule


def soft_overlong_penalty(lengths: jax.Array, max_length: int, buffer: int) -> jax.Array:
    """DAPO's soft over-length penalty (Yu et al., arXiv:2503.14476, eq. 13), ``[B]`` in
    ``[-1, 0]``: 0 up to ``max_length - buffer`` tokens, then falling linearly to -1 at
    ``max_length`` (responses are cut there, so never beyond). ``buffer`` 0: no penalty."""
    if buffer <= 0:
        return jnp.zeros_like(lengths, jnp.float32)
    return jnp.clip((max_length - buffer - lengths.astype(jnp.float32)) / buffer, -1.0, 0.0)


def group_rule(config, policy, critic, policy_tx, critic_tx, *, prompt_len: int):
    """GRPO and RLOO (docs/theory.md §12) with the GRPO family's options (clip-higher,
    sequence-level ratios, CISPO, the soft over-length penalty): each group's advantages on its
    responses' tokens, the clipped update of the policy alone (``critic`` and ``critic_tx``
    are not used)."""
    update = make_group_update(policy, policy_tx, prompt_len=prompt_len, epochs=config.epochs,
                               minibatches=config.minibatches, temperature=config.temperature,
                               aggregation=config.loss_aggregation, ratio_level=config.ratio_level,
                               surrogate=config.surrogate)
    rloo = config.algo == "rloo"
    estimator = "rloo" if rloo else ("grpo" if config.scale_advantages else "grpo-unscaled")

    def rule(state, gen, score, key, out, logp, ref_logp):
        mask = gen.response_mask
        kl_tok = kl_penalty(logp, ref_logp, config.kl_estimator) * mask.astype(jnp.float32)
        overlong = config.overlong_penalty * soft_overlong_penalty(mask.sum(axis=1), mask.shape[1],
                                                                   config.overlong_buffer)
        # RLOO puts the KL in each response's reward; GRPO keeps it out, as a loss term.
        reward = score + overlong - (state.kl_coef * kl_tok.sum(axis=1) if rloo else 0.0)
        adv = group_advantages(reward, config.group_size, estimator)
        batch = GroupBatch(gen.sequences, gen.attention_mask, mask, logp, ref_logp, to_tokens(adv, mask))
        kl_loss_coef = 0.0 if rloo else state.kl_coef
        pp, po, m = update(state.policy_params, state.policy_opt, batch, key, config.clip_eps, config.ent_coef,
                           kl_loss_coef, config.clip_eps_high)
        groups = reward.reshape(-1, config.group_size)
        own = {"non_score_reward": (reward - score).mean(),
               "reward_std_within_groups": jnp.std(groups, axis=1).mean(),
               "zero_advantage_groups": jnp.mean(jnp.all(groups == groups[:, :1], axis=1)), **m}
        if config.overlong_buffer:
            own["overlong_penalty"] = overlong.mean()
        return (pp, state.critic_params, po, state.critic_opt), kl_tok, own

    return rule


UPDATES = {"ppo": critic_rule, "grpo": group_rule, "rloo": group_rule}
