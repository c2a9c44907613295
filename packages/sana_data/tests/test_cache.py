"""Feature cache: keyed by sample key (correct under shuffling), resumable, validated, mismatches refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sana_data import (
    AspectRatioBatchSampler,
    CachedFeatureDataset,
    CacheError,
    CacheMismatchError,
    CacheSpec,
    FeatureCache,
    FolderSource,
    ProportionRule,
    build_feature_cache,
    collate_features,
    get_table,
    resize_cover_crop,
    to_tensor,
)
from sana_data.testing import ToyAutoencoder, ToyTextEncoder

SPEC = CacheSpec(autoencoder="toy-ae-f8c4", text_encoder="toy-text-8", table="256")


class Counting:
    """Wraps an encoder to count how many images / prompts it encoded."""

    def __init__(self, encoder) -> None:
        self.encoder, self.calls = encoder, 0

    def __call__(self, x):
        self.calls += len(x)
        return self.encoder.encode(x)


def _build(source, root: Path, ae=None, text=None, **kw) -> FeatureCache:
    kw = {"batch_size": 3, "shard_size": 4, **kw}
    return build_feature_cache(source, root, encode_images=ToyAutoencoder() if ae is None else ae,
                               encode_text=text or ToyTextEncoder(), spec=SPEC, **kw)  # fmt: skip


def test_cache_is_correct_under_shuffling_and_workers(toy_dir: Path, tmp_path: Path) -> None:
    source = FolderSource(toy_dir, caption_suffixes=["_captions"])
    cache = _build(source, tmp_path / "cache")
    assert cache.spec.latent_channels == 4 and cache.spec.spatial_compression == 8
    assert (cache.spec.text_length, cache.spec.text_dim) == (16, 8)
    assert len(cache.shards) == 3 + 0 and len(cache.sample_keys()) == 12  # shard_size 4 -> 3 shards

    dataset = CachedFeatureDataset(cache, caption_rule=ProportionRule({"prompt": 1, "tags": 1, "long": 1}), seed=5)
    sampler = AspectRatioBatchSampler(dataset.bucket_keys(), 2, seed=11, drop_last=False)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_features, num_workers=2)
    ae, text_encoder, table = ToyAutoencoder(), ToyTextEncoder(), get_table("256")
    by_key = {source.info(i).key: i for i in range(len(source))}
    seen, types = 0, set()
    for batch in loader:
        assert batch["latent"].shape[0] == batch["text"].shape[0] == len(batch["key"])
        for k, key in enumerate(batch["key"]):
            raw = source.load(by_key[key])
            size = table[batch["aspect_ratio"][k]]
            expected = ae.encode(to_tensor(resize_cover_crop(raw.image, size))[None])[0]
            torch.testing.assert_close(batch["latent"][k], expected)  # this key's image, not a neighbour's
            emb, mask = text_encoder.encode([raw.captions[batch["caption_type"][k]]])
            assert batch["caption"][k] == raw.captions[batch["caption_type"][k]]
            torch.testing.assert_close(batch["text"][k], emb[0])
            assert torch.equal(batch["text_mask"][k], mask[0])
            types.add(batch["caption_type"][k])
            seen += 1
    assert seen == 12 and types == {"prompt", "tags", "long"}


def test_building_resumes_and_skips_done_samples(toy_dir: Path, tmp_path: Path) -> None:
    part = tmp_path / "part"
    shutil.copytree(toy_dir, part)
    for key in ("00000008", "00000009", "00000010", "00000011"):
        (part / f"{key}.txt").unlink()  # the "interrupted" run only saw 8 samples
    _build(FolderSource(part), tmp_path / "cache")
    ae = Counting(ToyAutoencoder())
    cache = _build(FolderSource(toy_dir), tmp_path / "cache", ae=ae)
    assert ae.calls == 1 + 4  # the probe + the four new samples only
    reference = _build(FolderSource(toy_dir), tmp_path / "reference")
    for key in reference.sample_keys():
        assert torch.equal(cache.latent(key), reference.latent(key))


def test_mismatched_cache_is_refused(toy_dir: Path, tmp_path: Path) -> None:
    source = FolderSource(toy_dir)
    cache = _build(source, tmp_path / "cache")
    with pytest.raises(CacheMismatchError, match="autoencoder"):
        FeatureCache(
            tmp_path / "cache", expect=CacheSpec(autoencoder="dc-ae-f32c32-sana-1.0", text_encoder="toy-text-8")
        )
    with pytest.raises(CacheMismatchError, match="table"):
        FeatureCache(tmp_path / "cache", expect=CacheSpec(autoencoder="toy-ae-f8c4", text_encoder="toy-text-8",
                                                          table="512"))  # fmt: skip
    with pytest.raises(CacheMismatchError, match="latent probe"):
        _build(source, tmp_path / "cache", ae=ToyAutoencoder(seed=1))  # same name, other weights
    with pytest.raises(CacheMismatchError, match="text probe"):
        cache.verify(ToyAutoencoder(), ToyTextEncoder(embed_dim=8, max_length=12))
    cache.verify(ToyAutoencoder(), ToyTextEncoder())  # the right encoders pass


def test_shapes_are_validated_on_read(toy_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    _build(FolderSource(toy_dir), root)
    index = json.loads((root / "index.json").read_text())
    key = sorted(index["entries"])[0]
    index["entries"][key]["size"] = [512, 512]
    (root / "index.json").write_text(json.dumps(index))
    cache = FeatureCache(root)
    with pytest.raises(CacheError, match="expected"):
        cache.latent(key)
    with pytest.raises(CacheError, match="missing"):
        cache.text(key, "no-such-caption-type")


def test_corrupt_images_are_skipped_while_caching(toy_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(toy_dir, data)
    png = (data / "00000004.png").read_bytes()
    (data / "00000004.png").write_bytes(png[: len(png) // 2])
    source = FolderSource(data)
    cache = _build(source, tmp_path / "cache")
    assert "00000004" not in cache.sample_keys() and len(cache.sample_keys()) == 11
    assert source.report.counts["corrupt image"] == 1


def test_bad_arguments_are_refused(toy_dir: Path, tmp_path: Path) -> None:
    source = FolderSource(toy_dir)
    with pytest.raises(ValueError, match="batch_size"):
        _build(source, tmp_path / "a", batch_size=0)
    with pytest.raises(ValueError, match="selects no caption"):
        _build(source, tmp_path / "b", caption_types=["no-such-type"])
    with pytest.raises(TypeError, match="callable"):
        _build(source, tmp_path / "c", ae=42)
    with pytest.raises(FileNotFoundError, match="no feature cache"):
        FeatureCache(tmp_path / "nothing")
