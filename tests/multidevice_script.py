"""Run by tests/ppo_jax/test_distributed.py in a subprocess with 4 CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``): sharded runs against the
single-device runs of the same seeds. Prints one JSON line of measurements."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ppo_jax.config import preset
from ppo_jax.distributed import choose_layout
from ppo_jax.runner import run_resumable, seed_keys
from ppo_jax.train import make_train

# The config the two-process test trains (2 seeds); the reference is computed here.
TWO_PROCESS = preset("CartPole-v1").replace(num_envs=4, num_steps=16, total_timesteps=512, update_epochs=1,
                                            num_minibatches=2, hidden_sizes=(16,))


def max_diff(a, b):
    return max(float(np.nanmax(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def sharded_fraction(x) -> float:
    """Share of an array one device holds."""
    return x.addressable_shards[0].data.size / x.size


def ppo(out: dict) -> None:
    assert len(jax.devices()) == 4, jax.devices()
    config = TWO_PROCESS
    try:
        choose_layout(3, 4, devices=4)
    except ValueError as err:
        out["layout_error"] = str(err)
    # One single-device run of 4 seeds is the reference of both layouts (the envs layout runs seed 0).
    reference = jax.jit(jax.vmap(make_train(config)))(seed_keys(0, 4))
    for name, num_seeds in (("seeds", 4), ("envs", 1)):
        layout = choose_layout(num_seeds, config.num_envs)
        result = run_resumable(config, num_seeds=num_seeds, seed=0, layout=layout)
        ref = jax.tree.map(lambda x: x[:num_seeds], reference)
        leaf = jax.tree.leaves(result.state.env_state.env_state)[0]
        out[f"ppo_{name}"] = {
            "layout": layout.describe(),
            "metrics_diff": max_diff({k: ref.metrics[k] for k in result.metrics}, result.metrics),
            "params_diff": max_diff(ref.state.params, result.state.params),
            "env_state_devices": len(leaf.sharding.device_set),
            "env_state_fraction": sharded_fraction(leaf),
        }
        if name == "seeds":
            out["two_process_reference"] = {k: np.asarray(v)[:2].tolist() for k, v in ref.metrics.items()
                                            if k in ("total_loss", "policy_loss", "value_loss")}


def rlhf(out: dict) -> None:
    from rlhf_jax.ppo_trainer import RLHFConfig, init_state, make_programs
    from rlhf_jax.reward_model import reward_model
    from rlhf_jax.sharding import put_batch, put_params
    from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

    tiny = TransformerConfig(vocab_size=24, max_len=24, num_layers=1, num_heads=2, d_model=32, dropout=0.0)
    sft = init_params(TransformerLM(tiny), jax.random.PRNGKey(0))
    rm_params = init_params(reward_model(tiny), jax.random.PRNGKey(1))
    ids = jax.random.randint(jax.random.PRNGKey(2), (8, 5), 3, 24)
    mask = (jnp.arange(5)[None, :] >= jnp.arange(8)[:, None] % 3).astype(jnp.int32)
    ids = jnp.where(mask == 1, ids, 0)
    runs = {}
    # FSDP splits the batch too, so it is data parallel as well; plain data parallelism
    # (replicated parameters) is the same program with other placements.
    for name, devices, fsdp in (("single", 1, False), ("fsdp", 4, True)):
        config = RLHFConfig(batch_size=8, max_new_tokens=10, epochs=2, minibatches=2, lr=1e-3, devices=devices,
                            fsdp=fsdp)
        programs = make_programs(config, tiny, reward_model(tiny), prompt_len=5, max_new_tokens=10, eos_id=2,
                                 pad_id=0)
        state = init_state(config, programs, sft, rm_params)
        ref, rm = put_params((sft, rm_params), programs.mesh, fsdp)
        p_ids, p_mask = put_batch((ids, mask), programs.mesh)
        new, gen, metrics = programs.iteration(state, ref, rm, 0.0, 1.0, p_ids, p_mask, jax.random.PRNGKey(3))
        biggest = max(jax.tree.leaves(new.policy_params), key=lambda x: x.size)
        runs[name] = (new, gen, metrics)
        out[f"rlhf_{name}"] = {
            "metrics": {k: float(v) for k, v in metrics.items()},
            "param_fraction_before": sharded_fraction(max(jax.tree.leaves(state.policy_params), key=lambda x: x.size)),
            "param_fraction_after": sharded_fraction(biggest),
            "adam_fraction_after": sharded_fraction(max(jax.tree.leaves(new.policy_opt), key=lambda x: x.size)),
            "sequences_fraction": sharded_fraction(gen.sequences),
        }
    for name in ("fsdp",):
        out[f"rlhf_{name}"]["sequences_equal"] = bool(np.array_equal(runs[name][1].sequences,
                                                                     runs["single"][1].sequences))
        out[f"rlhf_{name}"]["params_diff"] = max_diff(runs[name][0].policy_params, runs["single"][0].policy_params)


if __name__ == "__main__":
    results: dict = {}
    {"ppo": ppo, "rlhf": rlhf}[sys.argv[1]](results)
    print("RESULT " + json.dumps(results))
