"""``rlhf-jax rl``: reinforcement learning on your policy with your reward, into a run folder.

The policy is a Hugging Face folder or one of our checkpoints; the prompts a JSONL file (its
other fields go to the reward functions) or a built-in verifiable task (``arithmetic``); the
reward Python functions (:mod:`rlhf_jax.rewards`) or a reward model. The update is PPO,
GRPO or RLOO with the GRPO family's options (:class:`rlhf_jax.ppo_trainer.RLHFConfig`).

The run folder holds ``config.json``, periodic ``checkpoints/`` (``--resume`` continues from the
newest: the run ends as the uninterrupted one), ``metrics.json`` and ``curves.png`` (reward,
each function, KL, entropy and response length per iteration), ``before.json`` and
``final.json`` (the held-out evaluation of the starting and the final policy: greedy and
``eval_samples``-sample means of each reward and of the metric, KL to the starting policy),
``samples.json``, ``checkpoint/`` (the final policy), ``hf/`` (it as a Hugging Face folder that
transformers loads) and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from ppo_jax.run.checkpoints import RunCheckpoints
from ppo_jax.run.interrupt import Interrupted, resume_hint
from ppo_jax.run.outputs import plot_panels, write_json
from ppo_jax.run.progress import progress_bar
from ppo_jax.run.rundir import check_run_dir, open_run_dir, resumable_config
from ppo_jax.run.validation import DictConfig, require_finite
from rlhf_jax import checkpoint as ckpt
from rlhf_jax import lora
from rlhf_jax.compute_dtype import DTYPES
from rlhf_jax.data import load_prompt_rows, padded_chunks
from rlhf_jax.evaluation import PromptSource, decode_responses
from rlhf_jax.hf import load_pretrained, save_pretrained
from rlhf_jax.ppo_trainer import (
    RLHFConfig,
    frozen_params,
    init_state,
    make_programs,
    train_rlhf,
    with_value_head,
)
from rlhf_jax.rewards import RESERVED, RewardFunction, Rewards, load_function, reward_functions
from rlhf_jax.sampling import SamplingConfig, make_generate
from rlhf_jax.seeds import prompt_seed, stream_key
from rlhf_jax.stages import RUN_FORMAT, RUN_PAYLOAD
from rlhf_jax.tasks import arithmetic
from rlhf_jax.tokenizer import Tokenizer, has_tokenizers
from rlhf_jax.transformer import TransformerLM

COMMAND = "rlhf-jax rl"
RL_TASKS = {"arithmetic": arithmetic}
"""Built-in verifiable tasks: prompt rows with an ``answer``, training rewards and a held-out metric."""
POOL_SIZE = 4096


@dataclass(frozen=True)
class RLSource(DictConfig):
    """Where ``rlhf-jax rl`` gets its policy, prompts and reward (all recorded in config.json)."""

    model: str | None = None
    """The starting policy: a local Hugging Face folder (gpt2, llama, qwen2, mistral) or our
    checkpoint (a run folder of sft, dpo or rl, or its checkpoint/)."""
    prompts: str | None = None
    """JSONL prompt file: a string 'prompt' and any other fields (e.g. 'answer'), which the
    reward functions get as keyword lists; the last fifth (at most eval_prompts) is held out."""
    task: str | None = None
    """A built-in verifiable task instead of --prompts: 'arithmetic' (its rewards and metric are the defaults)."""
    reward: tuple[str, ...] = ()
    """Reward functions, module:function or path/to/file.py:function (repeat the flag)."""
    reward_weights: tuple[float, ...] = ()
    """One weight per reward function (default 1 each)."""
    reward_model: str | None = None
    """A reward model instead of functions: our rm run folder (or its checkpoint/), or a Hugging
    Face ...ForSequenceClassification folder with one label; it must share the policy's tokenizer."""
    metric: str | None = None
    """Held-out metric, a function with the reward contract (default: the task's; else none)."""
    eval_prompts: int = 256
    """Held-out prompts scored before and after training."""
    eval_samples: int = 4
    """Samples per held-out prompt for the mean@k metrics (besides the greedy response)."""
    checkpoint_every: int = 10
    """Iterations between periodic checkpoints (0: only at the end)."""
    compute_dtype: str | None = None
    """Matmul inputs of the policy: 'float32', 'bfloat16' or 'auto' (default: the model's own)."""

    def validate(self) -> None:
        require_finite(self)
        if (self.prompts is None) == (self.task is None):
            raise ValueError("prompts: give --prompts (a JSONL file) or --task (a built-in task)"
                             f"{', not both' if self.prompts else ''}")
        if self.task is not None and self.task not in RL_TASKS:
            raise ValueError(f"task: unknown task {self.task!r}; valid tasks: {', '.join(RL_TASKS)}")
        if self.reward and self.reward_model:
            raise ValueError("reward_model: give reward functions (--reward) or a reward model, not both")
        if not self.reward and not self.reward_model and self.task is None:
            raise ValueError("reward: give --reward module:function (or --reward-model) for your prompts")
        specs, _ = self.reward_specs()
        if self.reward_weights and len(self.reward_weights) != len(specs):
            raise ValueError(f"reward_weights: {len(self.reward_weights)} weights for {len(specs)} reward functions")
        for name in ("eval_prompts", "eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be a positive integer, got {getattr(self, name)}")
        if self.compute_dtype not in (None, *DTYPES):
            raise ValueError(f"compute_dtype: must be one of {', '.join(DTYPES)}, got {self.compute_dtype!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every: must be >= 0, got {self.checkpoint_every}")

    def _task_rewards(self) -> tuple[list[str], list[float]]:
        if self.task is None:
            return [], []
        specs = RL_TASKS[self.task].REWARDS
        return [s for s, _ in specs], [w for _, w in specs]

    def reward_specs(self) -> tuple[list[str], list[float] | None]:
        """The reward functions and weights: the flags', else the task's."""
        if self.reward:
            return list(self.reward), list(self.reward_weights) or None
        specs, weights = self._task_rewards()
        return specs, list(self.reward_weights) or weights

    def metric_spec(self) -> str | None:
        return self.metric or (RL_TASKS[self.task].METRIC if self.task else None)


