"""``rlhf-jax sft | generate``: supervised fine-tuning and sampling from the command line (tyro)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhf_jax.sft import SFTConfig

USAGE = """usage: rlhf-jax {sft,generate} [--help] [options]

  sft        supervised fine-tuning on a built-in task or a JSONL file, write a run folder
  generate   sample responses from a checkpoint: rlhf-jax generate --checkpoint DIR --prompt TEXT
"""

TASKS = ("reviews",)


@dataclass(frozen=True)
class SFTArgs(SFTConfig):
    """Supervised fine-tuning: next-token loss on responses only. Writes a run folder."""

    task: str = "reviews"
    """Built-in offline task whose SFT corpus to use (ignored with --data)."""
    data: str | None = None
    """JSONL file with string fields 'prompt' and 'response' (one example per line)."""
    num_examples: int = 4096
    """Examples drawn from the task's generator."""
    tokenizer: str | None = None
    """A local tokenizer.json (default: the byte tokenizer)."""
    num_samples: int = 16
    """Responses sampled from the trained model at the end, saved in samples.json."""
    out: str | None = None
    """Run folder (created); default: a fresh folder under runs/."""
    no_progress: bool = False
    """Hide the progress bar."""


@dataclass(frozen=True)
class GenerateArgs:
    """Sample responses from a saved model."""

    checkpoint: str
    """Model checkpoint directory (a run folder's checkpoint/)."""
    prompt: tuple[str, ...] = ()
    """Prompt text; repeat the flag for several prompts."""
    num_samples: int = 1
    """Samples per prompt."""
    max_new_tokens: int | None = None
    """Tokens generated per response; default: as many as the context leaves, at most 48."""
    temperature: float = 1.0
    """Sampling temperature (> 0)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = all)."""
    top_p: float = 1.0
    """Nucleus: keep the most likely tokens up to this probability mass (1 = all)."""
    greedy: bool = False
    """Take the most likely token."""
    seed: int = 0
    """Sampling seed."""
    out: str | None = None
    """Run folder for samples.json; default: a fresh folder under runs/."""


def _fail(msg: str) -> None:
    print(f"rlhf-jax: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _sft_config(args: SFTArgs) -> SFTConfig:
    return SFTConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SFTConfig)})


def sample_texts(model, params, tokenizer, prompts: list[str], sampling, seed: int = 0):
    """Samples one response per prompt; returns (texts, ended_with_eos, lengths)."""
    import jax

    from rlhf_jax.sampling import make_generate

    batch = tokenizer.encode_batch(prompts, padding_side="left", add_bos=True)
    generate = make_generate(model, sampling, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    out = generate(params, batch.input_ids, batch.attention_mask, jax.random.PRNGKey(seed))
    response, mask = np.asarray(out.response), np.asarray(out.response_mask)
    ended = ((response == tokenizer.eos_id) & (mask == 1)).any(axis=1)
    return tokenizer.decode_batch(response, mask), ended, mask.sum(axis=1)


def run_sft(args: SFTArgs) -> dict:
    import jax
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ppo_jax.outputs import new_run_dir, plot_lines, write_json
    from rlhf_jax import checkpoint as ckpt
    from rlhf_jax.data import load_sft
    from rlhf_jax.sampling import SamplingConfig
    from rlhf_jax.sft import train_sft
    from rlhf_jax.tasks import reviews
    from rlhf_jax.tokenizer import load_tokenizer
    from rlhf_jax.transformer import TransformerLM

    config = _sft_config(args)
    config.validate()
    for name in ("num_examples", "num_samples"):
        if getattr(args, name) <= 0:
            raise ValueError(f"{name}: must be a positive integer, got {getattr(args, name)}")
    if args.data is None and args.task not in TASKS:
        raise ValueError(f"task: unknown task {args.task!r}; valid tasks: {', '.join(TASKS)}")
    if args.out and (Path(args.out) / "checkpoint").exists():
        raise FileExistsError(f"out: {args.out} already holds a run (checkpoint/); choose a new folder")
    tokenizer = load_tokenizer(args.tokenizer)
    if args.data is not None:
        prompts, responses = load_sft(args.data)
        source = {"data": str(args.data)}
    else:
        prompts, responses = reviews.sft_corpus(args.num_examples, seed=config.seed)
        source = {"task": args.task}

    run_dir = Path(args.out) if args.out else new_run_dir("runs", "sft")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**config.to_dict(), **source, "num_examples": len(prompts),
                                         "tokenizer": args.tokenizer})
    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]sft"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                   TimeElapsedColumn(), console=console, disable=args.no_progress)
    task = bar.add_task("sft", total=config.steps, loss="-")

    def progress(step, loss):
        if step % 10 == 0 or step + 1 == config.steps:
            bar.update(task, completed=step + 1, loss=f"{loss:.3f}")

    with bar:
        result = train_sft(config, tokenizer, prompts, responses, progress=progress)
    model = TransformerLM(config.model)
    write_json(run_dir / "metrics.json", {"train_loss": result.train_loss, "eval_step": result.eval_steps,
                                          "eval_loss": result.eval_loss})
    plot_lines(run_dir / "loss.png", {"train (per step)": (np.arange(1, config.steps + 1), result.train_loss),
                                      "held-out": (result.eval_steps, result.eval_loss)},
               xlabel="optimiser step", ylabel="cross-entropy per response token (nats)", title="SFT")
    ckpt.save(run_dir / "checkpoint", result.params, model, tokenizer)

    sample_prompts = list(prompts[: args.num_samples]) if args.data else reviews.prompts(args.num_samples, seed=1)
    max_new = max(1, min(48, config.model.max_len - max(len(tokenizer.encode(p)) + 1 for p in sample_prompts)))
    texts, ended, lengths = sample_texts(model, result.params, tokenizer, sample_prompts,
                                         SamplingConfig(max_new_tokens=max_new), seed=config.seed)
    samples = [{"prompt": p, "response": t, "ended_with_eos": bool(e)} for p, t, e in zip(sample_prompts, texts, ended)]
    if args.data is None:
        for s in samples:
            s["gold_reward"] = reviews.gold_reward(s["response"], s["ended_with_eos"])
    write_json(run_dir / "samples.json", samples)
    summary = {
        **source, "train_examples": len(prompts), "steps": config.steps,
        "final_train_loss": float(result.train_loss[-10:].mean()), "heldout_loss": result.eval_loss[-1],
        "eos_rate": float(np.mean(ended)), "mean_response_tokens": float(np.mean(lengths)),
        "wall_s": result.wall_s, "device": str(jax.devices()[0].platform), "run_dir": str(run_dir),
    }
    if args.data is None:
        summary["gold_reward_mean"] = float(np.mean([s["gold_reward"] for s in samples]))
    write_json(run_dir / "summary.json", summary)
    for s in samples[:4]:
        print(f"{s['prompt']!r} -> {s['response']!r}")
    print(f"held-out loss {summary['heldout_loss']:.3f} nats/token; EOS rate {summary['eos_rate']:.2f}; "
          f"{config.steps} steps in {result.wall_s:.1f} s")
    print(f"run folder: {run_dir}")
    return summary


