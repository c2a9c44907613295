"""`sana_text.testing`: the fake encoder other packages' tests rely on, and the tiny builders."""

from __future__ import annotations

import pytest
import torch

from sana_text import TextEncoder, encode_for_guidance
from sana_text.testing import FakeTextEncoder, tiny_tokenizer


def test_fake_encoder_protocol_and_shapes() -> None:
    fake = FakeTextEncoder(embed_dim=12, max_length=5, dtype=torch.bfloat16)
    assert (fake.embed_dim, fake.max_length) == (12, 5)
    emb, mask = fake.encode(["a cat", "a dog on a mat in the sun"])
    assert emb.shape == (2, 5, 12) and emb.dtype == torch.bfloat16
    assert mask.dtype == torch.int64
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]  # <bos> + words, truncated to max_length


def test_fake_encoder_is_deterministic_and_batch_invariant() -> None:
    a = FakeTextEncoder().encode(["a cat", "a dog"])
    b = FakeTextEncoder().encode(["a dog"])
    assert torch.equal(a.embeddings[1], b.embeddings[0])
    assert not torch.equal(a.embeddings[0], a.embeddings[1])
    assert torch.equal(a.embeddings[0, 1], a.embeddings[1, 1])  # the same word "a" gives the same vector


def test_fake_encoder_negative_and_null() -> None:
    fake = FakeTextEncoder(embed_dim=4, max_length=4)
    null = fake.null_embedding()
    assert null.embeddings.shape == (1, 4, 4) and null.mask.tolist() == [[1, 0, 0, 0]]
    assert not torch.equal(fake.encode(["a cat"]).embeddings, fake.encode_negative(["a cat"]).embeddings)
    cond, uncond = encode_for_guidance(fake, ["a cat", "a dog"])
    assert torch.equal(uncond.mask, cond.mask) and torch.equal(uncond.embeddings[0], null.embeddings[0])


def test_fake_encoder_bad_input() -> None:
    fake = FakeTextEncoder()
    with pytest.raises(ValueError, match="empty"):
        fake.encode([""])
    with pytest.raises(TypeError):
        fake.encode([None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_length"):
        FakeTextEncoder(max_length=1)


def test_tiny_tokenizer_round_trips_through_from_pretrained(tmp_path) -> None:
    from transformers import AutoTokenizer

    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "A Cat 一只猫 🐱"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text  # byte fallback: lossless
    assert (loaded.bos_token_id, loaded.pad_token_id, loaded.eos_token_id) == (2, 0, 1)


def test_real_and_fake_encoders_agree_on_the_protocol(tokenizer, gemma_lm) -> None:
    real = TextEncoder(gemma_lm.get_decoder(), tokenizer, max_length=8)
    fake = FakeTextEncoder(embed_dim=real.embed_dim, max_length=8)
    for encoder in (real, fake):
        emb, mask = encoder.encode(["a cat"])
        assert emb.shape == (1, encoder.max_length, encoder.embed_dim)
        assert mask.shape == (1, encoder.max_length) and mask.dtype == torch.int64
        assert mask[0, 0] == 1
