"""What the PyTorch peers of the RLHF benchmarks share: the reference shapes, the models and
prompts built from fixed seeds, a byte tokenizer, machine probes and the JSON line they print.

Runs only in a peer's venv (torch, transformers; ``setup_trl.sh``). The shapes are those of
``benchmarks/rlhf_iteration.py``: GPT-2 blocks (vocabulary 256, 4 layers, 4 heads, width 256,
context 128, no dropout), 64 prompts of 16 tokens, 48 new tokens at temperature 1 with no EOS,
4 epochs x 4 minibatches of 16.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

SHAPES = {"vocab": 256, "layers": 4, "heads": 4, "width": 256, "context": 128, "batch": 64, "prompt_len": 16,
          "new_tokens": 48, "epochs": 4, "minibatches": 4}
PAD = 0  # byte 0: the prompts never contain it


def gpt2_config(num_labels: int | None = None):
    """The reference GPT-2 shape, dropout off, no EOS (every response is ``new_tokens`` long)."""
    from transformers import GPT2Config

    extra = {} if num_labels is None else {"num_labels": num_labels}
    return GPT2Config(vocab_size=SHAPES["vocab"], n_layer=SHAPES["layers"], n_head=SHAPES["heads"],
                      n_embd=SHAPES["width"], n_positions=SHAPES["context"], resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, summary_first_dropout=0.0, bos_token_id=None, eos_token_id=None,
                      pad_token_id=PAD, **extra)


def build_models(seed: int = 0):
    """``(policy, reference, value, reward)``: the reference a copy of the policy, the value and
    reward models scalar heads on their own bodies; the reference and reward frozen."""
    import copy

    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(seed)
    policy = GPT2LMHeadModel(gpt2_config())
    reference = copy.deepcopy(policy)
    torch.manual_seed(seed + 1)
    value = GPT2ForSequenceClassification(gpt2_config(num_labels=1))
    torch.manual_seed(seed + 2)
    reward = GPT2ForSequenceClassification(gpt2_config(num_labels=1))
    for model in (policy, reference):
        model.generation_config.eos_token_id = None
        model.generation_config.bos_token_id = None
        model.generation_config.pad_token_id = PAD
    for model in (reference, reward):
        model.eval()
        model.requires_grad_(False)
    return policy, reference, value, reward


def random_prompts(seed: int = 0, n: int | None = None) -> torch.Tensor:
    """``[n, prompt_len]`` token ids in 1..255 (never the pad byte)."""
    g = torch.Generator().manual_seed(seed + 1234)
    return torch.randint(1, SHAPES["vocab"], (n or SHAPES["batch"], SHAPES["prompt_len"]), generator=g)


def build_byte_tokenizer():
    """A transformers tokenizer whose ids are the bytes themselves (no merges), byte 0 as both
    pad and EOS (TRL wants both set)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # The byte-level pre-tokenizer shows each byte as a printable character: the printable
    # Latin-1 bytes as themselves, the other 68 as the characters from 256 up, in byte order.
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    shown = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    core = Tokenizer(models.BPE(vocab={shown[b]: b for b in range(256)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=shown[0], eos_token=shown[0])
    tok.padding_side = "right"
    if tok("AB")["input_ids"] != [65, 66] or tok.pad_token_id != 0:
        raise RuntimeError("the byte tokenizer does not map bytes to their own ids")
    return tok


class CpuStat:
    """The machine's CPU use between construction and :meth:`report` (``/proc/stat``): a run
    that shared the CPU with other work, or lost time to the hypervisor (steal), shows."""

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                return [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None

    def report(self) -> dict:
        end = self._read()
        if self.start is None or end is None:
            return {}
        d = [b - a for a, b in zip(self.start, end)]
        total = sum(d) or 1
        return {"busy_pct": round(100.0 * (total - d[3] - d[4]) / total, 1),
                "steal_pct": round(100.0 * d[7] / total, 2), "loadavg_1m_end": os.getloadavg()[0]}


def calib_gflops(seconds: float = 0.3, n: int = 512) -> float:
    """float32 matmul speed now, in GFLOP/s: taken at a run's start and end, a slow or drifting
    machine shows."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return round(2 * n ** 3 * count / (time.perf_counter() - t0) / 1e9, 1)


def step_timer():
    """``(callback, times)``: a transformers ``TrainerCallback`` that appends
    ``time.perf_counter()`` to ``times`` when training begins and after every optimiser step."""
    from transformers import TrainerCallback

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    return StepTimer(), times


def quiet(trainer) -> None:
    """Removes a trainer's log printing and progress bar (they would mix with the JSON line)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_model() -> str:
    """The project's own reader (``ppo_jax/run/machine.py``, standard library only), loaded from
    its file: this venv has torch, not the project."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "ppo_jax", "run", "machine.py")
    spec = importlib.util.spec_from_file_location("_project_machine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cpu_model()


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu_model(),
           "nproc": os.cpu_count()}
    for name in ("transformers", "trl", "accelerate", "datasets", "peft", "tokenizers"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def argv_str() -> str:
    return " ".join(sys.argv[1:])


def emit(result: dict, out: str | None = None) -> None:
    """Prints the result as one JSON line (and appends it to ``out``)."""
    line = json.dumps(result)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
