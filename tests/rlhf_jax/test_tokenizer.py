"""Byte tokenizer, padding sides, masks, and the tokenizer.json loader."""

import json

import numpy as np
import pytest

from rlhf_jax.tokenizer import ByteTokenizer, JsonTokenizer, pad_sequences

pytestmark = pytest.mark.timeout(60)


def test_byte_round_trip_and_distinct_specials():
    tok = ByteTokenizer()
    assert len({tok.pad_id, tok.bos_id, tok.eos_id}) == 3
    assert tok.pad_id != tok.eos_id
    text = "héllo, wörld"
    assert tok.decode(tok.encode(text)) == text
    assert all(0 <= i < 256 for i in tok.encode(text))


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_padding_and_masks(side):
    tok = ByteTokenizer()
    batch = tok.encode_batch(["ab", "abcd", ""], padding_side=side, add_bos=True, add_eos=True)
    assert batch.input_ids.shape == (3, 6) and batch.input_ids.dtype == np.int32
    np.testing.assert_array_equal(batch.attention_mask.sum(1), [4, 6, 2])
    row = batch.input_ids[0]
    if side == "left":
        np.testing.assert_array_equal(row, [tok.pad_id, tok.pad_id, tok.bos_id, 97, 98, tok.eos_id])
        np.testing.assert_array_equal(batch.attention_mask[0], [0, 0, 1, 1, 1, 1])
    else:
        np.testing.assert_array_equal(row, [tok.bos_id, 97, 98, tok.eos_id, tok.pad_id, tok.pad_id])
    assert tok.decode_batch(batch.input_ids, batch.attention_mask) == ["ab", "abcd", ""]


def test_decode_stops_at_eos_and_truncation_keeps_the_end():
    tok = ByteTokenizer()
    ids = np.array([[97, tok.eos_id, 98, tok.pad_id]])
    assert tok.decode_batch(ids) == ["a"]
    assert tok.decode_batch(ids, stop_at_eos=False) == ["ab"]
    batch = pad_sequences([[1, 2, 3, 4, 5]], tok.pad_id, max_length=3)
    np.testing.assert_array_equal(batch.input_ids, [[3, 4, 5]])


def test_bad_padding_side_is_a_clear_error():
    with pytest.raises(ValueError, match="padding_side"):
        ByteTokenizer().encode_batch(["a"], padding_side="middle")


def _write_tokenizer_json(path, pad="<pad>"):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "[UNK]": 3, "hello": 4, "world": 5}
    model = tokenizers.models.WordLevel(vocab, unk_token="[UNK]")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<pad>", "<s>", "</s>"])
    tok.save(str(path))
    return path


def test_json_tokenizer_loads_local_file(tmp_path):
    path = _write_tokenizer_json(tmp_path / "tokenizer.json")
    tok = JsonTokenizer(str(path))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.encode("hello world") == [4, 5]
    batch = tok.encode_batch(["hello", "hello world"], add_eos=True)
    np.testing.assert_array_equal(batch.input_ids, [[0, 4, 2], [4, 5, 2]])
    assert tok.decode_batch(batch.input_ids, batch.attention_mask) == ["hello", "hello world"]


def test_json_tokenizer_rejects_pad_equal_to_eos_and_missing_tokens(tmp_path):
    path = _write_tokenizer_json(tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match="pad_id"):
        JsonTokenizer(str(path), pad_token="</s>")
    with pytest.raises(ValueError, match="bos_token"):
        JsonTokenizer(str(path), bos_token="<bos>")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(ValueError, match="bad.json"):
        JsonTokenizer(str(bad))


def test_the_byte_tokenizer_exports_a_tokenizer_json_with_the_same_ids(tmp_path):
    """``rlhf-jax export`` of a byte-tokenizer model: the tokenizer.json it writes encodes and
    decodes every text as the byte tokenizer does, with the same special ids."""
    from rlhf_jax.hf import load_tokenizer as load_hf_tokenizer
    from rlhf_jax.tokenizer import ByteTokenizer

    byte = ByteTokenizer()
    byte.save_hf(tmp_path)
    exported = load_hf_tokenizer(tmp_path)
    assert (exported.pad_id, exported.bos_id, exported.eos_id, exported.vocab_size) == (256, 257, 258, 259)
    for text in ["What is 37+85?", " héllo\twörld\n", "日本語 ✓", "\x00\x7f", ""]:
        assert exported.encode(text) == byte.encode(text), text
        assert exported.decode(byte.encode(text)) == text
