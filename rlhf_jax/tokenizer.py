"""Tokenizers: a byte-level one with its own PAD/BOS/EOS ids, and a ``tokenizer.json`` loader.

Both share :class:`Tokenizer`'s batch API. Batches are numpy ``int32`` arrays with an
attention mask (1 = real token); padding goes on the left (what generation and RLHF
prompts need: every prompt ends at the same column) or on the right.

PAD never equals EOS: with PAD == EOS a reward model cannot tell the end
of a response from padding and its last-token pooling lands on the wrong token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class Batch:
    """``input_ids`` and ``attention_mask``, both ``int32 [B, L]``."""

    input_ids: np.ndarray
    attention_mask: np.ndarray


class Tokenizer:
    """What a tokenizer must provide: ``encode``, ``decode``, the special ids and ``vocab_size``."""

    pad_id: int
    bos_id: int | None
    """None: the tokenizer has no BOS token, and nothing is prepended (Qwen2)."""
    eos_id: int
    vocab_size: int

    @property
    def bos_ids(self) -> list[int]:
        """What goes before a prompt: ``[bos_id]``, or nothing without a BOS token."""
        return [] if self.bos_id is None else [self.bos_id]

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def check_special_ids(self) -> None:
        if self.pad_id == self.eos_id:
            raise ValueError(f"pad_id: PAD ({self.pad_id}) must differ from EOS ({self.eos_id}); "
                             "a reward model cannot find the end of a response otherwise")
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}: {value} is outside the vocabulary [0, {self.vocab_size})")

    def encode_batch(self, texts: Sequence[str], *, max_length: int | None = None, padding_side: str = "left",
                     add_bos: bool = False, add_eos: bool = False, truncation_side: str = "left") -> Batch:
        """Encodes and pads ``texts`` to the longest (or to ``max_length``, truncating longer ones).

        ``truncation_side="left"`` keeps a prompt's end (the part next to the response).
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: must be 'left' or 'right', got {padding_side!r}")
        if truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side: must be 'left' or 'right', got {truncation_side!r}")
        seqs = []
        for text in texts:
            ids = (self.bos_ids if add_bos else []) + self.encode(text) + ([self.eos_id] if add_eos else [])
            seqs.append(ids)
        return pad_sequences(seqs, self.pad_id, max_length=max_length, padding_side=padding_side,
                             truncation_side=truncation_side)

    def decode_batch(self, ids: np.ndarray, mask: np.ndarray | None = None, *, stop_at_eos: bool = True) -> list[str]:
        """Decodes each row's real tokens (mask 1, not special), up to the first EOS if ``stop_at_eos``."""
        ids = np.asarray(ids)
        mask = np.ones_like(ids) if mask is None else np.asarray(mask)
        special = {self.pad_id, self.bos_id, self.eos_id}
        out = []
        for row, row_mask in zip(ids, mask):
            tokens = []
            for token, real in zip(row.tolist(), row_mask.tolist()):
                if not real:
                    continue
                if token == self.eos_id and stop_at_eos:
                    break
                if token not in special:
                    tokens.append(token)
            out.append(self.decode(tokens))
        return out


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, *, max_length: int | None = None,
                  padding_side: str = "left", truncation_side: str = "left") -> Batch:
    """Pads token lists into a ``Batch``; sequences longer than ``max_length`` are cut on ``truncation_side``."""
    length = max((len(s) for s in seqs), default=0)
    if max_length is not None:
        length = max_length
    ids = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, seq in enumerate(seqs):
        seq = list(seq)
        if len(seq) > length:
            seq = seq[len(seq) - length:] if truncation_side == "left" else seq[:length]
        n = len(seq)
        if n == 0:
            continue
        cols = slice(length - n, length) if padding_side == "left" else slice(0, n)
        ids[i, cols] = seq
        mask[i, cols] = 1
    return Batch(ids, mask)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes are ids 0-255; PAD, BOS and EOS are 256, 257 and 258 (vocabulary 259)."""

    def __init__(self):
        self.pad_id, self.bos_id, self.eos_id = 256, 257, 258
        self.vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}

    def save_hf(self, folder) -> None:
        """This tokenizer as a ``tokenizer.json`` that transformers and :class:`JsonTokenizer`
        load with the same ids: byte-level BPE with the 256 bytes as its vocabulary (id = byte
        value) and no merges, then ``<pad>``, ``<s>``, ``</s>`` at 256-258; transformers'
        tokenizer puts ``<s>`` first when it adds special tokens."""
        import json
        from pathlib import Path

        if not has_tokenizers():
            raise ValueError("tokenizer: writing a tokenizer.json needs the `tokenizers` package: "
                             "pip install tokenizers")
        from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
        from tokenizers import Tokenizer as HFTokenizer

        as_char = pre_tokenizers.ByteLevel.alphabet()  # the 256 characters byte-level BPE writes bytes as
        byte_char = _bytes_to_unicode()
        assert set(byte_char.values()) == set(as_char)
        tok = HFTokenizer(models.BPE(vocab={byte_char[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True) for t in self.SPECIAL_TOKENS.values()])
        # transformers adds special tokens by default: BOS first, as our prompts and SFT examples have it.
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", self.bos_id)])
        folder = Path(folder)
        tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", **self.SPECIAL_TOKENS}, indent=2))


def has_tokenizers() -> bool:
    """Whether the optional ``tokenizers`` package is installed (``pip install ".[tokenizers]"``)."""
    import importlib.util

    return importlib.util.find_spec("tokenizers") is not None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable character for each byte (the byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


class JsonTokenizer(Tokenizer):
    """A user's ``tokenizer.json`` (Hugging Face ``tokenizers`` format), read from disk only.

    The special tokens are looked up by their strings; a missing one is an error naming it.
    Without a pad token, ``pad_id`` (a model's ``pad_token_id``) pads if it is neither EOS nor
    BOS, else a low id that is neither: masks, not ids, decide what is padding.
    """

    def __init__(self, path: str, *, pad_token: str | None = "<pad>", bos_token: str | None = "<s>",
                 eos_token: str = "</s>", pad_id: int | None = None):
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("loading tokenizer.json needs the `tokenizers` package: pip install tokenizers") from e
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:
            raise ValueError(f"{path}: not a readable tokenizer.json ({e})") from e
        self.path = str(path)
        self.special_tokens = {"pad_token": pad_token, "bos_token": bos_token, "eos_token": eos_token}
        ids = {}
        for field, token in (("pad_token", pad_token), ("bos_token", bos_token), ("eos_token", eos_token)):
            if token is None and field != "eos_token":
                ids[field] = None
                continue
            token_id = self._tok.token_to_id(token)
            if token_id is None:
                raise ValueError(f"{path}: {field} {token!r} is not in the vocabulary")
            ids[field] = token_id
        if ids["pad_token"] is None:  # e.g. GPT-2: pad with an id that is never taken for EOS or BOS
            taken = (ids["eos_token"], ids["bos_token"])
            if pad_id is not None and pad_id not in taken and self._tok.id_to_token(pad_id) is not None:
                ids["pad_token"] = pad_id  # the model's own choice (config.json's pad_token_id)
                self.special_tokens["pad_token"] = self._tok.id_to_token(pad_id)
            else:
                ids["pad_token"] = next(i for i in range(3) if i not in taken)
        self.pad_id, self.bos_id, self.eos_id = ids["pad_token"], ids["bos_token"], ids["eos_token"]
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.check_special_ids()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def save_hf(self, folder) -> None:
        """``tokenizer.json`` and a ``tokenizer_config.json`` naming the special tokens, as
        transformers reads them (a pad token only if the vocabulary has one)."""
        import json
        import shutil
        from pathlib import Path

        folder = Path(folder)
        shutil.copyfile(self.path, folder / "tokenizer.json")
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": self.special_tokens["eos_token"]}
        for key in ("bos_token", "pad_token"):
            if self.special_tokens[key] is not None:
                config[key] = self.special_tokens[key]
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def load_tokenizer(path: str | None = None, **special_tokens) -> Tokenizer:
    """The byte tokenizer, or the ``tokenizer.json`` at ``path``."""
    if path is None:
        return ByteTokenizer()
    return JsonTokenizer(path, **special_tokens)
