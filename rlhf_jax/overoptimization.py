"""``rlhf-jax overoptimization``: reward over-optimisation against the amount of preference data.

The study of Gao, Schulman and Hilton (2022), on a built-in task with a gold reward:

1. ``sft/``: one SFT policy on the task's corpus;
2. ``pairs/``: ``max(pair_counts)`` response pairs sampled from it, labelled by
   Bradley-Terry sampling on the gold reward;
3. ``rm_<n>/``: for each ``n`` in ``pair_counts``, a reward model on the first ``n`` pairs
   (nested sets: the reward models differ only in how much they saw);
4. ``ppo_<n>/``: RL from the SFT policy against each reward model, with little or no KL
   penalty (``ppo.kl_coef``, default 0), for ``ppo.iterations`` iterations;
5. ``overoptimization.png``: each run's gold reward and proxy reward (on its rollouts) against
   sqrt(KL to the SFT policy), 5-iteration moving averages in iteration order; and
   ``summary.json``: per reward model, its held-out accuracy, the peak of the gold curve
   (where, and how far the gold reward fell after it) and the proxy's rise over the same
   stretch.

Over-optimisation shows as a gold curve that peaks and falls while the proxy keeps rising;
with more pairs the peak comes later and higher. The default task, ``praise``, leaves room
above the SFT policy (gold 2.0 is reachable, SFT samples average about 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ppo_jax.run.outputs import plot_panels, write_json
from ppo_jax.run.rundir import open_run_dir, resumable_config
from ppo_jax.run.validation import DictConfig, require_finite, validate_part
from rlhf_jax.ppo_trainer import RLHFConfig
from rlhf_jax.preferences import bayes_accuracy
from rlhf_jax.reward_model import RMConfig
from rlhf_jax.seeds import stream_key
from rlhf_jax.sft import SFTConfig
from rlhf_jax.stages import (
    PairSampling,
    Preferences,
    RLSetup,
    StageClock,
    policy_and_pairs,
    ppo_stage,
    reward_model_stage,
    reward_vs_sqrt_kl,
    seeded,
    task_named,
    task_prompt_sets,
)
from rlhf_jax.tokenizer import ByteTokenizer

COMMAND = "rlhf-jax overoptimization"


@dataclass(frozen=True)
class OveroptimizationConfig(DictConfig):
    """Reward models on fewer and more preference pairs, RL against each, gold and proxy against KL."""

    task: str = "praise"
    """Built-in offline task (corpus, prompts and gold reward)."""
    pair_counts: tuple[int, ...] = (300, 1000, 3000)
    """Preference pairs each reward model is trained on (the first n of one sampled set)."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning (its model is also the reward model's shape)."""
    sft_examples: int = 4096
    """Examples drawn from the task's corpus for SFT."""
    tau: float = 0.25
    """Labeller temperature: P(y1 > y2) = sigmoid((r*(y1) - r*(y2)) / tau)."""
    rm: RMConfig = field(default_factory=RMConfig)
    """Reward-model training (its model field is ignored: each reward model starts from SFT)."""
    ppo: RLHFConfig = field(default_factory=lambda: RLHFConfig(kl_coef=0.0, iterations=150))
    """RL against each reward model (``algo`` ppo, grpo or rloo); no KL penalty by default, so
    that the policy moves far enough for the gold reward to turn."""
    eval_prompts: int = 256
    """Held-out prompts for the evaluation of the SFT policy and of each final policy."""
    checkpoint_every: int = 10
    """RL iterations between checkpoints of each RL stage (0: none; a resumed stage restarts)."""
    seed: int = 0
    """Seed of the prompt sets and of each stage (added to the stages' own seeds)."""

    def validate(self) -> None:
        require_finite(self)
        task_named(self.task)
        counts = list(self.pair_counts)
        if not counts or min(counts) < 20 or counts != sorted(set(counts)):
            raise ValueError(f"pair_counts: must be increasing, each at least 20 (the reward model holds some "
                             f"out), got {counts}")
        for name in ("sft_examples", "eval_prompts"):
            if getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be at least 2, got {getattr(self, name)}")
        if not self.tau > 0:
            raise ValueError(f"tau: must be > 0, got {self.tau}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every: must be >= 0, got {self.checkpoint_every}")
        validate_part(self.sft, "sft")
        validate_part(self.rm, "rm")
        validate_part(self.ppo, "ppo")
        if self.rm.max_length > self.sft.model.max_len:
            raise ValueError(f"rm.max_length: {self.rm.max_length} exceeds sft.model.max_len {self.sft.model.max_len}")


def overoptimization_curve(history: list[dict], window: int = 5) -> dict:
    """One run's smoothed gold and proxy curves against sqrt(KL), and where the gold curve peaks:
    ``{sqrt_kl, gold, proxy, peak_iteration, peak_gold, peak_sqrt_kl, gold_drop_after_peak,
    proxy_rise_after_peak}`` (the drop and rise from the peak to the last iteration)."""
    x, gold = reward_vs_sqrt_kl(history, "gold_reward", window)
    _, proxy = reward_vs_sqrt_kl(history, "proxy_reward", window)
    peak = int(np.argmax(gold))
    return {"sqrt_kl": x.tolist(), "gold": gold.tolist(), "proxy": proxy.tolist(), "peak_iteration": peak,
            "peak_gold": float(gold[peak]), "peak_sqrt_kl": float(x[peak]),
            "gold_drop_after_peak": float(gold[peak] - gold[-1]),
            "proxy_rise_after_peak": float(proxy[-1] - proxy[peak])}


