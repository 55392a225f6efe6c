"""SFT -> preference pairs -> reward model -> PPO on a built-in task, into one run folder.

The stages are the functions of :mod:`rlhf_jax.stages` (each writes its checkpoint and
metrics under the run folder, and its wall time to ``summary.json``; a resumed run loads
the finished ones):

1. ``sft/``: supervised fine-tuning on the task's corpus;
2. ``rm/``: response pairs sampled from the SFT policy, labelled by Bradley-Terry sampling
   on the gold reward (``pairs.jsonl``), and the reward model trained on them;
3. ``best_of_n/``: n samples per evaluation prompt from the SFT policy, the proxy's pick
   (the baseline curve, KL ``log n - (n - 1) / n``);
4. ``ppo_proxy/`` and ``ppo_gold/``: RLHF-PPO from the SFT policy against the reward
   model, and against the gold reward (the upper bound), with per-iteration metrics and
   samples before and after; with the modes ``grpo`` and ``rloo``, ``grpo/`` and ``rloo/``
   (critic-free, against the reward model), and with ``dpo``, ``dpo/`` (DPO on the reward
   model's pairs);
5. ``gold_vs_sqrt_kl.png`` and ``proxy_vs_sqrt_kl.png``: reward against sqrt(KL to the
   SFT policy) for every mode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from ppo_jax.run.interrupt import Interrupted, resume_hint
from ppo_jax.run.outputs import plot_lines, write_json
from ppo_jax.run.rundir import open_run_dir, resumable_config
from ppo_jax.run.validation import DictConfig, require_finite, validate_part
from rlhf_jax.data import load_preferences, load_prompts, load_sft
from rlhf_jax.dpo import DPOConfig
from rlhf_jax.hf import load_pretrained
from rlhf_jax.ppo_trainer import RLHFConfig
from rlhf_jax.reward_model import RMConfig
from rlhf_jax.seeds import stream_key
from rlhf_jax.sft import SFTConfig
from rlhf_jax.stages import (
    PairSampling,
    Preferences,
    RLSetup,
    StageClock,
    best_of_n_stage,
    dpo_stage,
    policy_and_pairs,
    ppo_stage,
    reward_model_stage,
    reward_vs_sqrt_kl,
    seeded,
    task_named,
    task_prompt_sets,
)
from rlhf_jax.tokenizer import ByteTokenizer

COMMAND = "rlhf-jax pipeline"
MODES = ("proxy", "gold", "best-of-n", "grpo", "rloo", "dpo")
DEFAULT_MODES = ("proxy", "gold", "best-of-n")


@dataclass(frozen=True)
class PipelineConfig(DictConfig):
    """The whole SFT -> RM -> PPO run, on a built-in task or on your data and model."""

    task: str = "reviews"
    """Built-in offline task (corpus, prompts and gold reward); not used with --sft-data etc."""
    modes: tuple[str, ...] = ()
    """What to run after the reward model: 'proxy' (PPO on the reward model), 'gold' (PPO on
    the gold reward, the upper bound), 'best-of-n' (the SFT baseline curve), 'grpo' and 'rloo'
    (critic-free, on the reward model, with --ppo's settings and group size), 'dpo' (on the
    reward model's preference pairs, no reward model). Default: proxy, gold and best-of-n on a
    task; 'proxy' on your data (which has no gold reward)."""
    model: str | None = None
    """A local Hugging Face folder (gpt2, llama, qwen2, mistral) to start SFT from, with its
    tokenizer; replaces --sft.model. Nothing is downloaded."""
    sft_data: str | None = None
    """Your SFT data, JSONL with 'prompt' and 'response' (with --pref-data and --prompts)."""
    pref_data: str | None = None
    """Your preference pairs, JSONL with 'prompt', 'chosen', 'rejected' (or hh-rlhf's whole
    'chosen' and 'rejected' dialogues, the prompt being their shared part)."""
    prompts: str | None = None
    """Your PPO prompts, JSONL with 'prompt'; the last fifth (at most --eval-prompts) is held out."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning (its model is the policy, reference, reward-model and critic shape)."""
    sft_examples: int = 4096
    """Examples drawn from the task's corpus for SFT."""
    num_pairs: int = 8000
    """Preference pairs sampled from the SFT policy and labelled (with 3000 the reward model
    ended 3-4 points under the Bayes ceiling, with 8000 within 3)."""
    tau: float = 0.25
    """Labeller temperature: P(y1 > y2) = sigmoid((r*(y1) - r*(y2)) / tau)."""
    flip_prob: float = 0.0
    """Probability that a label is flipped."""
    rm: RMConfig = field(default_factory=RMConfig)
    """Reward-model training (its model field is ignored: the reward model starts from SFT)."""
    ppo: RLHFConfig = field(default_factory=RLHFConfig)
    """RLHF-PPO (the same settings for the proxy and the gold run, and for grpo and rloo but the
    algorithm; its algo field is ignored)."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """DPO on the reward model's pairs (its model field is ignored: DPO starts from SFT)."""
    best_of_n: tuple[int, ...] = (1, 2, 4, 8, 16)
    """Values of n for the best-of-n curve."""
    eval_prompts: int = 256
    """Held-out prompts for the before/after evaluations and best-of-n."""
    checkpoint_every: int = 10
    """PPO iterations between checkpoints of each PPO stage (0: none; a resumed stage restarts)."""
    seed: int = 0
    """Seed of the prompt sets and of each stage (added to the stages' own seeds)."""

    @property
    def own_data(self) -> bool:
        """Whether the run uses the user's data files (then there is no gold reward)."""
        return any(x is not None for x in (self.sft_data, self.pref_data, self.prompts))

    @property
    def run_modes(self) -> tuple[str, ...]:
        return self.modes or (("proxy",) if self.own_data else DEFAULT_MODES)

    def validate(self) -> None:
        require_finite(self)
        task_named(self.task)
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"modes: each must be one of {', '.join(MODES)}, got {list(self.modes)}")
        if self.own_data:
            names = ("sft_data", "pref_data", "prompts")
            missing = [f"--{n.replace('_', '-')}" for n in names if getattr(self, n) is None]
            if missing:
                raise ValueError(f"{missing[0][2:].replace('-', '_')}: your own data needs --sft-data, --pref-data and "
                                 f"--prompts together (missing {', '.join(missing)})")
            if set(self.run_modes) & {"gold", "best-of-n"}:
                raise ValueError("modes: 'gold' and 'best-of-n' need a task's gold reward; with your own data "
                                 "only 'proxy' runs")
        for name in ("sft_examples", "num_pairs", "eval_prompts"):
            if getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be at least 2, got {getattr(self, name)}")
        if not self.best_of_n or min(self.best_of_n) < 1:
            raise ValueError(f"best_of_n: must be positive integers, got {list(self.best_of_n)}")
        validate_part(self.sft, "sft")
        validate_part(self.rm, "rm")
        validate_part(self.ppo, "ppo")
        for algo in sorted({"grpo", "rloo"} & set(self.run_modes)):
            validate_part(dataclasses.replace(self.ppo, algo=algo), "ppo")  # the group size, for one
        if "dpo" in self.run_modes:
            validate_part(self.dpo, "dpo")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every: must be >= 0, got {self.checkpoint_every}")
        if self.model is None and self.rm.max_length > self.sft.model.max_len:
            raise ValueError(f"rm.max_length: {self.rm.max_length} exceeds sft.model.max_len {self.sft.model.max_len}")