def load_policy(path: str) -> tuple[TransformerLM, dict, Tokenizer]:
    """A Hugging Face folder (its config.json has a model_type) or our checkpoint."""
    return load_pretrained(path) if _is_hf(Path(path)) else ckpt.load(path)


def load_reward_model(path: str) -> tuple[TransformerLM, dict, dict]:
    """``(model, params, norm)``: an ``rlhf-jax rm`` run (or its checkpoint; ``norm`` the mean
    and std of its training rewards) or a Hugging Face ``...ForSequenceClassification`` folder
    with one label (``norm`` none: mean 0, std 1)."""
    folder = Path(path)
    if _is_hf(folder):
        model, params, _ = load_pretrained(path, lm_head=False, scalar_head=True)
        return model, params, {"mean": 0.0, "std": 1.0}
    model, params, _ = ckpt.load(path)
    if model.lm_head or not model.scalar_head:
        raise ValueError(f"reward_model: {path} is not a reward model's checkpoint (no scalar head)")
    extra = ckpt.load_extra(folder if (folder / "model.json").exists() else folder / "checkpoint")
    return model, params, extra.get("reward_norm", {"mean": 0.0, "std": 1.0})


def _is_hf(folder: Path) -> bool:
    """Whether ``folder`` is a Hugging Face model folder (its config.json names a model_type) or
    a PEFT adapter folder; our run folders have a config.json of another kind."""
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").exists():
        return True
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return True  # let the Hugging Face loader name what is wrong with it


