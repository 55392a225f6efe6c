"""``rlhf-jax sft | rm | dpo | rl | pipeline | overoptimization | generate | export``: tyro subcommands over
the config dataclasses.

``sft``, ``rm``, ``dpo``, ``pipeline`` and ``overoptimization`` run the stage functions of :mod:`rlhf_jax.stages`."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

import numpy as np
import tyro

from ppo_jax.run.validation import renamed_fields, require_finite, require_positive
from rlhf_jax.dpo import DPOConfig
from rlhf_jax.experiment import PairSource
from rlhf_jax.overoptimization import OveroptimizationConfig
from rlhf_jax.pipeline import PipelineConfig
from rlhf_jax.ppo_trainer import RLHFConfig
from rlhf_jax.reward_model import RMConfig
from rlhf_jax.rl import RLSource
from rlhf_jax.sft import SFTConfig
from rlhf_jax.transformer import TransformerConfig


@dataclass(frozen=True)
class SFTArgs(SFTConfig):
    """Supervised fine-tuning on a built-in task or a JSONL file (next-token loss on responses
    only). Writes a run folder."""

    model: str | None = None
    """A local Hugging Face folder (config.json, safetensors, tokenizer.json: gpt2, llama, qwen2 or
    mistral) to fine-tune, with its tokenizer; nothing is downloaded."""
    transformer: TransformerConfig = field(default_factory=lambda: SFTConfig().model)
    """The transformer trained from scratch (ignored with --model, which brings its own)."""
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
    """Run folder: a new or empty folder (nothing in it is replaced); default: a fresh folder under runs/."""
    no_progress: bool = False
    """Hide the progress bar."""
    resume: str | None = None
    """Continue the killed run in this folder from its newest periodic checkpoint (with its own
    config.json; other flags are ignored)."""


@dataclass(frozen=True)
class PolicyAndPairsArgs(PairSource):
    """The flags of a command that starts from a policy and learns from preference pairs."""

    model: str | None = None
    """A local Hugging Face folder (gpt2, llama, qwen2 or mistral) to start from, with its tokenizer
    (instead of --init; with --task it also samples the pairs)."""
    init: str | None = None
    """Our SFT checkpoint to start from (a run folder or its checkpoint/; with --task it also
    samples the pairs)."""
    transformer: TransformerConfig = field(default_factory=lambda: SFTConfig().model)
    """With --task and neither --model nor --init: the shape of the policy SFT trains first."""
    tokenizer: str | None = None
    """A local tokenizer.json for a policy trained from scratch (default: the byte tokenizer)."""
    out: str | None = None
    """Run folder: a new or empty folder (nothing in it is replaced); default: a fresh folder under runs/."""
    no_progress: bool = False
    """Hide the progress bars."""
    resume: str | None = None
    """Continue the killed run in this folder: finished stages are loaded, the one in progress goes on
    from its newest periodic checkpoint (with its own config.json; other flags are ignored)."""


@dataclass(frozen=True)
class RMArgs(PolicyAndPairsArgs, RMConfig):
    """A Bradley-Terry reward model on preference pairs (a task's, sampled and labelled, or a
    JSONL file), its body from the starting policy. Writes a run folder."""


@dataclass(frozen=True)
class DPOArgs(PolicyAndPairsArgs, DPOConfig):
    """Direct preference optimisation of a policy on preference pairs (a file's, or a task's
    sampled and labelled), no reward model. Writes a run folder."""

    eval_prompts: int = 256
    """With --task: fresh prompts on which the policy and the reference are scored."""


@dataclass(frozen=True)
class GenerateArgs:
    """Sample responses from a checkpoint or a Hugging Face folder."""

    checkpoint: str | None = None
    """Model checkpoint directory (a run folder, or its checkpoint/)."""
    model: str | None = None
    """A local Hugging Face folder to sample from instead (gpt2, llama, qwen2 or mistral)."""
    prompt: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
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


@dataclass(frozen=True)
class ResumableRunArgs:
    """The flags of a command whose run folder can be resumed."""

    out: str | None = None
    """Run folder: a new or empty folder (nothing in it is replaced); default: a fresh folder under runs/."""
    no_progress: bool = False
    """Hide the progress bars."""
    resume: str | None = None
    """Continue the killed run in this folder (with its own config.json; other flags are ignored)."""


def _run_or_resume(args: ResumableRunArgs, config_class, run, resume) -> dict:
    """``resume(folder)`` with ``--resume``; else the config of ``args``, checked before any folder
    is made or anything compiles, then ``run(config, out)``."""
    if args.resume:
        return resume(args.resume, show_progress=not args.no_progress)
    config = config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)})
    config.validate()
    return run(config, args.out, show_progress=not args.no_progress)


@dataclass(frozen=True)
class PipelineArgs(PipelineConfig, ResumableRunArgs):
    """SFT -> preference pairs -> reward model -> PPO (proxy and gold) and best-of-n, on a
    built-in task or your data. Writes one run folder."""


def run_pipeline_command(args: PipelineArgs) -> dict:
    from rlhf_jax.pipeline import resume_pipeline, run_pipeline

    summary = _run_or_resume(args, PipelineConfig, run_pipeline, resume_pipeline)
    run_dir = summary["run_dir"]
    keys = ("gold_reward_sft", "gold_reward_final", "proxy_reward_final", "kl_final", "rm_heldout_accuracy",
            "bayes_accuracy")
    shown = {k: summary.get(k) for k in keys}
    print("  ".join(f"{k} {v:.3f}" for k, v in shown.items() if isinstance(v, float) and np.isfinite(v)))
    print(f"run folder: {run_dir}")
    return summary


@dataclass(frozen=True)
class OveroptimizationArgs(OveroptimizationConfig, ResumableRunArgs):
    """Reward over-optimisation (Gao et al. 2022): reward models on fewer and more preference
    pairs, RL against each with little or no KL penalty, gold and proxy reward against
    sqrt(KL) in one plot. Writes one run folder."""


def run_overoptimization_command(args: OveroptimizationArgs) -> dict:
    from rlhf_jax.overoptimization import resume_overoptimization, run_overoptimization

    summary = _run_or_resume(args, OveroptimizationConfig, run_overoptimization, resume_overoptimization)
    print(f"run folder: {summary['run_dir']}")
    return summary


def _fail(error: str | Exception, code: int = 2) -> None:
    from ppo_jax.run.rundir import command_failed

    print(f"rlhf-jax: error: {error}", file=sys.stderr)
    command_failed(error, code)  # the run folder marked failed (reusable), or --resume after a failed save


def _config_of(cls, args, model_config):
    """The library config ``cls`` of CLI ``args``, with ``model_config`` as its transformer."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name != "model"}
    config = cls(model=model_config, **values)
    try:
        config.validate()
    except ValueError as err:  # the library's model.* fields are set by --transformer.* here
        renamed = renamed_fields(str(err), lambda name: "transformer." + name.removeprefix("model.")
                                 if name.startswith("model.") else name)
        raise ValueError(renamed or str(err)) from None
    return config