def run_generate(args: GenerateArgs) -> list[dict]:
    from ppo_jax.outputs import new_run_dir, write_json
    from rlhf_jax import checkpoint as ckpt
    from rlhf_jax.sampling import SamplingConfig

    if not args.prompt:
        raise ValueError("prompt: give at least one --prompt")
    if args.num_samples <= 0:
        raise ValueError(f"num_samples: must be a positive integer, got {args.num_samples}")
    model, params, tokenizer = ckpt.load(args.checkpoint)
    prompts = [p for p in args.prompt for _ in range(args.num_samples)]
    longest = max(len(tokenizer.encode(p)) + 1 for p in prompts)
    max_new = args.max_new_tokens if args.max_new_tokens is not None else min(48, model.config.max_len - longest)
    if max_new <= 0 or longest + max_new > model.config.max_len:
        raise ValueError(f"max_new_tokens: a prompt of {longest} tokens plus {max_new} new tokens does not fit "
                         f"the model's context of {model.config.max_len}")
    sampling = SamplingConfig(max_new_tokens=max_new, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, greedy=args.greedy)
    sampling.validate(model.config.vocab_size)
    texts, ended, _ = sample_texts(model, params, tokenizer, prompts, sampling, seed=args.seed)
    samples = [{"prompt": p, "response": t, "ended_with_eos": bool(e)} for p, t, e in zip(prompts, texts, ended)]
    run_dir = Path(args.out) if args.out else new_run_dir("runs", "generate")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "samples.json", {"checkpoint": str(args.checkpoint), "sampling": dataclasses.asdict(sampling),
                                          "seed": args.seed, "samples": samples})
    for s in samples:
        print(f"{s['prompt']!r} -> {s['response']!r}{'' if s['ended_with_eos'] else ' [no EOS]'}")
    print(f"run folder: {run_dir}")
    return samples


def main(argv: list[str] | None = None) -> None:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    try:
        if command == "sft":
            run_sft(tyro.cli(SFTArgs, args=rest, prog="rlhf-jax sft"))
        elif command == "generate":
            run_generate(tyro.cli(GenerateArgs, args=rest, prog="rlhf-jax generate"))
        else:
            _fail(f"unknown command {command!r}; expected sft or generate")
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        _fail(str(err))


if __name__ == "__main__":
    main()
