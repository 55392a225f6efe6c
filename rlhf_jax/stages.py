"""The stages of SFT -> preference pairs -> reward model -> PPO, one function each.

``rlhf-jax pipeline`` calls them in order into one run folder; ``rlhf-jax sft`` and
``rlhf-jax rm`` call the ones they need. Each stage writes into its own folder and, last,
the file that marks it finished; with ``resume=True`` a finished stage is loaded from that
folder instead of run again (:func:`load_or_run`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from math import nan
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from ppo_jax.run.checkpoints import RunCheckpoints
from ppo_jax.run.outputs import plot_lines, read_json, write_json
from ppo_jax.run.progress import progress_bar
from rlhf_jax import checkpoint as ckpt
from rlhf_jax import lora
from rlhf_jax.best_of_n import best_of_n_curve
from rlhf_jax.data import padded_chunks, write_preferences
from rlhf_jax.dpo import DPOConfig, train_dpo
from rlhf_jax.evaluation import PromptSource, decode_responses, evaluate_policy_samples
from rlhf_jax.ppo_trainer import (
    RLHFConfig,
    as_policy_params,
    evaluate_policy,
    frozen_params,
    init_state,
    make_programs,
    train_rlhf,
)
from rlhf_jax.preferences import make_preference_pairs, new_token_room, sample_responses
from rlhf_jax.reward_model import (
    RewardScorer,
    RMConfig,
    RMResult,
    calibration_bins,
    rank_correlation,
    train_reward_model,
)
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.seeds import prompt_seed, stream_key
from rlhf_jax.sft import SFTConfig, train_sft
from rlhf_jax.tasks import arithmetic, praise, reviews
from rlhf_jax.transformer import TransformerLM

TASKS = {"reviews": reviews, "praise": praise}
"""Built-in offline tasks: an SFT corpus, prompts and a gold reward each."""

LOSS = "loss {task.fields[loss]}"  # the supervised stages' progress status

RUN_PAYLOAD = "rlhf_jax RL state"
RUN_FORMAT = 2
"""Layout of an RL stage's periodic checkpoints (policy, value head, optimiser states, KL
controller, metrics). Its first number was 2, shared with PPO's train state; the layout has
not changed since, so checkpoints of runs in progress stay readable."""

SUPERVISED_PAYLOAD = "rlhf_jax supervised state"
SUPERVISED_FORMAT = 1
"""Layout of a supervised stage's periodic checkpoints: parameters, optimiser state, the
per-step losses so far (NaN after), the evaluation history in the meta."""


SFT_TASKS = {**TASKS, "arithmetic": arithmetic}
"""Tasks with an SFT corpus: the preference tasks and the verifiable ones (``rlhf-jax rl --task``)."""


def task_named(name: str, tasks: dict = TASKS):
    if name not in tasks:
        raise ValueError(f"task: unknown task {name!r}; valid tasks: {', '.join(tasks)}")
    return tasks[name]


def seeded(config, offset: int):
    """``config`` with ``offset`` added to its seed (each stage's own seed plus the run's)."""
    return dataclasses.replace(config, seed=config.seed + offset)


def task_prompt_sets(task, eval_prompts: int, seed: int) -> tuple[list[str], list[str]]:
    """A built-in task's RL prompt pool (1024 prompts) and ``eval_prompts`` held-out ones, from
    seed streams of their own (:mod:`rlhf_jax.seeds`)."""
    return (task.prompts(1024, seed=prompt_seed(seed, "rl_pool")),
            task.prompts(eval_prompts, seed=prompt_seed(seed, "heldout")))


def load_or_run(marker: Path, load: Callable, run: Callable, resume: bool):
    """``(load(), True)`` when resuming and ``marker`` (the file a stage writes last) exists,
    else ``(run(), False)``."""
    if resume and marker.exists():
        return load(), True
    return run(), False


def _clear(checkpoint_dir: Path) -> None:
    """Removes what a killed run left of a stage's checkpoint: the stage runs again."""
    if checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)