def _load_hf(path: str):
    from rlhf_jax.hf import load_pretrained

    return load_pretrained(path)


@dataclass(frozen=True)
class ExportArgs:
    """Write a model checkpoint as a Hugging Face folder that transformers loads."""

    checkpoint: str
    """Model checkpoint (a run folder, or its checkpoint/); a byte-tokenizer model gets a byte-level tokenizer.json."""
    out: str
    """A new or empty folder for config.json, model.safetensors and the tokenizer files."""
    kind: str | None = None
    """model_type to write: gpt2 for arch gpt2; llama (default), qwen2 or mistral for arch llama."""
    adapter: bool = False
    """A LoRA model (trained on a Hugging Face folder): write its adapters as a PEFT adapter folder
    (adapter_config.json, adapter_model.safetensors) instead of the merged model."""


def run_export(args: ExportArgs) -> None:
    from rlhf_jax.experiment import export_run

    folder, kind = export_run(args.checkpoint, args.out, args.kind, args.adapter)
    print(f"wrote a {kind if args.adapter else '...' + kind} folder: {folder}")


def run_sft(args: SFTArgs) -> dict:
    from rlhf_jax.experiment import resume_sft, sft_run
    from rlhf_jax.tokenizer import load_tokenizer

    if args.resume:
        summary, samples = resume_sft(args.resume, progress=not args.no_progress)
        return _report_sft(summary, samples)
    require_finite(args)
    pretrained = _load_hf(args.model) if args.model else None
    config = _config_of(SFTConfig, args, pretrained[0].config.with_runtime_of(args.transformer) if pretrained
                        else args.transformer)
    config.validate()
    require_positive(args, "num_examples", "num_samples", integer=True)
    summary, samples = sft_run(config, task=args.task, data=args.data,
                      tokenizer=pretrained[2] if pretrained else load_tokenizer(args.tokenizer),
                      init_params=pretrained[1] if pretrained else None, num_examples=args.num_examples,
                      num_samples=args.num_samples, out=args.out, progress=not args.no_progress,
                      provenance={"tokenizer": args.tokenizer, "pretrained": args.model})
    return _report_sft(summary, samples)