def _load_data(config: PipelineConfig) -> dict:
    """The user's data files, read (and checked, errors naming file and line) up front:
    ``{"sft": (prompts, responses) | None, "pairs": (pairs, where) | None,
    "prompts": (pool, held-out) | None}``."""
    if not config.own_data:
        return {"sft": None, "pairs": None, "prompts": None}
    prompts, responses, _ = load_sft(config.sft_data)
    everything = load_prompts(config.prompts)
    held = min(config.eval_prompts, max(1, len(everything) // 5))
    pool = everything[:-held] or everything
    return {"sft": (prompts, responses), "pairs": load_preferences(config.pref_data),
            "prompts": (pool, everything[-held:])}


def resume_pipeline(run_dir: str | Path, *, show_progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Continues a killed :func:`run_pipeline` in ``run_dir`` with the config it was started with."""
    config, _ = resumable_config(run_dir, COMMAND, PipelineConfig.from_dict)
    return run_pipeline(config, run_dir, show_progress=show_progress, log=log, resume=True)


def run_pipeline(config: PipelineConfig, run_dir: str | Path | None = None, *, show_progress: bool = True,
                 log: Callable[[str], None] = print, resume: bool = False) -> dict:
    """Runs every stage into ``run_dir`` (a new or empty folder; None: a fresh one under
    ``runs/``) and returns the summary (also ``summary.json``).

    Each finished stage leaves its checkpoint and then its metrics file; the PPO stages
    also save a checkpoint every ``config.checkpoint_every`` iterations. With ``resume``
    finished stages are loaded instead of run again and an unfinished PPO stage continues
    from its newest intact checkpoint: the run ends with what the uninterrupted run ends with.
    """
    config.validate()
    data = _load_data(config)  # bad files fail here, before any folder exists
    sft_config = seeded(config.sft, config.seed)
    if config.model is not None:
        pretrained, pretrained_params, tok = load_pretrained(config.model)
        sft_config = dataclasses.replace(sft_config, model=pretrained.config.with_runtime_of(config.sft.model))
        if config.rm.max_length > pretrained.config.max_len:
            raise ValueError(f"rm.max_length: {config.rm.max_length} exceeds the model's max_len "
                             f"{pretrained.config.max_len}")
    else:
        pretrained_params, tok = None, ByteTokenizer()
    run_dir = open_run_dir(run_dir, COMMAND, "pipeline", config.to_dict(), resume=resume)
    run = _Run(config, run_dir, resume, show_progress, log, tok)
    with resume_hint(COMMAND, run_dir, _where_stopped):
        return _stages(run, data, sft_config, pretrained_params)


def _where_stopped(err: KeyboardInterrupt) -> str:
    """Where an interrupted pipeline stands (finished stages are kept)."""
    if not isinstance(err, Interrupted) or err.path is None:
        return "finished stages are kept"
    supervised = Path(err.path).parent.name == "progress"  # a supervised stage's checkpoints
    stage = f"the {Path(err.path).parent.parent.name} stage" if supervised else "the PPO stage"
    return (f"{stage} stopped after {'step' if supervised else 'iteration'} {err.step} of {err.total} "
            f"(checkpoint {err.path})")


@dataclass
class _Run:
    """One pipeline run in progress: its settings, folder, clock, summary and curves."""

    config: PipelineConfig
    run_dir: Path
    resume: bool
    show_progress: bool
    log: Callable[[str], None]
    tok: object
    clock: StageClock = field(default_factory=StageClock)
    summary: dict = field(default_factory=dict)
    curves_gold: dict = field(default_factory=dict)
    curves_proxy: dict = field(default_factory=dict)

    def took(self, *names: str) -> str:
        return f"{sum(self.clock.wall.get(n, 0.0) for n in names):.0f} s"


def _stages(run: _Run, data: dict, sft_config: SFTConfig, pretrained_params) -> dict:
    """The stages of :func:`run_pipeline`, in ``run.run_dir`` (already claimed or checked)."""
    config, summary = run.config, run.summary
    task = task_named(config.task)
    summary.update(task=None if config.own_data else config.task, run_dir=str(run.run_dir),
                   device=str(jax.devices()[0].platform), wall_s=run.clock.wall,
                   stages_loaded_on_resume=run.clock.loaded)
    gold_fn = None if config.own_data else lambda prompt, response, ended: task.gold_reward(response, ended)  # noqa: E731
    sft, prefs, rm = _preferences(run, task, data, sft_config, pretrained_params)
    ppo_config = seeded(config.ppo, config.seed)
    pool, eval_prompts = data["prompts"] or task_prompt_sets(task, config.eval_prompts, config.seed)
    setup = RLSetup(ppo_config, sft, rm.model, run.tok, pool, eval_prompts, gold_fn)
    eval_key = stream_key(config.seed, "evaluation")
    before = run.clock.timed("evaluation", lambda: setup.evaluator("ppo", rm)(sft.params, eval_key))
    write_json(run.run_dir / "samples_sft.json", before.pop("samples"))
    summary.update(gold_reward_sft=before["gold_reward"], proxy_reward_sft=before["proxy_reward"],
                   eos_rate_sft=before["eos_rate"])
    run.log(f"sft policy: gold reward {before['gold_reward']:.3f}, proxy {before['proxy_reward']:.3f}")
    if "best-of-n" in config.run_modes:
        _best_of_n(run, setup, rm)
    for mode, (name, algo, reward, label) in RL_RUNS.items():
        if mode in config.run_modes:
            _rl_run(run, setup, rm, eval_key, name, algo, reward, label)
    if "dpo" in config.run_modes:
        _dpo(run, setup, sft, prefs, rm, eval_key)
    final = summary.get("ppo_proxy") or summary.get("ppo_gold")
    if final is not None:
        summary.update(gold_reward_final=final["gold_reward"], proxy_reward_final=final["proxy_reward"],
                       kl_final=final["kl"])
    for name, curves, label in (("gold_vs_sqrt_kl.png", run.curves_gold, "gold reward"),
                                ("proxy_vs_sqrt_kl.png", run.curves_proxy, "proxy reward (normalised)")):
        if curves:
            plot_lines(run.run_dir / name, curves, xlabel="sqrt(KL to the SFT policy), sqrt(nats per sequence); "
                                                          "PPO, GRPO, RLOO: 5-iteration moving averages",
                       ylabel=label, title=f"{config.task}: {label} against KL")
    write_json(run.run_dir / "summary.json", summary)
    return summary


def _preferences(run: _Run, task, data: dict, sft_config: SFTConfig, pretrained_params):
    """SFT, the preference pairs and the reward model: ``(sft, prefs, rm)``."""
    config, rm_dir = run.config, run.run_dir / "rm"
    file_pairs = Preferences(*data["pairs"], bayes_accuracy=None) if data["pairs"] is not None else None
    sft, prefs = policy_and_pairs(
        run.clock, task, run.tok, sft_config=sft_config, sft_folder=run.run_dir / "sft", pairs_folder=rm_dir,
        sampling=PairSampling(config.num_pairs, config.tau, config.flip_prob, config.ppo.max_new_tokens),
        seed=config.seed, init_params=pretrained_params, sft_data=data["sft"], sft_examples=config.sft_examples,
        file_pairs=file_pairs, show_progress=run.show_progress, resume=run.resume, policy_source=config.model)
    run.summary["sft_heldout_loss"] = sft.eval_loss[-1] if sft.eval_loss else float("nan")
    run.log(f"sft: held-out loss {run.summary['sft_heldout_loss']:.3f} nats/token ({run.took('sft')})")
    rm = run.clock("reward_model", lambda: reward_model_stage(
        seeded(config.rm, config.seed), run.tok, prefs, rm_dir, init_params=sft.params, model_config=sft.lm.config,
        base=sft.source, show_progress=run.show_progress, resume=run.resume))
    run.summary.update(rm_heldout_accuracy=rm.history[-1]["heldout_accuracy"], bayes_accuracy=rm.bayes_accuracy,
                       rm_heldout_expected_accuracy=rm.history[-1].get("heldout_expected_accuracy"))
    ceiling = f"Bayes ceiling {rm.bayes_accuracy:.3f}; " if rm.bayes_accuracy is not None else ""
    run.log(f"reward model: held-out accuracy {run.summary['rm_heldout_accuracy']:.3f} ({ceiling}"
            f"{run.took('pairs', 'reward_model')})")
    return sft, prefs, rm


def _best_of_n(run: _Run, setup: RLSetup, rm) -> None:
    """n samples per held-out prompt from the SFT policy, the proxy's pick: the baseline curve."""
    key = stream_key(run.config.seed, "best_of_n")
    rows = run.clock("best_of_n", lambda: best_of_n_stage(setup, run.config.best_of_n, rm, key,
                                                          run.run_dir / "best_of_n", resume=run.resume))
    run.summary["best_of_n"] = rows
    run.curves_gold["best-of-n (SFT)"] = ([r["sqrt_kl"] for r in rows], [r["gold_reward"] for r in rows])
    run.curves_proxy["best-of-n (SFT)"] = ([r["sqrt_kl"] for r in rows], [r["proxy_reward"] for r in rows])
    run.log("best-of-n: " + ", ".join(f"n={r['n']} gold {r['gold_reward']:.3f}" for r in rows))


RL_RUNS = {"proxy": ("ppo_proxy", "ppo", "proxy", "PPO on proxy reward"),
           "gold": ("ppo_gold", "ppo", "gold", "PPO on gold reward"),
           "grpo": ("grpo", "grpo", "proxy", "GRPO on proxy reward"),
           "rloo": ("rloo", "rloo", "proxy", "RLOO on proxy reward")}
"""Mode -> (stage folder, update rule, reward, plot label) of the RL stages."""


def _rl_run(run: _Run, setup: RLSetup, rm, eval_key, name: str, algo: str, reward: str, label: str) -> None:
    """One RL stage from the SFT policy: PPO against the proxy or the gold reward, GRPO or RLOO."""
    ppo = run.clock(name, lambda: ppo_stage(algo, setup, rm, run.run_dir / name, reward=reward, eval_key=eval_key,
                                            checkpoint_every=run.config.checkpoint_every,
                                            show_progress=run.show_progress, resume=run.resume))
    history, after = ppo.history, ppo.final
    run.summary[name] = {**after, "iterations": setup.config.iterations,
                         "mean_phase_s": {p: float(np.mean([h[f"time_{p}"] for h in history[1:]]
                                                           or [history[0][f"time_{p}"]]))
                                          for p in ("sample", "score", "update")}}
    if setup.gold_reward is not None:
        run.curves_gold[label] = reward_vs_sqrt_kl(history, "gold_reward")
    run.curves_proxy[label] = reward_vs_sqrt_kl(history, "proxy_reward")
    run.log(f"{label}: gold reward {after['gold_reward']:.3f}, proxy {after['proxy_reward']:.3f}, "
            f"KL {after['kl']:.2f} nats/sequence ({run.took(name)})")


def _dpo(run: _Run, setup: RLSetup, sft, prefs, rm, eval_key) -> None:
    """DPO from the SFT policy on the reward model's pairs, evaluated as the RL stages are."""
    config = run.config
    dpo_config = dataclasses.replace(seeded(config.dpo, config.seed), model=sft.lm.config)
    dpo = run.clock("dpo", lambda: dpo_stage(dpo_config, run.tok, prefs, run.run_dir / "dpo", lm=sft.lm,
                                             params=sft.params, base=sft.source, show_progress=run.show_progress,
                                             resume=run.resume))
    # A policy without a value head: evaluated by programs whose policy has none either.
    after = setup.evaluator("ppo" if setup.config.value_model == "critic" else "rloo", rm)(dpo.params, eval_key)
    write_json(run.run_dir / "dpo" / "samples.json", after.pop("samples"))
    run.summary["dpo"] = {**after, "heldout_accuracy": dpo.history[-1]["heldout_accuracy"]}
    if setup.gold_reward is not None:
        run.curves_gold["DPO (final)"] = ([after["sqrt_kl"]], [after["gold_reward"]])
    run.curves_proxy["DPO (final)"] = ([after["sqrt_kl"]], [after["proxy_reward"]])
    run.log(f"DPO: gold reward {after['gold_reward']:.3f}, proxy {after['proxy_reward']:.3f}, "
            f"KL {after['kl']:.2f} nats/sequence ({run.took('dpo')})")
