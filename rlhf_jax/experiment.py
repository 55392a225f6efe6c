"""SFT, reward models, DPO, sampling and export into run folders: what ``rlhf-jax sft | rm |
dpo | generate | export`` call (``pipeline`` and ``overoptimization`` call
:func:`rlhf_jax.pipeline.run_pipeline` and :func:`rlhf_jax.overoptimization.run_overoptimization`).

Each function checks its inputs before it writes anything, then claims its folder and
writes its files; it returns what the command prints (the CLI parses, loads and prints).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from ppo_jax.run.interrupt import Interrupted, resume_hint
from ppo_jax.run.outputs import write_json
from ppo_jax.run.rundir import check_run_dir, claim_run_dir, open_run_dir, resumable_config
from ppo_jax.run.validation import require_finite, require_positive
from rlhf_jax import checkpoint as ckpt
from rlhf_jax.data import load_preferences, load_sft
from rlhf_jax.dpo import DPOConfig, check_dpo_pairs
from rlhf_jax.hf import load_pretrained, save_peft_adapter, save_pretrained
from rlhf_jax.preferences import bayes_accuracy, longest_prompt, new_token_room, sample_responses
from rlhf_jax.reward_model import RMConfig, calibration_bins, check_rm_pairs
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.sft import SFTConfig, check_sft_data, encode_examples
from rlhf_jax.stages import (
    SFT_TASKS,
    PairSampling,
    Preferences,
    StageClock,
    dpo_stage,
    policy_and_pairs,
    policy_gold_before_after,
    reward_model_gold_correlation,
    reward_model_stage,
    sft_stage,
    task_named,
)
from rlhf_jax.supervised import require_rows
from rlhf_jax.tokenizer import Tokenizer, load_tokenizer
from rlhf_jax.transformer import TransformerLM

GENERATE, SFT = "rlhf-jax generate", "rlhf-jax sft"


def sft_run(config: SFTConfig, *, task: str = "reviews", data: str | None = None, tokenizer: Tokenizer | None = None,
            init_params=None, num_examples: int = 4096, num_samples: int = 16, out: str | None = None,
            progress: bool = True, provenance: dict | None = None, resume: bool = False) -> tuple[dict, list[dict]]:
    """Supervised fine-tuning of ``config.model`` (from ``init_params`` when given, e.g. a
    pretrained model's) on the JSONL file ``data`` or, without it, ``num_examples`` examples of
    the built-in ``task``; then ``num_samples`` sampled responses. Writes ``config.json`` (with
    ``provenance``), the checkpoint, ``samples.json`` and ``summary.json`` into the run folder;
    returns ``(summary, samples)``."""
    config.validate()
    if num_examples <= 0 or num_samples <= 0:
        raise ValueError(f"num_examples, num_samples: must be positive integers, got {num_examples}, {num_samples}")
    task_ = None if data is not None else task_named(task, SFT_TASKS)
    command = SFT
    if out and not resume:
        check_run_dir(out, command, resumable=True)
    tokenizer = tokenizer or load_tokenizer(None)
    if data is not None:
        prompts, responses, where = load_sft(data)
        encode_examples(tokenizer, prompts, responses, config.max_length, where)  # errors name the line, up front
        source = {"data": str(data)}
    else:
        prompts, responses = task_.sft_corpus(num_examples, seed=config.seed)
        source = {"task": task}
    check_sft_data(config, tokenizer, len(prompts))  # before the folder: a failed check leaves none

    run_dir = open_run_dir(out, command, "sft", {**config.to_dict(), **source, "num_examples": len(prompts),
                                                 "num_samples": num_samples, **(provenance or {})}, resume=resume)
    with _resumable(run_dir, command):
        sft, _ = sft_stage(config, tokenizer, prompts, responses, run_dir, params=init_params,
                           base=(provenance or {}).get("pretrained"), show_progress=progress, resume=resume)

    sample_prompts = list(prompts[:num_samples]) if task_ is None else task_.prompts(num_samples, seed=1)
    max_new = max(1, new_token_room(tokenizer, sample_prompts, config.model.max_len, 48))
    texts, ended, lengths = sample_responses(sft.lm, sft.params, tokenizer, sample_prompts,
                                             SamplingConfig(max_new_tokens=max_new), jax.random.PRNGKey(config.seed))
    samples = [{"prompt": p, "response": t, "ended_with_eos": bool(e)} for p, t, e in zip(sample_prompts, texts, ended)]
    gold = getattr(task_, "gold_reward", None)  # a verifiable task's check needs its answer column instead
    if gold is not None:
        for s in samples:
            s["gold_reward"] = gold(s["response"], s["ended_with_eos"])
    write_json(run_dir / "samples.json", samples)
    summary = {
        **source, "train_examples": len(prompts), "steps": config.steps,
        "final_train_loss": float(sft.train_loss[-10:].mean()), "heldout_loss": sft.eval_loss[-1],
        "eos_rate": float(np.mean(ended)), "mean_response_tokens": float(np.mean(lengths)),
        "wall_s": sft.wall_s, "device": str(jax.devices()[0].platform), "run_dir": str(run_dir),
    }
    if gold is not None:
        summary["gold_reward_mean"] = float(np.mean([s["gold_reward"] for s in samples]))
    write_json(run_dir / "summary.json", summary)
    return summary, samples


def _resumable(run_dir: Path, command: str):
    """Ctrl-C inside a supervised command ends as one line: where it stands, how to go on."""
    return resume_hint(command, run_dir, lambda err: (
        f"the last checkpoint is {err.path} (step {err.step} of {err.total})" if isinstance(err, Interrupted)
        else "progress since the last periodic checkpoint is lost"))


def resume_sft(run_dir: str | Path, *, progress: bool = True) -> tuple[dict, list[dict]]:
    """Continues the killed ``rlhf-jax sft`` run in ``run_dir`` (from its newest periodic
    checkpoint; bit-identical to the uninterrupted run) with the settings it was started with."""
    config, kept = resumable_config(run_dir, SFT, SFTConfig.from_dict,
                                    keep=("task", "data", "num_examples", "num_samples", "tokenizer", "pretrained"))
    init_params, tokenizer = None, None
    if kept["pretrained"]:
        _, init_params, tokenizer = load_pretrained(kept["pretrained"])
    return sft_run(config, task=kept["task"] or "reviews", data=kept["data"],
                   tokenizer=tokenizer or load_tokenizer(kept["tokenizer"]), init_params=init_params,
                   num_examples=kept["num_examples"] or 4096, num_samples=kept["num_samples"] or 16, out=str(run_dir),
                   progress=progress, resume=True)


def generate_run(model: TransformerLM, params, tokenizer: Tokenizer, prompts: list[str], *, num_samples: int = 1,
                 max_new_tokens: int | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 greedy: bool = False, seed: int = 0, out: str | None = None, source: str = "") -> tuple[list, Path]:
    """``num_samples`` responses to each prompt, written with the sampling settings to the run
    folder's ``samples.json``; returns ``(samples, run_dir)``. ``max_new_tokens`` None: as
    many as the context leaves, at most 48."""
    check_generate(prompts, num_samples)
    require_policy(model, "checkpoint")
    if out:
        check_run_dir(out, GENERATE)
    prompts = [p for p in prompts for _ in range(num_samples)]
    longest = longest_prompt(tokenizer, prompts)
    max_new = (max_new_tokens if max_new_tokens is not None
               else new_token_room(tokenizer, prompts, model.config.max_len, 48))
    if max_new_tokens is None and max_new <= 0:
        raise ValueError(f"prompt: a prompt of {longest} tokens leaves no room for a response in the model's "
                         f"context of {model.config.max_len} tokens")
    if max_new <= 0 or longest + max_new > model.config.max_len:
        raise ValueError(f"max_new_tokens: a prompt of {longest} tokens plus {max_new} new tokens does not fit "
                         f"the model's context of {model.config.max_len}")
    sampling = SamplingConfig(max_new_tokens=max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                              greedy=greedy)
    sampling.validate(model.config.vocab_size)
    texts, ended, _ = sample_responses(model, params, tokenizer, prompts, sampling, jax.random.PRNGKey(seed))
    samples = [{"prompt": p, "response": t, "ended_with_eos": bool(e)} for p, t, e in zip(prompts, texts, ended)]
    run_dir = claim_run_dir(out, GENERATE, "generate")
    write_json(run_dir / "samples.json", {"checkpoint": source, "sampling": dataclasses.asdict(sampling),
                                          "seed": seed, "samples": samples})
    return samples, run_dir


def require_policy(model: TransformerLM, field: str) -> None:
    """Raises ValueError naming ``field`` unless ``model`` has a language-model head (a reward
    model's checkpoint has only a scalar one: it scores, it does not write)."""
    if not model.lm_head:
        raise ValueError(f"{field}: this is a reward model's checkpoint (a scalar head, no language-model head); "
                         f"give a policy's (an SFT, DPO or RL run)")


def check_generate(prompts: list[str], num_samples: int) -> None:
    """The request checks of :func:`generate_run` (the CLI makes them before loading a model)."""
    if not prompts:
        raise ValueError("prompt: give at least one --prompt")
    if num_samples <= 0:
        raise ValueError(f"num_samples: must be a positive integer, got {num_samples}")


def export_run(checkpoint: str, out: str, kind: str | None = None, adapter: bool = False) -> tuple[Path, str]:
    """Writes the model checkpoint ``checkpoint`` as a Hugging Face folder ``out`` (a new or
    empty folder) that transformers loads, a LoRA model's adapters folded into its weights;
    returns ``(folder, "ForCausalLM" or "ForSequenceClassification")``. With ``adapter``, a LoRA
    model's adapters alone as a PEFT adapter folder on its Hugging Face base instead."""
    check_run_dir(out, "rlhf-jax export")
    if adapter:
        base = ckpt.base_of(checkpoint)
        if base is None or ckpt.is_checkpoint(base) or not (Path(base) / "config.json").exists():
            raise ValueError(f"adapter: a PEFT adapter needs LoRA adapters trained on a Hugging Face model folder; "
                             f"{checkpoint}'s base is {base or 'not recorded (no LoRA, or saved whole)'}")
        model, params, _ = ckpt.load(checkpoint, adapters=True)
        return save_peft_adapter(out, model, params, base=base, kind=kind), "PEFT LoRA adapter"
    model, params, tokenizer = ckpt.load(checkpoint)
    folder = save_pretrained(out, model, params, tokenizer, kind=kind)
    return folder, "ForCausalLM" if model.lm_head else "ForSequenceClassification"


RM, DPO = "rlhf-jax rm", "rlhf-jax dpo"


@dataclass(frozen=True)
class PairSource:
    """Where ``rlhf-jax rm`` and ``dpo`` get their preference pairs."""

    task: str = "reviews"
    """Built-in task: its SFT policy samples response pairs that its gold reward labels (ignored with --data)."""
    data: str | None = None
    """JSONL preference file with string fields prompt, chosen, rejected (and optional numeric
    margin), or hh-rlhf's whole dialogues."""
    sft_steps: int = 600
    """With --task and neither --model nor --init: SFT steps to train the policy that samples the pairs."""
    num_pairs: int = 8000
    """With --task: pairs to sample and label (8000: the reward model's held-out accuracy within
    3 points of the Bayes ceiling)."""
    tau: float = 0.25
    """With --task: labeller temperature, P(y1 > y2) = sigmoid((r*(y1) - r*(y2)) / tau)."""
    flip_prob: float = 0.0
    """With --task: probability that a label is flipped."""

    def check_source(self) -> None:
        """The checks that need nothing loaded (the commands make them before loading a model)."""
        require_finite(self)
        if self.data is None:
            task_named(self.task)
        if self.num_pairs <= 1:
            raise ValueError(f"num_pairs: must be at least 2, got {self.num_pairs}")
        require_positive(self, "sft_steps", integer=True)


def _policy_source(provenance: dict | None) -> str | None:
    """The folder the starting policy was loaded from (``--model`` or ``--init``), if any."""
    return (provenance or {}).get("pretrained") or (provenance or {}).get("init")


def _policy_and_pairs(command: str, name: str, config, source: PairSource, policy: tuple | None, tokenizer,
                      out: str | None, progress: bool, provenance: dict | None, check: Callable, resume: bool):
    """The part ``rm_run`` and ``dpo_run`` share: the checks, a data file's pairs (errors name
    the line) read before anything is written, the run folder and its ``config.json``, then
    :func:`rlhf_jax.stages.policy_and_pairs` (SFT first when a task's pairs need a policy and
    none was given). ``check(config, tokenizer, pairs, where, model_config)`` is the trainer's
    data check, run on a file's pairs before the folder is made (a task's pairs: their count).
    With ``resume``, ``out`` is the killed run's folder and finished stages are loaded.
    Returns ``(run_dir, clock, task, policy, prefs, summary)``."""
    source.check_source()
    task = None if source.data is not None else task_named(source.task)
    if out and not resume:
        check_run_dir(out, command, resumable=True)
    file_pairs = Preferences(*load_preferences(source.data), bayes_accuracy=None) if source.data else None
    if file_pairs is not None:
        check(config, tokenizer, file_pairs.pairs, file_pairs.where, policy[0].config if policy else config.model)
    else:
        require_rows(source.num_pairs, config.heldout_fraction, config.batch_size, "pairs", at_least_one=True)
    run_dir = open_run_dir(out, command, name, {**config.to_dict(), "task": None if source.data else source.task,
                                                "data": source.data, **(provenance or {}),
                                                "num_pairs": source.num_pairs, "tau": source.tau,
                                                "flip_prob": source.flip_prob, "sft_steps": source.sft_steps},
                           resume=resume)
    sft_config = None if task is None else SFTConfig(model=config.model, steps=source.sft_steps,
                                                     max_length=config.max_length, seed=config.seed,
                                                     warmup_steps=min(50, source.sft_steps // 10))
    clock = StageClock()
    with _resumable(run_dir, command):
        sft, prefs = policy_and_pairs(clock, task, tokenizer, sft_config=sft_config, sft_folder=run_dir / "sft",
                                      pairs_folder=run_dir,
                                      sampling=PairSampling(source.num_pairs, source.tau, source.flip_prob, 40),
                                      seed=config.seed, policy=policy, file_pairs=file_pairs, show_progress=progress,
                                      resume=resume, policy_source=_policy_source(provenance))
    summary = {} if task is None else {"bayes_accuracy": prefs.bayes_accuracy}
    return run_dir, clock, task, sft, prefs, summary


def rm_run(config: RMConfig, source: PairSource = PairSource(), *, policy: tuple | None = None,
           tokenizer: Tokenizer | None = None, out: str | None = None, progress: bool = True,
           provenance: dict | None = None, log: Callable[[str], None] = print, resume: bool = False) -> dict:
    """A Bradley-Terry reward model on ``source``'s pairs, its body from the starting policy
    ``policy`` (``(lm, params)``; None: SFT on the task first, or from scratch on a file's pairs).
    Writes the pairs, the checkpoint, plots and ``summary.json`` into the run folder; returns the
    summary (held-out accuracy and loss, calibration, with a task the Bayes ceiling and the rank
    correlation with the gold reward on fresh samples). ``log`` gets a line when sequences
    were truncated."""
    config.validate()
    tokenizer = tokenizer or load_tokenizer(None)
    run_dir, clock, task, sft, prefs, summary = _policy_and_pairs(RM, "rm", config, source, policy, tokenizer, out,
                                                                  progress, provenance, check_rm_pairs, resume)
    with _resumable(run_dir, RM):
        rm = clock("reward_model", lambda: reward_model_stage(
            config, tokenizer, prefs, run_dir, init_params=sft.params if sft else None,
            model_config=sft.lm.config if sft else None, base=sft.source if sft else None, show_progress=progress,
            resume=resume))
    result = rm.result
    if result.truncated:
        log(f"rm: {result.truncated} of {2 * len(prefs.pairs)} sequences were longer than "
            f"max_length={config.max_length} and were truncated (prompt start first, EOS kept; "
            f"--overlong reject makes this an error)")
    last = result.history[-1]
    summary.update({
        "train_pairs": len(prefs.pairs) - len(result.heldout_index), "heldout_pairs": len(result.heldout_index),
        "heldout_accuracy": last["heldout_accuracy"], "heldout_loss": last["heldout_loss"],
        "heldout_expected_accuracy": last.get("heldout_expected_accuracy"),
        "heldout_reward_gap": last["heldout_reward_gap"], "truncated_sequences": result.truncated,
        "calibration": calibration_bins(*result.heldout_scores), "reward_norm": result.norm, "run_dir": str(run_dir),
        "device": str(jax.devices()[0].platform),
    })
    if task is not None:
        summary["heldout_bayes_accuracy"] = bayes_accuracy([prefs.pairs[i]["label_prob"]
                                                            for i in result.heldout_index])
        summary["gold_rank_correlation"] = clock.timed("evaluation", lambda: reward_model_gold_correlation(
            task, sft.lm, sft.params, tokenizer, result, config))
    summary["wall_s"] = clock.wall
    write_json(run_dir / "summary.json", summary)
    return summary


def dpo_run(config: DPOConfig, source: PairSource = PairSource(), *, policy: tuple | None = None,
            tokenizer: Tokenizer | None = None, eval_prompts: int = 256, out: str | None = None,
            progress: bool = True, provenance: dict | None = None, log: Callable[[str], None] = print,
            resume: bool = False) -> dict:
    """DPO of the starting policy ``policy`` (``(lm, params)``; None: SFT on the task first) on
    ``source``'s pairs; with a task, the gold reward and KL of the policy before and after on
    ``eval_prompts`` fresh prompts. Writes the pairs, the checkpoint, plots and ``summary.json``
    into the run folder; returns the summary. ``log`` gets a line when pairs were left out."""
    config.validate()
    if eval_prompts <= 0:
        raise ValueError(f"eval_prompts: must be a positive integer, got {eval_prompts}")
    if source.data is not None and policy is None:
        raise ValueError("init: DPO on your data starts from a policy: give --init (our SFT checkpoint) or --model")
    tokenizer = tokenizer or load_tokenizer(None)
    provenance = {**(provenance or {}), "eval_prompts": eval_prompts}
    run_dir, clock, task, sft, prefs, summary = _policy_and_pairs(DPO, "dpo", config, source, policy, tokenizer,
                                                                  out, progress, provenance, check_dpo_pairs, resume)
    with _resumable(run_dir, DPO):
        dpo = clock("dpo", lambda: dpo_stage(config, tokenizer, prefs, run_dir, lm=sft.lm, params=sft.params,
                                             base=sft.source,
                                             show_progress=progress, resume=resume))
    if dpo.skipped:
        log(f"dpo: {dpo.skipped} of {len(prefs.pairs)} pairs had a response longer than max_length="
            f"{config.max_length} and were left out (--overlong reject makes this an error)")
    summary["skipped_pairs"] = dpo.skipped
    summary.update({k: v for k, v in dpo.history[-1].items() if k.startswith("heldout_")})
    summary.update(heldout_accuracy_before=dpo.history[0]["heldout_accuracy"], run_dir=str(run_dir),
                   device=str(jax.devices()[0].platform))
    if task is not None:
        summary.update(clock.timed("evaluation", lambda: policy_gold_before_after(
            task, sft.lm, sft.params, dpo.params, tokenizer, num_prompts=eval_prompts, seed=config.seed)))
    summary["wall_s"] = clock.wall
    write_json(run_dir / "summary.json", summary)
    return summary


def _resume_preference_run(run_dir: str | Path, command: str, config_class):
    """What ``--resume`` of ``rm`` or ``dpo`` reads back: ``(config, source, policy, tokenizer,
    kept)`` from the run's ``config.json``, the starting policy loaded again."""
    names = ("task", "data", "num_pairs", "tau", "flip_prob", "sft_steps", "init", "pretrained", "tokenizer",
             "eval_prompts")
    config, kept = resumable_config(run_dir, command, config_class.from_dict, keep=names)
    source = PairSource(**{k: kept[k] for k in ("task", "data", "num_pairs", "tau", "flip_prob", "sft_steps")
                           if kept[k] is not None})
    if kept["pretrained"]:
        lm, params, tokenizer = load_pretrained(kept["pretrained"])
        return config, source, (TransformerLM(lm.config.with_runtime_of(config.model)), params), tokenizer, kept
    if kept["init"]:
        lm, params, tokenizer = ckpt.load(kept["init"])
        return config, source, (lm, params), tokenizer, kept
    return config, source, None, load_tokenizer(kept["tokenizer"]), kept


def resume_rm(run_dir: str | Path, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Continues the killed ``rlhf-jax rm`` run in ``run_dir``: finished stages are loaded, the
    reward model goes on from its newest periodic checkpoint (bit-identical)."""
    config, source, policy, tokenizer, _ = _resume_preference_run(run_dir, RM, RMConfig)
    return rm_run(config, source, policy=policy, tokenizer=tokenizer, out=str(run_dir), progress=progress, log=log,
                  resume=True)


def resume_dpo(run_dir: str | Path, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Continues the killed ``rlhf-jax dpo`` run in ``run_dir`` as :func:`resume_rm` does."""
    config, source, policy, tokenizer, kept = _resume_preference_run(run_dir, DPO, DPOConfig)
    return dpo_run(config, source, policy=policy, tokenizer=tokenizer, eval_prompts=kept["eval_prompts"] or 256,
                   out=str(run_dir), progress=progress, log=log, resume=True)