def _report_sft(summary: dict, samples: list[dict]) -> dict:
    for s in samples[:4]:
        print(f"{s['prompt']!r} -> {s['response']!r}")
    print(f"held-out loss {summary['heldout_loss']:.3f} nats/token; EOS rate {summary['eos_rate']:.2f}; "
          f"{summary['steps']} steps in {summary['wall_s']:.1f} s")
    print(f"run folder: {summary['run_dir']}")
    return summary


def _starting_policy(args: PolicyAndPairsArgs, config, command: str):
    """Checks the flags that need nothing loaded and the run folder, then loads the starting
    policy: ``(policy, tokenizer)``, ``policy`` ``(lm, params)`` from ``--model`` (a Hugging Face
    folder) or ``--init`` (our checkpoint), None when neither is given."""
    from ppo_jax.run.rundir import check_run_dir
    from rlhf_jax import checkpoint as ckpt
    from rlhf_jax.experiment import require_policy
    from rlhf_jax.tokenizer import load_tokenizer
    from rlhf_jax.transformer import TransformerLM

    require_finite(args)
    config.validate()
    args.check_source()
    if args.model and args.init:
        raise ValueError("model: give --model (a Hugging Face folder) or --init (our checkpoint), not both")
    if args.out:
        check_run_dir(args.out, command)
    if args.model is not None:
        lm, params, tokenizer = _load_hf(args.model)
        return (TransformerLM(lm.config.with_runtime_of(args.transformer)), params), tokenizer
    if args.init is not None:
        lm, params, tokenizer = ckpt.load(args.init)
        require_policy(lm, "init")
        return (lm, params), tokenizer
    return None, load_tokenizer(args.tokenizer)


def _provenance(args: PolicyAndPairsArgs) -> dict:
    """Where the starting policy and tokenizer came from, for config.json (and --resume)."""
    return {"init": args.init, "pretrained": args.model, "tokenizer": args.tokenizer}


def _pair_source(args: PolicyAndPairsArgs) -> PairSource:
    return PairSource(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PairSource)})


def run_rm(args: RMArgs) -> dict:
    from rlhf_jax.experiment import RM, resume_rm, rm_run

    if args.resume:
        summary = resume_rm(args.resume, progress=not args.no_progress)
    else:
        config = _config_of(RMConfig, args, args.transformer)
        policy, tokenizer = _starting_policy(args, config, RM)
        summary = rm_run(config, _pair_source(args), policy=policy, tokenizer=tokenizer, out=args.out,
                         progress=not args.no_progress, provenance=_provenance(args))
    msg = f"held-out accuracy {summary['heldout_accuracy']:.3f}"
    if "bayes_accuracy" in summary:
        msg += (f" (expected {summary['heldout_expected_accuracy']:.3f} under the labeller's probabilities, "
                f"Bayes ceiling {summary['heldout_bayes_accuracy']:.3f} on the same pairs; rank correlation with "
                f"the gold reward {summary['gold_rank_correlation']:.2f})")
    print(msg)
    print(f"run folder: {summary['run_dir']}")
    return summary


def run_dpo(args: DPOArgs) -> dict:
    from rlhf_jax.experiment import DPO, dpo_run, resume_dpo

    if args.resume:
        summary = resume_dpo(args.resume, progress=not args.no_progress)
    else:
        config = _config_of(DPOConfig, args, args.transformer)
        require_positive(args, "eval_prompts", integer=True)
        if args.data is not None and args.model is None and args.init is None:
            raise ValueError("init: DPO on your data starts from a policy: give --init (our SFT checkpoint) or "
                             "--model")
        policy, tokenizer = _starting_policy(args, config, DPO)
        summary = dpo_run(config, _pair_source(args), policy=policy, tokenizer=tokenizer,
                          eval_prompts=args.eval_prompts, out=args.out, progress=not args.no_progress,
                          provenance=_provenance(args))
    msg = (f"held-out implicit-reward accuracy {summary['heldout_accuracy']:.3f} (margin "
           f"{summary['heldout_margin']:.3f}, log-prob drift chosen {summary['heldout_chosen_logp_drift']:.2f}, "
           f"rejected {summary['heldout_rejected_logp_drift']:.2f})")
    if "gold_reward_final" in summary:
        msg += (f"; gold reward {summary['gold_reward_reference']:.3f} -> {summary['gold_reward_final']:.3f} "
                f"at KL {summary['kl_final']:.2f} nats/sequence")
    print(msg)
    print(f"run folder: {summary['run_dir']}")
    return summary