def resume_overoptimization(run_dir: str | Path, *, show_progress: bool = True,
                            log: Callable[[str], None] = print) -> dict:
    """Continues a killed :func:`run_overoptimization` in ``run_dir`` with its own config."""
    config, _ = resumable_config(run_dir, COMMAND, OveroptimizationConfig.from_dict)
    return run_overoptimization(config, run_dir, show_progress=show_progress, log=log, resume=True)


def run_overoptimization(config: OveroptimizationConfig, run_dir: str | Path | None = None, *,
                         show_progress: bool = True, log: Callable[[str], None] = print,
                         resume: bool = False) -> dict:
    """Runs the study into ``run_dir`` (a new or empty folder; None: a fresh one under ``runs/``)
    and returns the summary (also ``summary.json``). With ``resume`` finished stages are loaded."""
    config.validate()
    run_dir = open_run_dir(run_dir, COMMAND, "overoptimization", config.to_dict(), resume=resume)
    task, tok = task_named(config.task), ByteTokenizer()
    gold_fn = lambda prompt, response, ended: task.gold_reward(response, ended)  # noqa: E731

    ppo_config = seeded(config.ppo, config.seed)
    sft, prefs = policy_and_pairs(StageClock(), task, tok, sft_config=seeded(config.sft, config.seed),
                                  sft_folder=run_dir / "sft", pairs_folder=run_dir / "pairs",
                                  sampling=PairSampling(max(config.pair_counts), config.tau, 0.0,
                                                        ppo_config.max_new_tokens),
                                  seed=config.seed, sft_examples=config.sft_examples, show_progress=show_progress,
                                  resume=resume)
    log(f"sft: held-out loss {sft.eval_loss[-1]:.3f} nats/token")

    rms = {}
    for n in config.pair_counts:
        subset = prefs.pairs[:n]
        ceiling = bayes_accuracy(np.array([p["label_prob"] for p in subset]))
        rms[n], _ = reward_model_stage(seeded(config.rm, config.seed), tok, Preferences(subset, None, ceiling),
                                       run_dir / f"rm_{n}", init_params=sft.params, model_config=sft.lm.config,
                                       show_progress=show_progress, resume=resume)

    # The reward models share one shape, so one setup and one compile serve every RL stage.
    first = rms[config.pair_counts[0]]
    setup = RLSetup(ppo_config, sft, first.model, tok, *task_prompt_sets(task, config.eval_prompts, config.seed),
                    gold_fn)
    eval_key = stream_key(config.seed, "evaluation")
    before = setup.evaluator(ppo_config.algo, first)(sft.params, eval_key)
    before.pop("samples")
    write_json(run_dir / "sft_eval.json", before)
    log(f"sft policy: gold reward {before['gold_reward']:.3f}")
    summary: dict = {"task": config.task, "run_dir": str(run_dir), "kl_coef": ppo_config.kl_coef,
                     "algo": ppo_config.algo, "gold_reward_sft": before["gold_reward"], "reward_models": {}}
    gold_curves, proxy_curves = {}, {}
    for n, rm in rms.items():
        run, _ = ppo_stage(ppo_config.algo, setup, rm, run_dir / f"ppo_{n}", reward="proxy", eval_key=eval_key,
                           checkpoint_every=config.checkpoint_every, show_progress=show_progress, resume=resume)
        curve = overoptimization_curve(run.history)
        label = f"RM on {n} pairs"
        gold_curves[label] = (curve["sqrt_kl"], curve["gold"])
        proxy_curves[label] = (curve["sqrt_kl"], curve["proxy"])
        summary["reward_models"][str(n)] = {
            "pairs": n, "rm_heldout_accuracy": rm.history[-1]["heldout_accuracy"], "bayes_accuracy": rm.bayes_accuracy,
            **{k: v for k, v in curve.items() if k not in ("sqrt_kl", "gold", "proxy")},
            "final_eval": run.final}
        log(f"{label}: held-out accuracy {rm.history[-1]['heldout_accuracy']:.3f}; gold peaks at "
            f"{curve['peak_gold']:.3f} (sqrt KL {curve['peak_sqrt_kl']:.2f}, iteration {curve['peak_iteration']}) "
            f"and falls {curve['gold_drop_after_peak']:.3f} after it while the proxy rises "
            f"{curve['proxy_rise_after_peak']:.3f}")
    plot_panels(run_dir / "overoptimization.png",
                [("gold reward", gold_curves), ("proxy reward (each RM normalised on its pairs)", proxy_curves)],
                xlabel="sqrt(KL to the SFT policy), 5-iteration moving averages",
                title=f"{config.task}: {ppo_config.algo} with kl_coef {ppo_config.kl_coef:g} against reward models "
                      f"on fewer and more pairs")
    write_json(run_dir / "summary.json", summary)
    return summary
