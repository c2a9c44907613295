"""The on-disk embedding cache: identical tensors back, invalidation by encoder identity, atomic shard writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sana_text import CachedTextEncoder, EmbeddingCache, TextEncoder, cache_key
from sana_text.testing import FakeTextEncoder, tiny_text_encoder

PROMPTS = ["a cat", "a busy city street at dusk", "一只猫 🐱"]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return tiny_text_encoder(dtype=torch.bfloat16, max_length=24)


def _same(a, b) -> None:
    assert a.embeddings.dtype == b.embeddings.dtype and a.mask.dtype == b.mask.dtype
    assert torch.equal(a.embeddings, b.embeddings) and torch.equal(a.mask, b.mask)


def test_cache_key_depends_on_every_field() -> None:
    base = {"model_id": "m", "revision": "r", "instruction": "chi", "max_length": "300", "dtype": "bfloat16"}
    key = cache_key(base, "a cat")
    assert key == cache_key(dict(reversed(base.items())), "a cat") and len(key) == 64
    assert cache_key(base, "a cat ") != key
    for field in base:
        assert cache_key({**base, field: base[field] + "x"}, "a cat") != key, field


def test_hits_are_bit_identical_to_fresh_encodes(encoder: TextEncoder, tmp_path: Path) -> None:
    cached = CachedTextEncoder(encoder, tmp_path / "cache")
    first = cached.encode(PROMPTS)
    assert (cached.hits, cached.misses) == (0, 3)
    second = cached.encode(PROMPTS)
    assert (cached.hits, cached.misses) == (3, 3)
    direct = encoder.encode(PROMPTS)
    _same(first, direct)
    _same(second, direct)
    assert cached.embed_dim == encoder.embed_dim and cached.max_length == 24


def test_persists_across_instances_and_reorders(encoder: TextEncoder, tmp_path: Path) -> None:
    CachedTextEncoder(encoder, tmp_path).encode(PROMPTS)
    again = CachedTextEncoder(encoder, EmbeddingCache(tmp_path))
    out = again.encode([PROMPTS[2], PROMPTS[0], PROMPTS[2]])
    assert again.misses == 0
    direct = encoder.encode(PROMPTS)
    assert torch.equal(out.embeddings[0], direct.embeddings[2]) and torch.equal(out.embeddings[1], direct.embeddings[0])
    assert torch.equal(out.embeddings[2], out.embeddings[0])


def test_mixed_hits_and_misses(encoder: TextEncoder, tmp_path: Path) -> None:
    cached = CachedTextEncoder(encoder, tmp_path)
    cached.encode(PROMPTS[:1])
    out = cached.encode(PROMPTS)
    assert (cached.hits, cached.misses) == (1, 3)
    _same(out, encoder.encode(PROMPTS))


def test_changed_instruction_model_or_length_misses(encoder: TextEncoder, tmp_path: Path) -> None:
    CachedTextEncoder(encoder, tmp_path).encode(PROMPTS)
    variants = [
        TextEncoder(encoder.model, encoder.tokenizer, chi="Describe: ", max_length=24),
        TextEncoder(encoder.model, encoder.tokenizer, max_length=25),
        TextEncoder(encoder.model, encoder.tokenizer, max_length=24, model_id="another-llm"),
        TextEncoder(encoder.model, encoder.tokenizer, max_length=24, model_id=encoder.model_id, revision="v2"),
    ]
    for variant in variants:
        cached = CachedTextEncoder(variant, tmp_path)
        out = cached.encode(PROMPTS)
        assert (cached.hits, cached.misses) == (0, 3)
        _same(out, variant.encode(PROMPTS))
    same = CachedTextEncoder(
        TextEncoder(encoder.model, encoder.tokenizer, max_length=24, model_id=encoder.model_id), tmp_path
    )
    same.encode(PROMPTS)
    assert same.hits == 3


def test_negative_prompts_are_cached_separately(encoder: TextEncoder, tmp_path: Path) -> None:
    cached = CachedTextEncoder(encoder, tmp_path)
    cond, neg = cached.encode(["a cat"]), cached.encode_negative(["a cat"])
    assert cached.misses == 2 and not torch.equal(cond.embeddings, neg.embeddings)
    _same(neg, encoder.encode_negative(["a cat"]))
    _same(cached.null_embedding(), encoder.null_embedding())


def test_freed_encoder_still_serves_hits(tmp_path: Path) -> None:
    encoder = tiny_text_encoder(max_length=16)
    cached = CachedTextEncoder(encoder, tmp_path)
    before = cached.encode(["a cat"])
    encoder.free()
    _same(cached.encode(["a cat"]), before)
    with pytest.raises(RuntimeError, match="freed"):
        cached.encode(["a dog"])


def test_warm_precomputes_in_batches(encoder: TextEncoder, tmp_path: Path) -> None:
    cached = CachedTextEncoder(encoder, tmp_path)
    assert cached.warm([*PROMPTS, PROMPTS[0]], batch_size=2) == 3
    assert len(list((tmp_path / "shards").glob("*.safetensors"))) == 2  # one shard per batch
    assert cached.warm(PROMPTS) == 0
    assert len(cached.cache) == 3


def test_shards_are_plain_safetensors(encoder: TextEncoder, tmp_path: Path) -> None:
    CachedTextEncoder(encoder, tmp_path).encode(PROMPTS[:2])
    (shard,) = (tmp_path / "shards").glob("*.safetensors")
    tensors = load_file(shard)
    assert len(tensors) == 4
    key = cache_key(encoder.fingerprint(), PROMPTS[0])
    assert tensors[f"{key}.embeddings"].shape == (24, 32) and tensors[f"{key}.embeddings"].dtype == torch.bfloat16
    records = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    assert records == [{"shard": shard.name, "keys": [key, cache_key(encoder.fingerprint(), PROMPTS[1])]}]
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_recovers_a_shard_whose_index_line_was_lost(encoder: TextEncoder, tmp_path: Path) -> None:
    CachedTextEncoder(encoder, tmp_path).encode(PROMPTS)
    (tmp_path / "index.jsonl").unlink()  # crash between the shard rename and the index append
    cached = CachedTextEncoder(encoder, tmp_path)
    _same(cached.encode(PROMPTS), encoder.encode(PROMPTS))
    assert cached.misses == 0
    cached.cache.rebuild_index()
    assert len(EmbeddingCache(tmp_path)) == 3 and (tmp_path / "index.jsonl").exists()


def test_ignores_a_torn_index_line(encoder: TextEncoder, tmp_path: Path) -> None:
    CachedTextEncoder(encoder, tmp_path).encode(PROMPTS[:1])
    with open(tmp_path / "index.jsonl", "a") as f:
        f.write('{"shard": "nothing.safetensors", "keys": ["abc"')  # crash mid-append
    cache = EmbeddingCache(tmp_path)
    assert len(cache) == 1 and "abc" not in cache
    cached = CachedTextEncoder(encoder, cache)
    cached.encode(PROMPTS)  # appending after the torn line still works
    assert len(EmbeddingCache(tmp_path)) == 3


def test_sees_entries_written_by_another_instance(encoder: TextEncoder, tmp_path: Path) -> None:
    reader, writer = CachedTextEncoder(encoder, tmp_path), CachedTextEncoder(encoder, tmp_path)
    writer.encode(PROMPTS)
    reader.encode(PROMPTS)
    assert reader.misses == 0


def test_deleted_shard_is_a_miss(encoder: TextEncoder, tmp_path: Path) -> None:
    cached = CachedTextEncoder(encoder, tmp_path)
    cached.encode(PROMPTS)
    for shard in (tmp_path / "shards").glob("*.safetensors"):
        shard.unlink()
    _same(cached.encode(PROMPTS), encoder.encode(PROMPTS))
    assert cached.misses == 6


def test_output_device_and_bad_input(encoder: TextEncoder, tmp_path: Path) -> None:
    cached = CachedTextEncoder(encoder, tmp_path, device="cpu")
    assert cached.encode("a cat").embeddings.device == torch.device("cpu")
    with pytest.raises(ValueError, match="empty"):
        cached.encode([""])
    with pytest.raises(TypeError):
        cached.encode([3])  # type: ignore[list-item]


def test_fake_encoder_is_cacheable(tmp_path: Path) -> None:
    fake = FakeTextEncoder(embed_dim=8, max_length=6)
    cached = CachedTextEncoder(fake, tmp_path)
    _same(cached.encode(PROMPTS), fake.encode(PROMPTS))
    _same(cached.encode(PROMPTS), fake.encode(PROMPTS))
    assert cached.hits == 3