def prompt_sets(source: RLSource, seed: int) -> tuple[list[dict], list[dict]]:
    """The training pool and the held-out rows: a file's last fifth (at most eval_prompts)
    held out; a task's from seed streams of their own, the held-out prompts kept out of the pool."""
    if source.task is not None:
        task = RL_TASKS[source.task]
        held = task.prompt_rows(source.eval_prompts, seed=prompt_seed(seed, "heldout"))
        seen = {r["prompt"] for r in held}
        pool = [r for r in task.prompt_rows(POOL_SIZE, seed=prompt_seed(seed, "rl_pool")) if r["prompt"] not in seen]
        return pool, held
    rows, where = load_prompt_rows(source.prompts)
    bad = [c for c in rows[0] if c in RESERVED]
    if bad:
        raise ValueError(f"{where[0]}: field {bad[0]!r} would clash with the reward functions' own "
                         f"{bad[0]!r} argument; rename it")
    if len(rows) < 2:
        raise ValueError(f"{source.prompts}: needs at least 2 prompts (one to train on, one held out)")
    held = min(source.eval_prompts, max(1, len(rows) // 5))
    return rows[:-held], rows[-held:]


def rows_scorer(rewards: Rewards, tokenizer: Tokenizer, rows: Sequence[dict], prompt_len: int) -> Callable:
    """``score(idx, gen) -> (total [B], metrics)`` for rows ``idx`` of ``rows`` and their sampled
    responses ``gen`` (the contract of :mod:`rlhf_jax.rewards`; ``metrics`` has ``reward`` and
    each function's ``reward/<name>``)."""
    columns = [c for c in rows[0] if c != "prompt"]

    def score(idx, gen):
        texts, _ = decode_responses(tokenizer, gen)
        response, mask = np.asarray(gen.response), np.asarray(gen.response_mask)
        ids = [[int(t) for t, m in zip(r, mk) if m] for r, mk in zip(response, mask)]  # EOS included, as TRL's
        batch = [rows[i] for i in idx]
        tokens = (gen.sequences[:, :prompt_len], gen.attention_mask[:, :prompt_len], gen.response,
                  gen.response_mask)
        total, metrics = rewards.score([r["prompt"] for r in batch], texts, ids,
                                       {c: [r[c] for r in batch] for c in columns}, tokens)
        return total, {"reward": float(total.mean()), **metrics}

    return score


@dataclass
class _Setup:
    """What training and evaluation share: the programs, prompt shapes, reference and scorers."""

    config: RLHFConfig
    programs: object
    source: PromptSource
    pool: list[dict]
    heldout: list[dict]
    tokenizer: Tokenizer
    ref_params: dict
    rewards: Rewards | None
    metric: Rewards | None
    rm: tuple | None
    greedy: Callable


def _evaluate(setup: _Setup, params, key, samples_per_prompt: int) -> dict:
    """The held-out evaluation: greedy and sampled means of the reward, each function and the
    metric; the exact KL to the starting policy and the length of the sampled responses."""
    config, programs, rows = setup.config, setup.programs, setup.heldout
    sums: dict[str, list] = {}
    samples, kls, lengths = [], [], []
    scorers = _heldout_scorers(setup)
    for mode in ["greedy"] + [f"sample{j}" for j in range(samples_per_prompt)]:
        key, k_mode = jax.random.split(key)
        for start, (chunk, real) in zip(range(0, len(rows), config.batch_size),
                                        padded_chunks(list(range(len(rows))), config.batch_size)):
            ids, mask = setup.source.encode([rows[i]["prompt"] for i in chunk])
            generate = setup.greedy if mode == "greedy" else programs.generate
            gen = generate(params, ids, mask, jax.random.fold_in(k_mode, start))
            values = {name: score(chunk, gen) for name, score in scorers.items()}
            group = "greedy" if mode == "greedy" else "sampled"
            for name, v in values.items():
                sums.setdefault(f"{name}_{group}", []).append(np.asarray(v)[:real])
            if mode != "greedy":
                kls.append(np.asarray(programs.kl(params, setup.ref_params, gen))[:real])
                lengths.append(np.asarray(gen.response_mask).sum(axis=1)[:real])
            else:
                texts, ended = decode_responses(setup.tokenizer, gen)
                samples += [{"prompt": rows[i]["prompt"], "greedy_response": t, "ended_with_eos": bool(e),
                             **{k: float(np.asarray(v)[n]) for k, v in values.items()}}
                            for n, (i, t, e) in enumerate(zip(chunk[:real], texts, ended))]
    out = {name: float(np.mean(np.concatenate(v))) for name, v in sums.items()}
    out.update(kl=float(np.mean(np.concatenate(kls))), response_length=float(np.mean(np.concatenate(lengths))),
               samples_per_prompt=samples_per_prompt, prompts=len(rows), samples=samples)
    return out


def _heldout_scorers(setup: _Setup) -> dict[str, Callable]:
    """``name -> score(idx, gen) -> [B]`` on the held-out rows: the reward (the functions' weighted
    sum, or the reward model's normalised score) and, if there is one, the metric."""
    def scorer(rewards):
        score = rows_scorer(rewards, setup.tokenizer, setup.heldout, setup.source.width)
        return lambda idx, gen: score(idx, gen)[0]

    if setup.rewards is not None:
        out = {"reward": scorer(setup.rewards)}
    else:
        rm_params, norm = setup.rm
        out = {"reward": lambda idx, gen: np.asarray(setup.programs.score(rm_params, gen, norm["mean"], norm["std"]))}
    if setup.metric is not None:
        out["metric"] = scorer(setup.metric)
    return out


def rl_run(config: RLHFConfig, source: RLSource, *, policy: tuple | None = None, rewards: Sequence | None = None,
           out: str | None = None, progress: bool = True, resume: bool = False,
           log: Callable[[str], None] = print) -> dict:
    """RL of a policy on prompts against reward functions or a reward model, into a run folder.

    ``policy`` is ``(lm, params, tokenizer)`` (default: loaded from ``source.model``);
    ``rewards`` Python functions with their weights in ``source.reward_weights`` (default:
    ``source.reward``, or the task's). Everything is checked (the files read, the functions
    imported) before the folder is made. Returns the summary (also ``summary.json``): the
    held-out metric and reward of the starting and the final policy, greedy and sampled,
    and the final KL to the starting policy."""
    config.validate()
    source.validate()
    if out and not resume:
        check_run_dir(out, COMMAND, resumable=True)
    setup, lm, params = _prepare(config, source, policy, rewards)
    record = {**setup.config.to_dict(), **{f"source.{k}": v for k, v in source.to_dict().items()}}
    run_dir = open_run_dir(out, COMMAND, "rl", record, resume=resume)
    eval_key = stream_key(config.seed, "evaluation")
    with resume_hint(COMMAND, run_dir, _where_stopped):
        return _train_and_report(setup, source, params, lm, run_dir, eval_key, progress, resume, log)


def evaluate_policy(config: RLHFConfig, source: RLSource, *, policy: tuple | None = None, reference=None) -> dict:
    """The held-out evaluation :func:`rl_run` makes of its starting and final policy, of any
    policy (``(lm, params, tokenizer)``, default loaded from ``source.model``): greedy and
    sampled means of the reward and the metric, and the KL to ``reference`` (parameters of
    the same shape; default the policy itself). A peer's trained model is scored by the same code."""
    config.validate()
    source.validate()
    setup, _, params = _prepare(config, source, policy, None)
    if reference is not None:
        setup.ref_params = frozen_params(setup.config, reference)
    out = _evaluate(setup, with_value_head(setup.programs, params), stream_key(config.seed, "evaluation"), source.eval_samples)
    out.pop("samples")
    return out


def _prepare(config: RLHFConfig, source: RLSource, policy: tuple | None, rewards: Sequence | None):
    """Loads and checks everything a run needs (nothing written): ``(setup, lm, params)``."""
    if policy is None:
        if source.model is None:
            raise ValueError("model: give the starting policy (--model: a Hugging Face folder or our checkpoint)")
        policy = load_policy(source.model)
    lm, params, tokenizer = policy
    if source.compute_dtype is not None:
        lm = TransformerLM(dataclasses.replace(lm.config, compute_dtype=source.compute_dtype))
    if not lm.lm_head:
        raise ValueError("model: this is a reward model's checkpoint (no language-model head); give a policy")
    pool, heldout = prompt_sets(source, config.seed)
    reward_set = rm = None
    if source.reward_model is None:
        specs, weights = source.reward_specs()
        reward_set = Rewards(reward_functions(list(rewards) if rewards is not None else specs,
                                              weights if rewards is None else (list(source.reward_weights) or None)))
    else:
        rm = load_reward_model(source.reward_model)
        if rm[0].config.vocab_size != lm.config.vocab_size:
            raise ValueError(f"reward_model: its vocabulary ({rm[0].config.vocab_size} tokens) is not the policy's "
                             f"({lm.config.vocab_size}); it scores the policy's token ids, so it needs its tokenizer")
    if config.algo == "ppo" and config.value_model == "critic" and rm is None:
        raise ValueError("value_model: 'critic' starts from a reward model; with reward functions use "
                         "--value-model policy-head (or --algo grpo / rloo)")
    metric_spec = source.metric_spec()
    metric = Rewards([RewardFunction("metric", load_function(metric_spec, "metric"))]) if metric_spec else None
    prompts = PromptSource(tokenizer, [r["prompt"] for r in pool], also=[r["prompt"] for r in heldout])
    max_new = min(config.max_new_tokens, lm.config.max_len - prompts.width)
    if max_new <= 0:
        raise ValueError(f"max_new_tokens: {prompts.width}-token prompts leave no room for a response in the "
                         f"model's context of {lm.config.max_len}")
    config = dataclasses.replace(config, max_new_tokens=max_new, overlong_buffer=min(config.overlong_buffer, max_new))
    programs = make_programs(config, lm.config, rm[0] if rm else None, prompt_len=prompts.width,
                             max_new_tokens=max_new, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    greedy = make_generate(programs.policy, SamplingConfig(max_new_tokens=max_new, greedy=True),
                           eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    setup = _Setup(config, programs, prompts, pool, heldout, tokenizer, frozen_params(config, params), reward_set,
                   metric, (frozen_params(config, rm[1]), rm[2]) if rm else None, greedy)
    return setup, lm, params


def _where_stopped(err: KeyboardInterrupt) -> str:
    if isinstance(err, Interrupted) and err.path is not None:
        return f"the last checkpoint is {err.path} (iteration {err.step} of {err.total})"
    return "the iterations since the last checkpoint are lost"


def _train_and_report(setup: _Setup, source: RLSource, params, lm, run_dir: Path, eval_key, progress: bool,
                      resume: bool, log) -> dict:
    config, programs = setup.config, setup.programs
    before_path = run_dir / "before.json"
    if resume and before_path.exists():
        before = json.loads(before_path.read_text())
    else:
        before = _evaluate(setup, with_value_head(setup.programs, params), eval_key, source.eval_samples)
        before.pop("samples")
        write_json(before_path, before)
    log(_line("start", before))
    state = init_state(config, programs, params, setup.rm[0] if setup.rm else None)
    scorer = (rows_scorer(setup.rewards, setup.tokenizer, setup.pool, setup.source.width)
              if setup.rewards is not None else None)
    checkpoints = RunCheckpoints(run_dir / "checkpoints", format=RUN_FORMAT, payload=RUN_PAYLOAD)
    bar = progress_bar(f"rl ({config.algo})", not progress,
                       "reward {task.fields[reward]} kl {task.fields[kl]} entropy {task.fields[entropy]} "
                       "length {task.fields[length]}")
    with bar:
        job = bar.add_task("rl", total=config.iterations, reward="-", kl="-", entropy="-", length="-")
        result = train_rlhf(
            config, programs, state, ref_params=setup.ref_params, tokenizer=setup.tokenizer, prompts=setup.source,
            rm_params=setup.rm[0] if setup.rm else None, rm_norm=setup.rm[1] if setup.rm else None,
            reward="functions" if scorer else "proxy", scorer=scorer, checkpoints=checkpoints,
            checkpoint_every=source.checkpoint_every or config.iterations,
            progress=lambda i, r: bar.update(job, completed=i + 1,
                                             reward=f"{r.get('reward', r.get('proxy_reward', np.nan)):.3f}",
                                             kl=f"{r['kl_exact']:.2f}", entropy=f"{r['entropy']:.2f}",
                                             length=f"{r['response_length']:.1f}"))
    history, final_params = result.history, result.state.policy_params
    final = _evaluate(setup, final_params, eval_key, source.eval_samples)
    write_json(run_dir / "samples.json", final.pop("samples"))
    write_json(run_dir / "metrics.json", history)
    write_json(run_dir / "final.json", final)
    _plot(run_dir / "curves.png", history, config.algo)
    plain = {k: v for k, v in final_params.items() if k != "scalar_head"}  # PPO's value head is not the policy's
    adapters = programs.policy.lora
    policy_lm = TransformerLM(lm.config, lora=adapters)
    for folder in (run_dir / "checkpoint", run_dir / "hf"):  # what a run killed while writing them left
        shutil.rmtree(folder, ignore_errors=True)
    # With LoRA the checkpoint holds the adapters and points to the starting model's folder.
    ckpt.save(run_dir / "checkpoint", plain, policy_lm, setup.tokenizer, base=source.model)
    if has_tokenizers():
        save_pretrained(run_dir / "hf", TransformerLM(lm.config), lora.merged(plain, adapters) if adapters.active
                        else plain, setup.tokenizer)
    else:  # the byte tokenizer's tokenizer.json is written with the optional tokenizers package
        log(f"rl: no hf/ folder (pip install tokenizers, then rlhf-jax export --checkpoint {run_dir} --out DIR)")
    summary = {"algo": config.algo, "iterations": config.iterations, "before": before,
               "final": final, "wall_s": result.wall_s, "run_dir": str(run_dir),
               "device": str(jax.devices()[0].platform),
               "mean_iteration_s": float(np.mean([h["time_sample"] + h["time_score"] + h["time_update"]
                                                  for h in history[1:] or history]))}
    write_json(run_dir / "summary.json", summary)
    log(_line("final", final))
    return summary


def _line(label: str, ev: dict) -> str:
    k = ev["samples_per_prompt"]
    parts = [f"{label}: reward greedy {ev['reward_greedy']:.3f}, mean@{k} {ev['reward_sampled']:.3f}"]
    if "metric_greedy" in ev:
        parts.append(f"metric greedy {ev['metric_greedy']:.3f}, mean@{k} {ev['metric_sampled']:.3f}")
    parts.append(f"KL {ev['kl']:.2f} nats/sequence")
    return "; ".join(parts)


def _plot(path: Path, history: list[dict], algo: str) -> None:
    x = [h["iteration"] + 1 for h in history]
    rewards = {k: (x, [h.get(k, np.nan) for h in history]) for k in history[0]
               if k == "reward" or k.startswith("reward/") or k == "proxy_reward"}
    panels = [("reward (training batch)", rewards),
              ("KL to the start (nats/sequence)", {"exact": (x, [h["kl_exact"] for h in history])}),
              ("entropy (nats/token)", {"entropy": (x, [h["entropy"] for h in history])}),
              ("response length (tokens)", {"length": (x, [h["response_length"] for h in history])})]
    plot_panels(path, panels, xlabel="iteration", title=f"rlhf-jax rl ({algo})")


def resume_rl(run_dir: str | Path, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Continues the killed ``rlhf-jax rl`` run in ``run_dir`` from its newest checkpoint with the
    settings it was started with (the policy and reward functions loaded again by name)."""
    names = [f"source.{f.name}" for f in dataclasses.fields(RLSource)]
    config, kept = resumable_config(run_dir, COMMAND, RLHFConfig.from_dict, keep=names)
    values = {k.removeprefix("source."): v for k, v in kept.items() if v is not None}
    for name in ("reward", "reward_weights"):
        if name in values:
            values[name] = tuple(values[name])
    source = RLSource(**values)
    if source.model is None:
        raise ValueError(f"{Path(run_dir) / 'config.json'}: the run was given its policy as a Python object; "
                         f"resume it with rl_run(..., resume=True)")
    return rl_run(config, source, out=str(run_dir), progress=progress, resume=True, log=log)
