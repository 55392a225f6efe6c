"""RLHF-PPO math on response tokens (docs/theory.md §11), reusing ppo_jax.

The token MDP: the state is ``[x; y_<t]``, the action the token ``y_t``.
Everything here takes ``[B, N]`` arrays over the N response positions with a response mask
(1 on sampled tokens up to and including EOS), so prompt tokens never enter a sum and
padding after EOS gets no reward, value or advantage. GAE is
``ppo_jax.gae.gae`` and the losses are ``ppo_jax.losses`` with masks: no second copy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ppo_jax import gae as gae_lib
from ppo_jax import losses
from ppo_jax.minibatches import minibatch_epochs
from ppo_jax.optim import gradient_step
from rlhf_jax import lora
from rlhf_jax.reward_model import last_token_index
from rlhf_jax.transformer import response_logits, response_positions, token_log_probs, token_policy


def response_log_probs(model, params, sequences: jax.Array, attention_mask: jax.Array, prompt_len: int,
                       temperature: float = 1.0) -> jax.Array:
    """``log pi(y_t | x, y_<t)`` of each response token, from the logits one position earlier
    (the shift by one), with the sampling temperature applied (as when sampling). ``[B, N]``."""
    _, logits = response_logits(model, params, sequences, attention_mask, prompt_len)
    return token_log_probs(logits, sequences[:, prompt_len:], temperature)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k1") -> jax.Array:
    """Per-token estimate of ``KL(pi || pi_ref)`` from a token sampled from ``pi``.

    ``k1 = log pi - log pi_ref`` (docs/theory.md §8; unbiased, can be negative) or
    ``k3 = (rho - 1) - log rho`` with ``rho = pi_ref / pi`` (unbiased, never negative).
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        log_rho = ref_logp - logp
        return jnp.expm1(log_rho) - log_rho
    raise ValueError(f"kl_estimator: must be 'k1' or 'k3', got {estimator!r}")


def per_token_rewards(score: jax.Array, logp: jax.Array, ref_logp: jax.Array, response_mask: jax.Array,
                      beta: float | jax.Array, estimator: str = "k1") -> tuple[jax.Array, jax.Array]:
    """Eq. (54): ``r_t = -beta kl_t`` on every response token, plus the score on the last one.

    The score lands on the last real response token (EOS when there is one), never on
    padding, and only once; a row with no response token gets nothing.
    Returns ``(rewards, kl)``, both ``[B, N]`` and 0 outside the mask.
    """
    mask = response_mask.astype(jnp.float32)
    kl = kl_penalty(logp, ref_logp, estimator) * mask
    n = response_mask.shape[1]
    has_tokens = mask.sum(axis=1) > 0
    last = jax.nn.one_hot(last_token_index(response_mask), n) * has_tokens[:, None]
    return -beta * kl + last * score[:, None], kl


def adaptive_kl_beta(beta: float | jax.Array, kl: float | jax.Array, target: float, horizon: float,
                     num_samples: int) -> jax.Array:
    """The adaptive KL controller of Ziegler et al. (2019).

    ``beta <- beta * (1 + clip(kl / target - 1, -0.2, 0.2) * num_samples / horizon)``, with
    ``kl`` the mean *summed* KL per sequence in nats (not a per-token mean), so beta rises when the
    policy drifts past ``target`` and falls when it stays closer.
    """
    error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
    return beta * (1.0 + error * num_samples / horizon)


def token_advantages(rewards: jax.Array, values: jax.Array, response_mask: jax.Array, gamma: float | jax.Array = 1.0,
                     lam: float | jax.Array = 0.95) -> tuple[jax.Array, jax.Array]:
    """Token-level GAE over each response through ``ppo_jax.gae.gae``; returns ``(advantages, returns)``.

    The episode terminates at the last real response token (bootstrap 0) and positions
    after it carry nothing; values there are ignored. Both outputs are 0 outside the mask.
    """
    mask = response_mask.astype(jnp.float32)
    values = values * mask
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    # Terminated at the last real token and everywhere after it: nothing flows back from padding.
    n = mask.shape[1]
    ended = jnp.arange(n)[None, :] >= last_token_index(response_mask)[:, None]
    tm = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731  (gae is time-major)
    adv = tm(gae_lib.gae(tm(rewards * mask), tm(values), tm(next_values), tm(ended), tm(jnp.zeros_like(ended)),
                         gamma, lam)) * mask
    return adv, (adv + values) * mask