@dataclass
class SFTStage:
    lm: TransformerLM
    params: dict
    eval_loss: list[float]
    wall_s: float = 0.0
    train_loss: np.ndarray | None = None
    """Per optimiser step; None when loaded."""
    source: str | None = None
    """A folder the policy loads from (our checkpoint or a Hugging Face folder): the base a
    later stage's LoRA checkpoint points to; None when unknown (such a checkpoint is saved whole)."""


def merged_model(model: TransformerLM, params) -> tuple[TransformerLM, dict]:
    """``(model, params)`` without LoRA: the adapters folded into the weights (unchanged without)."""
    if not model.lora.active:
        return model, params
    return TransformerLM(model.config, model.lm_head, model.scalar_head), lora.merged(params, model.lora)


def _say(bar) -> Callable[[str], None]:
    """A line above the progress bar (resumed from ..., a damaged checkpoint skipped)."""
    return lambda message: bar.console.print(message, soft_wrap=True, highlight=False, markup=False)


def supervised_checkpoints(folder: Path) -> RunCheckpoints:
    """The periodic checkpoints of a supervised stage in progress (``folder/progress/``)."""
    return RunCheckpoints(folder / "progress", format=SUPERVISED_FORMAT, payload=SUPERVISED_PAYLOAD)


def sft_stage(config: SFTConfig, tokenizer, prompts: Sequence[str], responses: Sequence[str], folder: Path, *,
              params=None, base: str | None = None, show_progress: bool = True,
              resume: bool = False) -> tuple[SFTStage, bool]:
    """Supervised fine-tuning (from ``params``, else from scratch) into ``folder``:
    ``checkpoint/``, ``loss.png`` and ``metrics.json`` (the marker); while it runs, periodic
    checkpoints in ``progress/``, which a resumed run continues from (bit-identical). Returns
    the stage (with LoRA, its adapters folded in) and whether it was loaded. ``base`` is where
    ``params`` came from (the pointer a LoRA checkpoint keeps instead of the weights)."""
    def run() -> SFTStage:
        bar = progress_bar("sft", not show_progress, LOSS)
        progress = supervised_checkpoints(folder)
        with bar:
            job = bar.add_task("sft", total=config.steps, loss="-")
            result = train_sft(config, tokenizer, prompts, responses, params=params, checkpoints=progress,
                               progress=lambda s, loss: bar.update(job, completed=s + 1, loss=f"{loss:.3f}"),
                               on_status=_say(bar))
        lm = TransformerLM(config.model, lora=config.lora)
        _clear(folder / "checkpoint")
        ckpt.save(folder / "checkpoint", result.params, lm, tokenizer, base=base)
        _clear(folder / "progress")  # the stage's checkpoint replaces them
        plot_lines(folder / "loss.png", {"train (per step)": (np.arange(1, config.steps + 1), result.train_loss),
                                         "held-out": (result.eval_steps, result.eval_loss)},
                   xlabel="optimiser step", ylabel="cross-entropy per response token (nats)", title="SFT")
        write_json(folder / "metrics.json", {"train_loss": result.train_loss, "eval_step": result.eval_steps,
                                             "eval_loss": result.eval_loss})
        plain, params_ = merged_model(lm, result.params)
        return SFTStage(plain, params_, result.eval_loss, result.wall_s, result.train_loss,
                        str(folder / "checkpoint"))

    def load() -> SFTStage:
        lm, loaded, _ = ckpt.load(folder / "checkpoint")
        return SFTStage(lm, loaded, read_json(folder / "metrics.json")["eval_loss"], source=str(folder / "checkpoint"))

    return load_or_run(folder / "metrics.json", load, run, resume)


@dataclass
class Preferences:
    pairs: list[dict]
    where: list[str] | None
    """``FILE:LINE`` of each pair read from a file, for errors; None for sampled pairs."""
    bayes_accuracy: float | None
    """The labeller's ceiling on sampled pairs; None for a file's pairs (no labeller known)."""