@dataclass(frozen=True)
class RLArgs(RLSource, RLHFConfig):
    """Reinforcement learning on your policy (--model) with your reward: Python reward functions
    (--reward module:function, repeatable) on a prompt file (--prompts) or a built-in verifiable
    task (--task arithmetic), or a reward model (--reward-model). PPO, GRPO or RLOO with the
    GRPO family's options (DAPO, GSPO, CISPO: see docs/rlhf.md). Writes a run folder."""

    algo: str = "grpo"
    """'grpo' (group-normalised advantages), 'rloo' (leave-one-out baseline) or 'ppo' (needs
    --value-model policy-head with reward functions)."""
    reward: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
    """A reward function, module:function or path/to/file.py:function; repeat the flag for several."""
    out: str | None = None
    """Run folder: a new or empty folder (nothing in it is replaced); default: a fresh folder under runs/."""
    no_progress: bool = False
    """Hide the progress bar."""
    resume: str | None = None
    """Continue the killed run in this folder from its newest checkpoint (with its own config.json;
    other flags are ignored)."""


def run_rl(args: RLArgs) -> dict:
    from rlhf_jax.rl import resume_rl, rl_run

    if args.resume:
        summary = resume_rl(args.resume, progress=not args.no_progress)
    else:  # rl_run checks both and the folder before it loads anything
        config = RLHFConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RLHFConfig)})
        source = RLSource(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RLSource)})
        summary = rl_run(config, source, out=args.out, progress=not args.no_progress)
    print(f"run folder: {summary['run_dir']}")
    return summary


def run_generate(args: GenerateArgs) -> list[dict]:
    from ppo_jax.run.rundir import check_run_dir
    from rlhf_jax import checkpoint as ckpt
    from rlhf_jax.experiment import GENERATE, check_generate, generate_run

    check_generate(list(args.prompt), args.num_samples)
    require_finite(args)
    if (args.checkpoint is None) == (args.model is None):
        both = args.checkpoint is not None
        raise ValueError(f"checkpoint: give --checkpoint (our checkpoint) or --model (a Hugging Face folder)"
                         f"{', not both' if both else ''}")
    if args.out:
        check_run_dir(args.out, GENERATE)
    model, params, tokenizer = ckpt.load(args.checkpoint) if args.checkpoint else _load_hf(args.model)
    samples, run_dir = generate_run(model, params, tokenizer, list(args.prompt), num_samples=args.num_samples,
                                    max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    top_k=args.top_k, top_p=args.top_p, greedy=args.greedy, seed=args.seed,
                                    out=args.out, source=str(args.checkpoint or args.model))
    for s in samples:
        print(f"{s['prompt']!r} -> {s['response']!r}{'' if s['ended_with_eos'] else ' [no EOS]'}")
    print(f"run folder: {run_dir}")
    return samples


COMMANDS = {"sft": (SFTArgs, run_sft), "rm": (RMArgs, run_rm), "dpo": (DPOArgs, run_dpo),
            "pipeline": (PipelineArgs, run_pipeline_command), "generate": (GenerateArgs, run_generate),
            "overoptimization": (OveroptimizationArgs, run_overoptimization_command),
            "rl": (RLArgs, run_rl), "export": (ExportArgs, run_export)}


def main(argv: list[str] | None = None) -> None:
    import warnings

    import tyro

    from ppo_jax.run import compile_cache
    from ppo_jax.run.configure import configure
    from ppo_jax.run.interrupt import terminate_as_interrupt
    from ppo_jax.run.rundir import start_command

    configure()  # before anything starts JAX's backend
    warnings.formatwarning = lambda message, *_: f"rlhf-jax: warning: {message}\n"  # a line, not a source line
    compile_cache.enable()
    terminated = terminate_as_interrupt()
    start_command()
    args = tyro.extras.subcommand_cli_from_dict({name: cls for name, (cls, _) in COMMANDS.items()}, prog="rlhf-jax",
                                                args=sys.argv[1:] if argv is None else argv,
                                                description="SFT, reward models and RLHF-PPO in JAX.")
    run = next(run for cls, run in COMMANDS.values() if type(args) is cls)
    try:
        run(args)
    except (ValueError, OSError) as err:
        _fail(err)
    except FloatingPointError as err:  # a diverged run: the message names the iteration and checkpoint
        _fail(err, 1)
    except Exception as err:  # a bug: its traceback follows; the folder must not block a rerun
        from ppo_jax.run.rundir import mark_failed

        mark_failed(f"{type(err).__name__}: {err}")
        raise
    except KeyboardInterrupt as err:
        # One line, not a traceback: where the run stands and how to continue it.
        print(f"rlhf-jax: {err}" if str(err) else "rlhf-jax: interrupted", file=sys.stderr)
        raise SystemExit(143 if terminated() else 130) from None


if __name__ == "__main__":
    main()