def exact_kl(logits: jax.Array, ref_logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``KL(pi || pi_ref)`` summed over the vocabulary at each position (float32), ``[..., ]``."""
    return token_policy(logits, temperature).kl(token_policy(ref_logits, temperature))


def sequence_kl(policy, policy_params, reference, ref_params, sequences: jax.Array, attention_mask: jax.Array,
                response_mask: jax.Array, prompt_len: int, temperature: float = 1.0) -> jax.Array:
    """Exact ``KL(pi || pi_ref)`` per sequence (nats): :func:`exact_kl` at each response position
    of sampled ``sequences``, summed over the response. ``[B]``."""
    _, logits = response_logits(policy, policy_params, sequences, attention_mask, prompt_len)
    _, ref = response_logits(reference, ref_params, sequences, attention_mask, prompt_len)
    return (exact_kl(logits, ref, temperature) * response_mask).sum(axis=1)


# --- The PPO update on a batch of sampled responses (docs/theory.md §11) -----------------------------



@struct.dataclass
class TokenBatch:
    """One iteration's data, rows = sequences: ``sequences``/``attention_mask`` ``[B, P+N]``,
    and over the N response positions: mask, old and reference log-probs, old values,
    advantages and returns ``[B, N]``."""

    sequences: jax.Array
    attention_mask: jax.Array
    response_mask: jax.Array
    old_logp: jax.Array
    old_values: jax.Array
    advantages: jax.Array
    returns: jax.Array


def response_values(critic, critic_params, sequences: jax.Array, attention_mask: jax.Array, prompt_len: int) -> jax.Array:
    """``V(s_t)`` for each response position: the critic's scalar on the last token of ``[x; y_<t]``,
    i.e. at position ``t - 1`` (the same shift as the log-probs). ``[B, N]``."""
    return response_positions(critic.apply({"params": critic_params}, sequences, attention_mask).scalar, prompt_len)


RATIO_LEVELS = ("token", "sequence")
SURROGATES = ("clip", "cispo")


def sequence_ratio(logp: jax.Array, old_logp: jax.Array, response_mask: jax.Array) -> jax.Array:
    """GSPO's importance ratio (Zheng et al., arXiv:2507.18071): per sequence, the geometric
    mean of its token ratios, ``exp(mean_t (log pi - log pi_old))`` over its response tokens,
    on every token ``[B, N]``. Its gradient is the ratio times the mean of the token
    log-prob gradients, so one long response does not weigh more than a short one."""
    m = response_mask.astype(jnp.float32)
    log_s = ((logp - old_logp) * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)
    return jnp.broadcast_to(jnp.exp(log_s)[:, None], logp.shape)


def cispo_loss(ratio: jax.Array, logp: jax.Array, advantages: jax.Array, clip_eps_high, weights) -> jax.Array:
    """CISPO (MiniMax-M1, arXiv:2506.13585): REINFORCE on every token with the importance
    weight clipped from above and its gradient stopped, ``-mean(sg(min(r, 1 + eps_high)) A
    log pi)``: unlike PPO's clip, no token's gradient is dropped, only down-weighted."""
    w = jax.lax.stop_gradient(jnp.minimum(ratio, 1.0 + clip_eps_high))
    return -losses.masked_mean(w * advantages * logp, weights)


def clipped_policy_terms(logits: jax.Array, mb, prompt_len: int, temperature: float, clip_eps, ent_coef,
                         weights: jax.Array, *, clip_eps_high=None, ratio_level: str = "token",
                         surrogate: str = "clip") -> tuple[jax.Array, dict, jax.Array]:
    """The clipped surrogate (``ppo_jax.losses``) minus the entropy bonus over the response
    tokens of ``mb`` (``sequences``, ``response_mask``, ``old_logp``, ``advantages``), from the
    ``logits [B, N, V]`` at the positions that predict them (:func:`response_logits`), each
    token weighted by ``weights`` ``[B, N]`` (the response mask: a token mean), with
    scalar diagnostics. Returns ``(loss, aux, logp)``, ``logp`` the tokens' new log-probs.

    The GRPO family's options (docs/theory.md §12): ``clip_eps_high`` the upper clip apart
    from the lower (DAPO); ``ratio_level="sequence"`` one ratio per response
    (:func:`sequence_ratio`, GSPO); ``surrogate="cispo"`` (:func:`cispo_loss`)."""
    dist = token_policy(logits, temperature)
    logp = dist.log_prob(mb.sequences[:, prompt_len:])
    ratio = (sequence_ratio(logp, mb.old_logp, mb.response_mask) if ratio_level == "sequence"
             else losses.importance_ratio(logp, mb.old_logp))
    entropy = dist.entropy()
    if surrogate == "cispo":
        high = clip_eps if clip_eps_high is None else clip_eps_high
        policy_loss = cispo_loss(ratio, logp, mb.advantages, high, weights)
        clipped = losses.masked_mean((ratio > 1.0 + high).astype(jnp.float32), mb.response_mask)
    else:
        policy_loss = losses.clipped_surrogate_loss(ratio, mb.advantages, clip_eps, weights, clip_eps_high)
        clipped = losses.clip_fraction(ratio, clip_eps, mb.response_mask, clip_eps_high)
    loss = policy_loss - ent_coef * losses.entropy_bonus(entropy, weights)
    live = mb.response_mask.astype(bool)
    aux = {"policy_loss": loss, "approx_kl": losses.approx_kl_k3(logp, mb.old_logp, mb.response_mask),
           "clip_fraction": clipped, "entropy": losses.entropy_bonus(entropy, mb.response_mask),
           "max_ratio_deviation": jnp.max(jnp.where(live, jnp.abs(ratio - 1.0), 0.0))}
    return loss, aux, logp


def make_ppo_update(policy, critic, policy_tx: optax.GradientTransformation, critic_tx: optax.GradientTransformation,
                    *, prompt_len: int, epochs: int, minibatches: int, temperature: float = 1.0):
    """Jitted ``update(policy_params, critic_params, policy_opt, critic_opt, batch, key, clip_eps,
    value_clip_eps, ent_coef, vf_coef=0.5) -> (policy_params, critic_params, policy_opt, critic_opt, metrics)``.

    ``epochs x minibatches`` over the sequences of ``batch`` with a fresh permutation each
    epoch. The policy loss is ``ppo_jax.losses.clipped_surrogate_loss`` minus the entropy
    bonus, the value loss ``ppo_jax.losses.value_loss`` (clipped when ``value_clip_eps > 0``),
    both token means over the response mask (every real token weighs the same, so long
    responses weigh more). Dropout is off throughout (it would make the first ratio differ from 1).

    With ``critic=None`` the values come from the policy's own scalar head: one optimiser
    (``policy_tx``) on ``policy_loss + vf_coef * value_loss``, and ``critic_params`` /
    ``critic_opt`` pass through untouched (``vf_coef`` is unused with a separate critic).
    """
    shared = critic is None

    def policy_terms(logits, mb: TokenBatch, clip_eps, ent_coef):
        return clipped_policy_terms(logits, mb, prompt_len, temperature, clip_eps, ent_coef, mb.response_mask)[:2]

    def value_term(scalar, mb: TokenBatch, value_clip_eps):
        values = response_positions(scalar, prompt_len)  # V(s_t) from position t - 1, as in response_values
        return losses.value_loss(values, mb.returns, mb.old_values, value_clip_eps, mb.response_mask)

    def policy_loss(params, mb, clip_eps, ent_coef):
        return policy_terms(response_logits(policy, params, mb.sequences, mb.attention_mask, prompt_len)[1], mb,
                            clip_eps, ent_coef)

    def value_loss(params, mb, value_clip_eps):
        return value_term(critic.apply({"params": params}, mb.sequences, mb.attention_mask).scalar, mb,
                          value_clip_eps)

    def joint_loss(params, mb, clip_eps, value_clip_eps, ent_coef, vf_coef):
        out, logits = response_logits(policy, params, mb.sequences, mb.attention_mask, prompt_len)
        loss, aux = policy_terms(logits, mb, clip_eps, ent_coef)
        vl = value_term(out.scalar, mb, value_clip_eps)
        return loss + vf_coef * vl, {**aux, "value_loss": vl}

    part = lora.partition(policy.lora)
    value_step = gradient_step(value_loss, critic_tx)

    @jax.jit
    def update(policy_params, critic_params, policy_opt, critic_opt, batch: TokenBatch, key, clip_eps,
               value_clip_eps, ent_coef, vf_coef=0.5):
        # With LoRA the adapters (and a value head) train alone; the frozen weights stay out of
        # the loop's carry, so they pass through the update without a copy.
        policy_params, frozen = part.split(policy_params)
        joint_step = gradient_step(lambda p, *a: joint_loss(part.join(p, frozen), *a), policy_tx, has_aux=True)
        policy_step = gradient_step(lambda p, *a: policy_loss(part.join(p, frozen), *a), policy_tx, has_aux=True)

        def minibatch(carry, mb):
            pp, cp, po, co = carry
            if shared:
                pp, po, _, aux = joint_step(pp, po, mb, clip_eps, value_clip_eps, ent_coef, vf_coef)
                return (pp, cp, po, co), aux
            pp, po, _, aux = policy_step(pp, po, mb, clip_eps, ent_coef)
            cp, co, vl, _ = value_step(cp, co, mb, value_clip_eps)
            return (pp, cp, po, co), {**aux, "value_loss": vl}

        (pp, *rest), aux = minibatch_epochs(minibatch, (policy_params, critic_params, policy_opt, critic_opt), batch,
                                            key, epochs=epochs, minibatches=minibatches)
        metrics = {k: v.mean() for k, v in aux.items() if k != "max_ratio_deviation"}
        metrics["first_minibatch_ratio_deviation"] = aux["max_ratio_deviation"][0, 0]
        metrics["first_minibatch_approx_kl"] = aux["approx_kl"][0, 0]
        return (part.join(pp, frozen), *rest, metrics)

    return update


def whiten(advantages: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked advantage whitening: ``ppo_jax.losses.normalize_advantages`` over real tokens
    (padding would shift the mean and variance)."""
    return losses.normalize_advantages(advantages, mask=mask)


# --- The critic-free update of GRPO and RLOO ----------------------------------------------------

AGGREGATIONS = ("token-mean", "sequence-mean")


@struct.dataclass
class GroupBatch:
    """One critic-free iteration's data, rows = sequences (``G`` per prompt, contiguous):
    ``sequences``/``attention_mask`` ``[B, P+N]``, and over the N response positions: mask,
    old and reference log-probs, and the advantages (each response's group advantage on
    every one of its tokens)."""

    sequences: jax.Array
    attention_mask: jax.Array
    response_mask: jax.Array
    old_logp: jax.Array
    ref_logp: jax.Array
    advantages: jax.Array


def loss_weights(response_mask: jax.Array, aggregation: str) -> jax.Array:
    """Per-token weights of a masked mean: ``token-mean`` weighs every real token of the
    minibatch the same (a long response counts more, as in DAPO and Dr. GRPO);
    ``sequence-mean`` weighs every response the same, its tokens ``1 / length`` each (the
    original GRPO), which favours short correct answers and long wrong ones."""
    m = response_mask.astype(jnp.float32)
    if aggregation == "token-mean":
        return m
    if aggregation == "sequence-mean":
        return m / jnp.maximum(m.sum(axis=1, keepdims=True), 1.0)
    raise ValueError(f"loss_aggregation: must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


def make_group_update(policy, policy_tx: optax.GradientTransformation, *, prompt_len: int, epochs: int,
                      minibatches: int, temperature: float = 1.0, aggregation: str = "token-mean",
                      ratio_level: str = "token", surrogate: str = "clip"):
    """Jitted ``update(policy_params, policy_opt, batch, key, clip_eps, ent_coef, kl_coef,
    clip_eps_high=None) -> (policy_params, policy_opt, metrics)`` for :class:`GroupBatch`:
    ``epochs x minibatches`` of the clipped surrogate (:func:`clipped_policy_terms`, with the
    GRPO family's options) on the group advantages, plus ``kl_coef`` times the k3 estimate of
    ``KL(pi || pi_ref)`` on the sampled tokens as a loss term (GRPO; pass 0 when the KL is in
    the reward, as RLOO does). No critic."""
    loss_weights(jnp.zeros((1, 1)), aggregation)  # a bad name fails here, not inside the trace
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level: must be one of {', '.join(RATIO_LEVELS)}, got {ratio_level!r}")
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate: must be one of {', '.join(SURROGATES)}, got {surrogate!r}")

    def loss(params, mb: GroupBatch, clip_eps, ent_coef, kl_coef, clip_eps_high):
        _, logits = response_logits(policy, params, mb.sequences, mb.attention_mask, prompt_len)
        weights = loss_weights(mb.response_mask, aggregation)
        policy_loss, aux, logp = clipped_policy_terms(logits, mb, prompt_len, temperature, clip_eps, ent_coef,
                                                      weights, clip_eps_high=clip_eps_high, ratio_level=ratio_level,
                                                      surrogate=surrogate)
        kl = losses.masked_mean(kl_penalty(logp, mb.ref_logp, "k3"), weights)
        return policy_loss + kl_coef * kl, {**aux, "kl_loss": kl}

    part = lora.partition(policy.lora)

    @jax.jit
    def update(policy_params, policy_opt, batch: GroupBatch, key, clip_eps, ent_coef, kl_coef, clip_eps_high=None):
        # With LoRA the adapters train alone; the frozen weights stay out of the loop's carry.
        policy_params, frozen = part.split(policy_params)
        step = gradient_step(lambda p, *a: loss(part.join(p, frozen), *a), policy_tx, has_aux=True)

        def minibatch(carry, mb):
            params, opt, _, aux = step(*carry, mb, clip_eps, ent_coef, kl_coef, clip_eps_high)
            return (params, opt), aux

        (params, opt), aux = minibatch_epochs(minibatch, (policy_params, policy_opt), batch, key, epochs=epochs,
                                              minibatches=minibatches)
        metrics = {k: v.mean() for k, v in aux.items() if k != "max_ratio_deviation"}
        metrics["first_minibatch_ratio_deviation"] = aux["max_ratio_deviation"][0, 0]
        metrics["first_minibatch_approx_kl"] = aux["approx_kl"][0, 0]
        return part.join(params, frozen), opt, metrics

    return update