def preference_stage(task, lm: TransformerLM, params, tokenizer, folder: Path, *, num_pairs: int, tau: float,
                     flip_prob: float, max_new_tokens: int, seed: int,
                     resume: bool = False) -> tuple[Preferences, bool]:
    """Response pairs sampled from the policy ``(lm, params)`` on the task's prompts and
    labelled by Bradley-Terry sampling on its gold reward, into ``folder``: ``pairs.jsonl``
    and ``preferences.json`` (the marker, with the Bayes ceiling)."""
    def run() -> Preferences:
        prompts = task.prompts(num_pairs, seed=prompt_seed(seed, "pairs"))
        sampling = SamplingConfig(max_new_tokens=new_token_room(tokenizer, prompts, lm.config.max_len, max_new_tokens))
        pairs, bayes = make_preference_pairs(lm, params, tokenizer, prompts, task.gold_reward, sampling=sampling,
                                             tau=tau, flip_prob=flip_prob, seed=seed)
        write_preferences(folder / "pairs.jsonl", pairs)
        write_json(folder / "preferences.json", {"pairs": len(pairs), "bayes_accuracy": bayes})
        return Preferences(pairs, None, bayes)

    def load() -> Preferences:
        # Our own file, as written: a sampled response may be empty, which user data may not.
        lines = (folder / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
        pairs = [json.loads(line) for line in lines]
        return Preferences(pairs, None, read_json(folder / "preferences.json")["bayes_accuracy"])

    return load_or_run(folder / "preferences.json", load, run, resume)


@dataclass(frozen=True)
class PairSampling:
    """How a task's preference pairs are made: ``num_pairs`` prompts, two responses each of at
    most ``max_new_tokens`` tokens, labelled by Bradley-Terry sampling at temperature ``tau`` on
    the gold reward, each label flipped with probability ``flip_prob``."""

    num_pairs: int
    tau: float
    flip_prob: float
    max_new_tokens: int


class StageClock:
    """Runs stages (:func:`load_or_run` style calls) and keeps each one's wall time in ``wall``,
    or its name in ``loaded`` when a resumed run loaded it instead."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.loaded: list[str] = []

    def __call__(self, name: str, call: Callable):
        t0 = time.perf_counter()
        result, loaded = call()
        if loaded:
            self.loaded.append(name)
        else:
            self.wall[name] = time.perf_counter() - t0
        return result

    def timed(self, name: str, call: Callable):
        """``call()``, its wall time kept under ``name`` (work that is never loaded)."""
        t0 = time.perf_counter()
        result = call()
        self.wall[name] = time.perf_counter() - t0
        return result


def policy_and_pairs(clock: StageClock, task, tokenizer, *, sft_config: SFTConfig | None, sft_folder: Path,
                     pairs_folder: Path, sampling: PairSampling, seed: int, policy: tuple | None = None,
                     policy_source: str | None = None,
                     init_params=None, sft_data: tuple | None = None, sft_examples: int = 4096,
                     file_pairs: Preferences | None = None, show_progress: bool = True,
                     resume: bool = False) -> tuple[SFTStage | None, Preferences]:
    """The prefix every preference method starts with (the pipeline, the over-optimisation
    study, ``rlhf-jax rm`` and ``dpo``): a policy, then preference pairs.

    The policy is ``policy`` (``(lm, params)``, loaded from ``policy_source``) when given; else,
    with ``sft_config``, SFT (from ``init_params``) on ``sft_data`` (``(prompts, responses)``) or ``sft_examples`` examples of the
    task's corpus, into ``sft_folder`` (stage ``sft``); else there is none (None is returned:
    a reward model then trains from scratch). The pairs are ``file_pairs``, copied to
    ``pairs_folder/pairs.jsonl``, or pairs the policy samples on the task's prompts (stage
    ``pairs``, seeded by ``seed``). Returns ``(policy, pairs)``."""
    sft = None
    if policy is not None:
        sft = SFTStage(policy[0], policy[1], [], source=policy_source)
    elif sft_config is not None:
        prompts, responses = sft_data or task.sft_corpus(sft_examples, seed=sft_config.seed)
        sft = clock("sft", lambda: sft_stage(sft_config, tokenizer, prompts, responses, sft_folder,
                                             params=init_params, base=policy_source, show_progress=show_progress,
                                             resume=resume))
    if file_pairs is not None:
        write_preferences(pairs_folder / "pairs.jsonl", file_pairs.pairs)
        return sft, file_pairs
    if sft is None:
        raise ValueError("pairs: sampling a task's pairs needs a policy (SFT settings, or a starting model)")
    prefs = clock("pairs", lambda: preference_stage(
        task, sft.lm, sft.params, tokenizer, pairs_folder, num_pairs=sampling.num_pairs, tau=sampling.tau,
        flip_prob=sampling.flip_prob, max_new_tokens=sampling.max_new_tokens, seed=seed, resume=resume))
    return sft, prefs


@dataclass
class RewardModelStage:
    model: TransformerLM
    params: dict
    norm: dict
    """Mean and std of the rewards on the training pairs (the PPO stage normalises with them)."""
    history: list[dict]
    bayes_accuracy: float | None
    result: RMResult | None = None
    """The whole training result (held-out scores, truncation count); None when loaded."""


def reward_model_stage(config: RMConfig, tokenizer, prefs: Preferences, folder: Path, *, init_params=None,
                       model_config=None, base: str | None = None, show_progress: bool = True,
                       resume: bool = False) -> tuple[RewardModelStage, bool]:
    """The Bradley-Terry reward model (from ``init_params``, an LM's loaded from ``base``, when
    given) into ``folder``: ``checkpoint/``, ``accuracy.png``, ``calibration.png`` and
    ``metrics.json`` (the marker). With LoRA the stage returns the adapters folded in."""
    def run() -> RewardModelStage:
        bar = progress_bar("reward model", not show_progress, LOSS)
        with bar:
            job = bar.add_task("rm", total=None, loss="-")
            result = train_reward_model(config, tokenizer, prefs.pairs, init_params_from=init_params,
                                        model_config=model_config, where=prefs.where,
                                        checkpoints=supervised_checkpoints(folder), on_status=_say(bar),
                                        progress=lambda s, n, loss: bar.update(job, completed=s, total=n,
                                                                              loss=f"{loss:.3f}"))
        _clear(folder / "checkpoint")
        ckpt.save(folder / "checkpoint", result.params, result.model, tokenizer,
                  extra={"reward_norm": result.norm, "max_length": config.max_length,
                         "bayes_accuracy": prefs.bayes_accuracy}, base=base)
        _clear(folder / "progress")  # the stage's checkpoint replaces them
        epochs = [h["epoch"] for h in result.history]
        plot_lines(folder / "accuracy.png", {"train": (epochs, [h["train_accuracy"] for h in result.history]),
                                             "held-out": (epochs, [h["heldout_accuracy"] for h in result.history])},
                   xlabel="epoch", ylabel="pairwise accuracy", title="Reward model accuracy")
        calib = calibration_bins(*result.heldout_scores)
        plot_lines(folder / "calibration.png", {"reward model": (calib["predicted"], calib["empirical"]),
                                                "perfect": ([0, 1], [0, 1])},
                   xlabel="predicted P(first preferred)", ylabel="empirical frequency", title="Held-out calibration")
        write_json(folder / "metrics.json", result.history)
        model, params = merged_model(result.model, result.params)
        return RewardModelStage(model, params, result.norm, result.history, prefs.bayes_accuracy, result)

    def load() -> RewardModelStage:
        model, params, _ = ckpt.load(folder / "checkpoint")
        extra = ckpt.load_extra(folder / "checkpoint")
        return RewardModelStage(model, params, extra["reward_norm"], read_json(folder / "metrics.json"),
                                extra.get("bayes_accuracy"))

    return load_or_run(folder / "metrics.json", load, run, resume)


def best_of_n_stage(setup: "RLSetup", ns: Sequence[int], rm: RewardModelStage, key: jax.Array, folder: Path,
                    resume: bool = False) -> tuple[list[dict], bool]:
    """The best-of-n baseline: ``max(ns)`` responses per evaluation prompt from the SFT policy,
    the proxy's pick scored by the gold reward, into ``folder/curve.json`` (the marker)."""
    def run() -> list[dict]:
        programs, tokenizer, batch_size = setup.programs("ppo"), setup.tokenizer, setup.config.batch_size
        sft_params = as_policy_params(programs, setup.sft.params)
        n_max = max(ns)
        proxy = np.zeros((len(setup.eval_prompts), n_max))
        gold = np.zeros((len(setup.eval_prompts), n_max))
        k = key
        for j in range(n_max):
            for i, (chunk, real) in enumerate(padded_chunks(setup.eval_prompts, batch_size)):
                start = i * batch_size
                ids, mask = setup.source.encode(chunk)
                k, k_gen = jax.random.split(k)
                gen = programs.generate(sft_params, ids, mask, k_gen)
                proxy[start:start + real, j] = np.asarray(programs.score(rm.params, gen, rm.norm["mean"],
                                                                         rm.norm["std"]))[:real]
                texts, ended = decode_responses(tokenizer, gen)
                gold[start:start + real, j] = [setup.gold_reward(p, y, bool(e))
                                               for p, y, e in zip(chunk, texts, ended)][:real]
        rows = best_of_n_curve(proxy, gold, ns)
        write_json(folder / "curve.json", rows)
        return rows

    return load_or_run(folder / "curve.json", lambda: read_json(folder / "curve.json"), run, resume)


