"""Precomputed autoencoder latents and text embeddings, keyed by sample key (spec §6.5; user needs #8).

The encoders come in as plain callables or protocol-shaped objects (anything with an `encode` method):

- images: `(B, 3, H, W)` float in [-1, 1] -> raw latents `(B, C_z, H/f, W/f)`;
- text: `list[str]` -> `(embeddings (B, L, D_txt), mask (B, L))`.

Layout of a cache folder:

- `features-000000.safetensors`, ...: tensors named `<key>::latent`, `<key>::text::<caption type>`,
  `<key>::mask::<caption type>`;
- `index.json`: the `CacheSpec` it was built with and, **per sample key**, its shard, bucket, size, captions and
  clip scores. Never a loader step: the diffusers LoRA script pairs latents with the wrong captions because its
  cache is indexed by step under a reshuffled loader;
- `probe.safetensors`: the encoders' outputs on a fixed probe image and prompt. Opening the cache with other
  encoders, or another bucket table, is refused (`CacheMismatchError`) instead of silently training on
  mismatched features.

Building is resumable: samples already in the index are skipped, and the index is rewritten atomically after
each shard, so a killed run loses at most one unfinished shard.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .buckets import get_table, resize_cover_crop, to_tensor
from .captions import CaptionRule, PowerRule, select_caption
from .dataset import default_resample, sample_seed, source_buckets
from .records import ImageTextSource, RawSample, SkipReport, logger
from .sidecars import read_json, write_json_atomic

CACHE_FORMAT = 1
INDEX_FILE = "index.json"
PROBE_FILE = "probe.safetensors"
PROBE_PROMPT = "a red circle to the left of a blue square"
PROBE_SIZE = 64  # probe image side; any autoencoder with f <= 64 maps it to at least one latent pixel
PROBE_RTOL, PROBE_ATOL = 1e-2, 1e-3  # tolerant of device/kernel noise, far below any change of model

ImageEncoder = Callable[[torch.Tensor], torch.Tensor]
TextEncoderFn = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]


class CacheError(ValueError):
    """A cache file whose content does not match its index (wrong shape, missing tensor)."""


class CacheMismatchError(CacheError):
    """A cache built with another autoencoder, text encoder or bucket table than the one asked for."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache was built with. `autoencoder`/`text_encoder` are the caller's names for the models
    (include a version or checkpoint hash); dimensions are measured on the probe when building."""

    autoencoder: str
    text_encoder: str
    table: str = "512"
    latent_channels: int = 0
    spatial_compression: int = 0
    text_length: int = 0
    text_dim: int = 0


def as_encoder(obj: Any) -> Callable[..., Any]:
    """An object with an `encode` method (the protocols) or a plain callable."""
    encode = getattr(obj, "encode", None)
    if callable(encode):
        return encode
    if callable(obj):
        return obj
    raise TypeError(f"expected a callable or an object with .encode, got {type(obj).__name__}")


def probe_image() -> torch.Tensor:
    """A fixed, smooth but non-trivial image: (1, 3, PROBE_SIZE, PROBE_SIZE) in [-1, 1]."""
    axis = torch.linspace(-1.0, 1.0, PROBE_SIZE)
    y, x = torch.meshgrid(axis, axis, indexing="ij")  # (S, S) each
    channels = [torch.sin(3.0 * x + 1.0), torch.cos(2.0 * y - x), x * y]
    return torch.stack(channels)[None].clamp(-1, 1)  # (1, 3, S, S)


@torch.no_grad()
def _probe(encode_images: ImageEncoder, encode_text: TextEncoderFn) -> dict[str, torch.Tensor]:
    # Probes are stored and compared in fp32 whatever the encoders' dtype: bf16 rounding must not look like a new model.
    latent = encode_images(probe_image()).float().cpu()  # (1, C_z, S/f, S/f)
    text, mask = encode_text([PROBE_PROMPT])  # (1, L, D_txt), (1, L)
    return {"latent": latent.contiguous(), "text": text.float().cpu().contiguous(), "mask": mask.cpu().contiguous()}


def _spec_from_probe(spec: CacheSpec, probe: dict[str, torch.Tensor]) -> CacheSpec:
    _, c, h, _ = probe["latent"].shape
    _, length, dim = probe["text"].shape
    return replace(spec, latent_channels=c, spatial_compression=PROBE_SIZE // h, text_length=length, text_dim=dim)


def _check_probe(stored: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> None:
    for name in ("latent", "text"):
        same = stored[name].shape == fresh[name].shape and torch.allclose(
            stored[name], fresh[name], rtol=PROBE_RTOL, atol=PROBE_ATOL
        )
        if not same:
            raise CacheMismatchError(
                f"the cache's {name} probe differs from the given encoder's output: it was built with another "
                f"{'autoencoder' if name == 'latent' else 'text encoder'}; use a new cache folder"
            )


class FeatureCache:
    """Read access to a feature cache, validating every tensor's shape against the index and the spec."""

    def __init__(self, root: str | os.PathLike, *, expect: CacheSpec | None = None) -> None:
        self.root = Path(root)
        if not (self.root / INDEX_FILE).exists():
            raise FileNotFoundError(f"no feature cache at {self.root} (missing {INDEX_FILE})")
        index = read_json(self.root / INDEX_FILE)
        if index.get("format") != CACHE_FORMAT:
            raise CacheError(f"cache format {index.get('format')} at {self.root}; this sana_data reads {CACHE_FORMAT}")
        self.spec = CacheSpec(**index["spec"])
        self.entries: dict[str, dict[str, Any]] = index["entries"]
        self.shards: list[str] = index["shards"]
        if expect is not None:
            check_spec(self.spec, expect)
        self._handles: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}  # safetensors handles don't pickle; workers reopen lazily

    def sample_keys(self) -> list[str]:
        return sorted(self.entries)

    def _get(self, shard: str, name: str) -> torch.Tensor:
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.root / shard), framework="pt")
        try:
            return self._handles[shard].get_tensor(name)
        except Exception as exc:  # safetensors raises SafetensorError for a missing name
            raise CacheError(f"{name!r} missing from {self.root / shard}") from exc

    def latent(self, key: str) -> torch.Tensor:
        """Raw latent of `key`: (C_z, H/f, W/f), H x W being its bucket size."""
        entry = self.entries[key]
        latent = self._get(entry["shard"], f"{key}::latent")
        f = self.spec.spatial_compression
        expected = (self.spec.latent_channels, entry["size"][0] // f, entry["size"][1] // f)
        if tuple(latent.shape) != expected:
            raise CacheError(f"latent of {key!r} has shape {tuple(latent.shape)}, expected {expected}")
        return latent

    def text(self, key: str, caption_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embedding (L, D_txt) and mask (L,) of one caption of `key`."""
        shard = self.entries[key]["shard"]
        text = self._get(shard, f"{key}::text::{caption_type}")
        mask = self._get(shard, f"{key}::mask::{caption_type}")
        expected = (self.spec.text_length, self.spec.text_dim)
        if tuple(text.shape) != expected or tuple(mask.shape) != expected[:1]:
            raise CacheError(f"text of {key!r}/{caption_type} has shape {tuple(text.shape)}, expected {expected}")
        return text, mask

    def verify(self, encode_images: Any, encode_text: Any) -> None:
        """Refuse (`CacheMismatchError`) if these encoders are not the ones the cache was built with."""
        stored = load_file(str(self.root / PROBE_FILE))
        _check_probe(stored, _probe(as_encoder(encode_images), as_encoder(encode_text)))


def check_spec(found: CacheSpec, expect: CacheSpec) -> None:
    """Compare declared fields; zero dimensions in `expect` mean "don't care"."""
    diffs = [
        f"{name}: cache has {value!r}, expected {getattr(expect, name)!r}"
        for name, value in asdict(found).items()
        if getattr(expect, name) not in (0, value)
    ]
    if diffs:
        raise CacheMismatchError("feature cache built with another configuration: " + "; ".join(diffs))


# --- Building -------------------------------------------------------------------------------------------------


class _ShardWriter:
    """Accumulates tensors and index entries; flushes a shard and rewrites the index atomically."""

    def __init__(self, root: Path, index: dict[str, Any], shard_size: int) -> None:
        self.root, self.index, self.shard_size = root, index, shard_size
        self.tensors: dict[str, torch.Tensor] = {}
        self.pending: dict[str, dict[str, Any]] = {}

    def add(self, key: str, tensors: dict[str, torch.Tensor], entry: dict[str, Any]) -> None:
        self.tensors.update({f"{key}::{name}": t.contiguous().clone() for name, t in tensors.items()})
        self.pending[key] = entry
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"features-{len(self.index['shards']):06d}.safetensors"
        save_file(self.tensors, str(self.root / name))
        self.index["shards"].append(name)
        for key, entry in self.pending.items():
            self.index["entries"][key] = {**entry, "shard": name}
        write_json_atomic(self.root / INDEX_FILE, self.index)
        self.tensors, self.pending = {}, {}


def _open_for_build(root: Path, spec: CacheSpec, probe: dict[str, torch.Tensor]) -> dict[str, Any]:
    if (root / INDEX_FILE).exists():
        cache = FeatureCache(root, expect=spec)
        _check_probe(load_file(str(root / PROBE_FILE)), probe)
        logger.info("resuming feature cache %s (%d samples done)", root, len(cache.entries))
        return {"format": CACHE_FORMAT, "spec": asdict(cache.spec), "shards": cache.shards, "entries": cache.entries}
    root.mkdir(parents=True, exist_ok=True)
    save_file(probe, str(root / PROBE_FILE))
    return {"format": CACHE_FORMAT, "spec": asdict(spec), "shards": [], "entries": {}}


def _load_batch(source: ImageTextSource, indices: Sequence[int], report: SkipReport) -> list[RawSample]:
    samples = []
    for i in indices:
        try:
            samples.append(source.load(i))
        except (OSError, ValueError, SyntaxError) as exc:
            report.skip("corrupt image", source.info(i).key, repr(exc))
    return samples


@torch.no_grad()
def _encode_batch(
    samples: list[RawSample], size: tuple[int, int], resample: Any, encode_images: ImageEncoder,
    encode_text: TextEncoderFn, caption_types: Sequence[str] | None, dtype: torch.dtype | None,
) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    images = torch.stack([to_tensor(resize_cover_crop(s.image, size, resample)) for s in samples])  # (B, 3, H, W)
    latents = encode_images(images).cpu()  # (B, C_z, H/f, W/f)
    prompts = sorted({c for s in samples for t, c in s.captions.items() if caption_types is None or t in caption_types})
    if not prompts:
        raise ValueError(f"caption_types={list(caption_types or [])} selects no caption of these samples")
    text, mask = encode_text(prompts)  # (P, L, D_txt), (P, L)
    row = {p: i for i, p in enumerate(prompts)}
    out = []
    for s, latent in zip(samples, latents):
        # The storage dtype is the caller's choice (bf16 halves the cache); None keeps the encoder's output dtype.
        tensors = {"latent": latent if dtype is None else latent.to(dtype)}
        for t, caption in s.captions.items():
            if caption_types is None or t in caption_types:
                emb = text[row[caption]].cpu()  # (L, D_txt)
                tensors[f"text::{t}"] = emb if dtype is None else emb.to(dtype)
                tensors[f"mask::{t}"] = mask[row[caption]].cpu()  # (L,)
        out.append(tensors)
    return out


def build_feature_cache(
    source: ImageTextSource,
    out_dir: str | os.PathLike,
    *,
    encode_images: Any,
    encode_text: Any,
    spec: CacheSpec,
    batch_size: int = 8,
    shard_size: int = 512,
    caption_types: Sequence[str] | None = None,
    dtype: torch.dtype | None = None,
) -> FeatureCache:
    """Encode every sample of `source` at its bucket size (table `spec.table`) into a cache at `out_dir`.

    Args:
        encode_images: callable or object with `.encode`: (B, 3, H, W) in [-1, 1] -> (B, C_z, H/f, W/f).
        encode_text: callable or object with `.encode`: list of prompts -> ((B, L, D_txt), (B, L) mask).
        spec: names of the encoders and the bucket table; dimensions are filled in from the probe.
        caption_types: which caption types to embed (default: all of each sample).
        dtype: storage dtype of latents and embeddings (default: as the encoders return them).
    Returns the opened cache. Samples that fail to decode are skipped and counted in `source.report`.
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    root = Path(out_dir)
    encode_images, encode_text = as_encoder(encode_images), as_encoder(encode_text)
    probe = _probe(encode_images, encode_text)
    spec = _spec_from_probe(spec, probe)
    table = get_table(spec.table)
    index = _open_for_build(root, spec, probe)
    done = set(index["entries"])
    by_bucket: dict[str, list[int]] = {}
    for i, bucket in enumerate(source_buckets(source, table)):
        if source.info(i).key not in done:
            by_bucket.setdefault(bucket, []).append(i)
    writer = _ShardWriter(root, index, shard_size)
    todo = sum(len(v) for v in by_bucket.values())
    with tqdm(total=todo, desc="caching features", unit="img", disable=todo == 0) as bar:
        for bucket, indices in by_bucket.items():
            for start in range(0, len(indices), batch_size):
                samples = _load_batch(source, indices[start : start + batch_size], source.report)
                if samples:
                    encoded = _encode_batch(
                        samples,
                        table[bucket],
                        default_resample(table),
                        encode_images,
                        encode_text,
                        caption_types,
                        dtype,
                    )
                    for s, tensors in zip(samples, encoded):
                        entry = {"bucket": bucket, "size": list(table[bucket]), "img_hw": [s.info.height, s.info.width],
                                 "captions": {t: s.captions[t] for t in s.captions if f"text::{t}" in tensors},
                                 "clip_scores": s.clip_scores}  # fmt: skip
                        writer.add(s.key, tensors, entry)
                bar.update(len(indices[start : start + batch_size]))
    writer.flush()
    source.report.log_summary(f"feature cache {root}")
    return FeatureCache(root, expect=spec)


# --- Training from a cache ------------------------------------------------------------------------------------


class CachedFeatureDataset(torch.utils.data.Dataset):
    """Training samples from a feature cache: index i is the i-th sample key in sorted order.

    Each item has `latent` (C_z, h, w) raw (unscaled), `text` (L, D_txt), `text_mask` (L,), and the chosen
    `caption`, `caption_type`, `clip_score`, plus `key`, `aspect_ratio` (bucket key) and `img_hw`. The caption is
    drawn by `caption_rule` among the cached caption types, seeded by (seed, epoch, key) as `BucketDataset`.
    """

    def __init__(self, cache: FeatureCache, *, caption_rule: CaptionRule | None = None, seed: int = 0) -> None:
        self.cache = cache
        self.keys = cache.sample_keys()
        self.caption_rule = caption_rule or PowerRule()
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.keys)

    def bucket_keys(self) -> list[str]:
        return [self.cache.entries[k]["bucket"] for k in self.keys]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index]
        entry = self.cache.entries[key]
        rng = random.Random(sample_seed(self.seed, self.epoch, key))
        choice = select_caption(entry["captions"], entry["clip_scores"], self.caption_rule, rng)
        text, mask = self.cache.text(key, choice.caption_type)
        return {
            "latent": self.cache.latent(key),
            "text": text,
            "text_mask": mask,
            "caption": choice.caption,
            "caption_type": choice.caption_type,
            "clip_score": choice.clip_score,
            "key": key,
            "index": index,
            "aspect_ratio": entry["bucket"],
            "img_hw": tuple(entry["img_hw"]),
        }


def collate_features(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a same-bucket batch of cached features: `latent` (B, C_z, h, w), `text` (B, L, D_txt),
    `text_mask` (B, L); other fields become lists."""
    shapes = {tuple(s["latent"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"a batch must share one bucket size, got latent shapes {sorted(shapes)}")
    batch: dict[str, Any] = {name: torch.stack([s[name] for s in samples]) for name in ("latent", "text", "text_mask")}
    for field in samples[0]:
        if field not in batch:
            batch[field] = [s[field] for s in samples]
    return batch
