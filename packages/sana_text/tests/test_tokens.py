"""Token selection of spec §5.3 on the real (tiny) tokenizer, without running a model."""

from __future__ import annotations

import pytest
import torch

from sana_text import COMPLEX_HUMAN_INSTRUCTION, instruction_length, select_index, sequence_length, tokenize
from sana_text.testing import tiny_tokenizer


def test_select_index_is_bos_plus_last_positions() -> None:
    index = select_index(300)
    assert len(index) == 300
    assert index[0] == 0 and index[1] == -299 and index[-1] == -1
    assert index[1:] == list(range(-299, 0))
    # On a sequence of L_all positions these are 0 and L_all-299 .. L_all-1, in order.
    positions = torch.arange(1000)[index]
    assert positions[0] == 0 and positions[1] == 701 and torch.equal(positions[1:], torch.arange(701, 1000))


def test_sequence_length() -> None:
    assert sequence_length(0, 300) == 300  # CHI off: plain 300 tokens
    assert sequence_length(100, 300) == 398  # n_chi + 300 - 2 ("magic 2": BOS and the trailing-space token)


def test_instruction_length_counts_bos(tokenizer) -> None:
    ids = tokenizer(COMPLEX_HUMAN_INSTRUCTION)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert instruction_length(tokenizer, COMPLEX_HUMAN_INSTRUCTION) == len(ids)
    assert instruction_length(tokenizer, "") == 0
    qwen_style = tiny_tokenizer(add_bos=False)
    n = len(qwen_style(COMPLEX_HUMAN_INSTRUCTION)["input_ids"])
    assert instruction_length(qwen_style, COMPLEX_HUMAN_INSTRUCTION, prepend_bos=True) == n + 1


def test_tokenize_pads_right_to_exact_length(tokenizer) -> None:
    batch = tokenize(tokenizer, ["a cat", "a busy city street at dusk"], 12)
    assert batch.input_ids.shape == batch.attention_mask.shape == (2, 12)
    assert batch.input_ids.dtype == batch.attention_mask.dtype == torch.int64
    assert (batch.input_ids[:, 0] == tokenizer.bos_token_id).all()
    for ids, mask in zip(batch.input_ids, batch.attention_mask):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # 1...1 0...0: right padding
        assert (ids[n:] == tokenizer.pad_token_id).all()
    assert batch.dropped == (0, 0)


def test_tokenize_truncates_the_end_and_counts_dropped(tokenizer) -> None:
    text = "a photo of an astronaut riding a horse on the moon, digital art"
    full = tokenizer(text)["input_ids"]
    batch = tokenize(tokenizer, [text, "a cat"], 6)
    assert batch.input_ids[0].tolist() == full[:6]  # the start is kept, the end is cut
    assert batch.dropped == (len(full) - 6, 0)


def test_tokenize_truncates_the_end_even_for_a_left_truncating_tokenizer() -> None:
    tok = tiny_tokenizer()
    tok.truncation_side = "left"
    text = COMPLEX_HUMAN_INSTRUCTION + "a cat"
    batch = tokenize(tok, [text], 20)
    assert batch.input_ids[0].tolist() == tok(text)["input_ids"][:20]
    assert tok.truncation_side == "left"  # restored


def test_tokenize_prepends_bos_for_tokenizers_without_it() -> None:
    tok = tiny_tokenizer(add_bos=False)
    plain = tok("a cat")["input_ids"]
    assert plain[0] != tok.bos_token_id
    batch = tokenize(tok, ["a cat"], 10, prepend_bos=True)
    assert batch.input_ids[0, : len(plain) + 1].tolist() == [tok.bos_token_id, *plain]
    assert int(batch.attention_mask.sum()) == len(plain) + 1
    assert tokenize(tok, ["a cat"], len(plain), prepend_bos=True).dropped == (1,)


@pytest.mark.parametrize("length", [1, 2, 5])
def test_tokenize_handles_tiny_lengths(tokenizer, length: int) -> None:
    batch = tokenize(tokenizer, ["a cat sleeping"], length)
    assert batch.input_ids.shape == (1, length)
    assert batch.input_ids[0, 0] == tokenizer.bos_token_id