class RLSetup:
    """What the RL stages from one SFT policy share: the prompt pool and held-out prompts
    (one prompt width), the reference (the SFT parameters) and each algorithm's compiled
    programs, made once. Reward models of one shape share the programs."""

    def __init__(self, config: RLHFConfig, sft: SFTStage, rm_model: TransformerLM, tokenizer, pool: Sequence[str],
                 eval_prompts: Sequence[str], gold_reward: Callable | None):
        self.config, self.sft, self.rm_model, self.tokenizer = config, sft, rm_model, tokenizer
        self.eval_prompts, self.gold_reward = list(eval_prompts), gold_reward
        self.source = PromptSource(tokenizer, pool, also=eval_prompts)
        self.max_new_tokens = min(config.max_new_tokens, sft.lm.config.max_len - self.source.width)
        if self.max_new_tokens <= 0:
            raise ValueError(f"sft.model.max_len: {sft.lm.config.max_len} leaves no room for a response after "
                             f"{self.source.width}-token prompts")
        self.ref_params = frozen_params(config, sft.params)
        self._programs: dict = {}

    def programs(self, algo: str):
        """The compiled programs of ``algo`` on these shapes."""
        if algo not in self._programs:
            self._programs[algo] = make_programs(
                dataclasses.replace(self.config, algo=algo), self.sft.lm.config, self.rm_model,
                prompt_len=self.source.width, max_new_tokens=self.max_new_tokens, eos_id=self.tokenizer.eos_id,
                pad_id=self.tokenizer.pad_id)
        return self._programs[algo]

    def evaluator(self, algo: str, rm: RewardModelStage) -> Callable:
        """``evaluate(params, key)``: ``algo``'s sampler on the held-out prompts, scored by
        ``rm``, the gold reward (if any) and the exact KL to the SFT policy."""
        programs, rm_params = self.programs(algo), frozen_params(self.config, rm.params)
        return lambda params, key: evaluate_policy(
            programs, params, ref_params=self.ref_params, tokenizer=self.tokenizer, prompts=self.source,
            eval_prompts=self.eval_prompts, key=key, batch_size=self.config.batch_size, rm_params=rm_params,
            rm_norm=rm.norm, gold_reward=self.gold_reward)


