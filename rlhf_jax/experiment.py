"""SFT, sampling and export into run folders: what ``rlhf-jax sft | generate | export`` call.

Each function checks its inputs before it writes anything, then claims its folder and
writes its files; it returns what the command prints (the CLI parses, loads and prints).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from ppo_jax.run.outputs import write_json
from ppo_jax.run.rundir import check_run_dir, claim_run_dir
from rlhf_jax import checkpoint as ckpt
from rlhf_jax.data import load_sft
from rlhf_jax.hf import save_pretrained
from rlhf_jax.preferences import longest_prompt, new_token_room, sample_responses
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.sft import SFTConfig, encode_examples
from rlhf_jax.stages import sft_stage, task_named
from rlhf_jax.tokenizer import Tokenizer, load_tokenizer
from rlhf_jax.transformer import TransformerLM

GENERATE = "rlhf-jax generate"


def sft_run(config: SFTConfig, *, task: str = "reviews", data: str | None = None, tokenizer: Tokenizer | None = None,
            init_params=None, num_examples: int = 4096, num_samples: int = 16, out: str | None = None,
            progress: bool = True, provenance: dict | None = None) -> tuple[dict, list[dict]]:
    """Supervised fine-tuning of ``config.model`` (from ``init_params`` when given, e.g. a
    pretrained model's) on the JSONL file ``data`` or, without it, ``num_examples`` examples of
    the built-in ``task``; then ``num_samples`` sampled responses. Writes ``config.json`` (with
    ``provenance``), the checkpoint, ``samples.json`` and ``summary.json`` into the run folder;
    returns ``(summary, samples)``."""
    config.validate()
    if num_examples <= 0 or num_samples <= 0:
        raise ValueError(f"num_examples, num_samples: must be positive integers, got {num_examples}, {num_samples}")
    task_ = None if data is not None else task_named(task)
    command = "rlhf-jax sft"
    if out:
        check_run_dir(out, command)
    tokenizer = tokenizer or load_tokenizer(None)
    if data is not None:
        prompts, responses, where = load_sft(data)
        encode_examples(tokenizer, prompts, responses, config.max_length, where)  # errors name the line, up front
        source = {"data": str(data)}
    else:
        prompts, responses = task_.sft_corpus(num_examples, seed=config.seed)
        source = {"task": task}

    run_dir = claim_run_dir(out, command, "sft")
    write_json(run_dir / "config.json", {**config.to_dict(), **source, "num_examples": len(prompts),
                                         **(provenance or {})})
    sft, _ = sft_stage(config, tokenizer, prompts, responses, run_dir, params=init_params, show_progress=progress)

    sample_prompts = list(prompts[:num_samples]) if task_ is None else task_.prompts(num_samples, seed=1)
    max_new = max(1, new_token_room(tokenizer, sample_prompts, config.model.max_len, 48))
    texts, ended, lengths = sample_responses(sft.lm, sft.params, tokenizer, sample_prompts,
                                             SamplingConfig(max_new_tokens=max_new), jax.random.PRNGKey(config.seed))
    samples = [{"prompt": p, "response": t, "ended_with_eos": bool(e)} for p, t, e in zip(sample_prompts, texts, ended)]
    if task_ is not None:
        for s in samples:
            s["gold_reward"] = task_.gold_reward(s["response"], s["ended_with_eos"])
    write_json(run_dir / "samples.json", samples)
    summary = {
        **source, "train_examples": len(prompts), "steps": config.steps,
        "final_train_loss": float(sft.train_loss[-10:].mean()), "heldout_loss": sft.eval_loss[-1],
        "eos_rate": float(np.mean(ended)), "mean_response_tokens": float(np.mean(lengths)),
        "wall_s": sft.wall_s, "device": str(jax.devices()[0].platform), "run_dir": str(run_dir),
    }
    if task_ is not None:
        summary["gold_reward_mean"] = float(np.mean([s["gold_reward"] for s in samples]))
    write_json(run_dir / "summary.json", summary)
    return summary, samples


def generate_run(model: TransformerLM, params, tokenizer: Tokenizer, prompts: list[str], *, num_samples: int = 1,
                 max_new_tokens: int | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 greedy: bool = False, seed: int = 0, out: str | None = None, source: str = "") -> tuple[list, Path]:
    """``num_samples`` responses to each prompt, written with the sampling settings to the run
    folder's ``samples.json``; returns ``(samples, run_dir)``. ``max_new_tokens`` None: as
    many as the context leaves, at most 48."""
    check_generate(prompts, num_samples)
    if out:
        check_run_dir(out, GENERATE)
    prompts = [p for p in prompts for _ in range(num_samples)]
    longest = longest_prompt(tokenizer, prompts)
    max_new = (max_new_tokens if max_new_tokens is not None
               else new_token_room(tokenizer, prompts, model.config.max_len, 48))
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


def check_generate(prompts: list[str], num_samples: int) -> None:
    """The request checks of :func:`generate_run` (the CLI makes them before loading a model)."""
    if not prompts:
        raise ValueError("prompt: give at least one --prompt")
    if num_samples <= 0:
        raise ValueError(f"num_samples: must be a positive integer, got {num_samples}")


def export_run(checkpoint: str, out: str, kind: str | None = None) -> tuple[Path, str]:
    """Writes the model checkpoint ``checkpoint`` as a Hugging Face folder ``out`` (a new or
    empty folder) that transformers loads; returns ``(folder, "ForCausalLM" or
    "ForSequenceClassification")``."""
    check_run_dir(out, "rlhf-jax export")
    model, params, tokenizer = ckpt.load(checkpoint)
    folder = save_pretrained(out, model, params, tokenizer, kind=kind)
    return folder, "ForCausalLM" if model.lm_head else "ForSequenceClassification"