@dataclass
class PPOStage:
    history: list[dict]
    """Per-iteration metrics."""
    final: dict
    """The evaluation of the final policy on the held-out prompts."""


def ppo_stage(algo: str, setup: RLSetup, rm: RewardModelStage, folder: Path, *, reward: str, eval_key: jax.Array,
              checkpoint_every: int, show_progress: bool = True, resume: bool = False) -> tuple[PPOStage, bool]:
    """RLHF with ``algo`` (``ppo``, ``grpo`` or ``rloo``, with the setup's other settings) from
    the SFT policy against ``reward`` (``"proxy"``: the reward model ``rm``; ``"gold"``: the
    task's gold reward) into ``folder``: periodic ``checkpoints/`` (a resumed stage continues
    from its newest intact one), ``checkpoint/``, ``samples.json``, ``metrics.json`` and
    ``final.json`` (the marker, the final policy's evaluation on the held-out prompts)."""
    config = dataclasses.replace(setup.config, algo=algo)

    def run() -> PPOStage:
        programs, evaluate = setup.programs(algo), setup.evaluator(algo, rm)
        state = init_state(config, programs, setup.sft.params, rm.params)
        checkpoints = (RunCheckpoints(folder / "checkpoints", format=RUN_FORMAT, payload=RUN_PAYLOAD)
                       if checkpoint_every > 0 else None)
        bar = progress_bar(f"ppo ({reward})", not show_progress,
                           "gold {task.fields[gold]} proxy {task.fields[proxy]} kl {task.fields[kl]}")
        with bar:
            job = bar.add_task("ppo", total=config.iterations, gold="-", proxy="-", kl="-")
            result = train_rlhf(config, programs, state, ref_params=setup.ref_params, tokenizer=setup.tokenizer,
                                prompts=setup.source, rm_params=rm.params, rm_norm=rm.norm, reward=reward,
                                gold_reward=setup.gold_reward,
                                progress=lambda i, r: bar.update(job, completed=i + 1,
                                                                 gold=f"{r.get('gold_reward', nan):.3f}",
                                                                 proxy=f"{r['proxy_reward']:.3f}",
                                                                 kl=f"{r['kl_exact']:.2f}"),
                                checkpoints=checkpoints, checkpoint_every=checkpoint_every)
        final = evaluate(result.state.policy_params, eval_key)
        _clear(folder / "checkpoint")
        ckpt.save(folder / "checkpoint", result.state.policy_params, programs.policy, setup.tokenizer,
                  base=setup.sft.source)
        write_json(folder / "samples.json", final.pop("samples"))
        write_json(folder / "metrics.json", result.history)
        write_json(folder / "final.json", final)
        return PPOStage(result.history, final)

    def load() -> PPOStage:
        return PPOStage(read_json(folder / "metrics.json"), read_json(folder / "final.json"))

    return load_or_run(folder / "final.json", load, run, resume)


def sqrt_kl(history: list[dict]) -> list[float]:
    """sqrt of each iteration's exact KL to the SFT policy (the x axis of reward-vs-KL plots)."""
    return [math.sqrt(max(h["kl_exact"], 0.0)) for h in history]


def reward_vs_sqrt_kl(history: list[dict], reward: str, window: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A run's curve of ``reward`` against sqrt(KL), both averaged over a moving window of
    ``window`` iterations (shorter at the ends) and kept in iteration order: raw per-iteration
    points scribble back and forth where the policy jitters."""
    x, y = np.asarray(sqrt_kl(history)), np.asarray([h[reward] for h in history], dtype=float)
    half = window // 2
    smooth = lambda v: np.array([v[max(0, i - half):i + half + 1].mean() for i in range(len(v))])  # noqa: E731
    return smooth(x), smooth(y)


@dataclass
class DPOStage:
    lm: TransformerLM
    params: dict
    history: list[dict]
    skipped: int | None = None
    """Pairs too long for ``max_length``, left out; None when loaded."""


def dpo_stage(config: DPOConfig, tokenizer, prefs: Preferences, folder: Path, *, lm: TransformerLM, params,
              base: str | None = None, show_progress: bool = True, resume: bool = False) -> tuple[DPOStage, bool]:
    """DPO of the policy ``(lm, params)`` (also the reference; loaded from ``base``) on ``prefs``
    into ``folder``: ``checkpoint/``, ``accuracy.png`` (the implicit reward's held-out accuracy
    by epoch) and ``metrics.json`` (the marker). With LoRA the stage returns the adapters folded in."""
    def run() -> DPOStage:
        bar = progress_bar("dpo", not show_progress, LOSS)
        with bar:
            job = bar.add_task("dpo", total=None, loss="-")
            result = train_dpo(config, tokenizer, prefs.pairs, params=params, model=lm, where=prefs.where,
                               progress=lambda s, n, loss: bar.update(job, completed=s, total=n, loss=f"{loss:.3f}"),
                               checkpoints=supervised_checkpoints(folder), on_status=_say(bar))
        _clear(folder / "checkpoint")
        adapted = TransformerLM(lm.config, lm.lm_head, lm.scalar_head, lora=config.lora)
        ckpt.save(folder / "checkpoint", result.params, adapted, tokenizer, base=base)
        _clear(folder / "progress")  # the stage's checkpoint replaces them
        epochs = [h["epoch"] for h in result.history]
        plot_lines(folder / "accuracy.png", {"held-out": (epochs, [h["heldout_accuracy"] for h in result.history])},
                   xlabel="epoch", ylabel="implicit-reward accuracy", title="DPO")
        write_json(folder / "metrics.json", result.history)
        return DPOStage(lm, merged_model(adapted, result.params)[1], result.history, result.skipped)

    def load() -> DPOStage:
        loaded_lm, loaded, _ = ckpt.load(folder / "checkpoint")
        return DPOStage(loaded_lm, loaded, read_json(folder / "metrics.json"))

    return load_or_run(folder / "metrics.json", load, run, resume)


def reward_model_gold_correlation(task, lm: TransformerLM, lm_params, tokenizer, rm: RMResult, config: RMConfig,
                                  num_prompts: int = 256) -> float:
    """Spearman rank correlation between the reward model ``rm``'s scores and the task's gold
    reward, on responses the policy ``(lm, lm_params)`` samples for fresh prompts (none of them
    in a pair; the run's ``rl_pool`` and ``rm_dpo_samples`` seed streams)."""
    fresh = task.prompts(num_prompts, seed=prompt_seed(config.seed, "rl_pool"))
    sampling = SamplingConfig(max_new_tokens=new_token_room(tokenizer, fresh, lm.config.max_len, 40))
    texts, ended, _ = sample_responses(lm, lm_params, tokenizer, fresh, sampling,
                                       stream_key(config.seed, "rm_dpo_samples"))
    gold = [task.gold_reward(t, bool(e)) for t, e in zip(texts, ended)]
    scorer = RewardScorer(rm.model, rm.params, tokenizer, norm=rm.norm, max_length=config.max_length)
    scores = scorer.score(fresh, texts)
    return rank_correlation(scores, gold)


def policy_gold_before_after(task, lm: TransformerLM, ref_params, params, tokenizer, *, num_prompts: int,
                             seed: int) -> dict:
    """The task's gold reward of the reference policy ``ref_params`` and of ``params`` on the
    same fresh prompts and sampling key (the run's ``rl_pool`` and ``rm_dpo_samples`` streams),
    with the final policy's KL to the reference (nats per sequence) and EOS rate."""
    fresh = task.prompts(num_prompts, seed=prompt_seed(seed, "rl_pool"))
    key = stream_key(seed, "rm_dpo_samples")
    new = new_token_room(tokenizer, fresh, lm.config.max_len, 40)
    gold = lambda response, ended: task.gold_reward(response, ended)  # noqa: E731
    before = evaluate_policy_samples(lm, ref_params, ref_params, tokenizer, fresh, key, max_new_tokens=new,
                                     gold_reward=gold)
    after = evaluate_policy_samples(lm, params, ref_params, tokenizer, fresh, key, max_new_tokens=new,
                                    gold_reward=gold)
    return {"gold_reward_reference": before["gold_reward"], "gold_reward_final": after["gold_reward"],
            "kl_final": after["kl"], "eos_rate_final": after["eos_rate"]}
