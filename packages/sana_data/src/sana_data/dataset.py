"""The training-time dataset: any source, bucketed to fixed sizes, one caption chosen per sample.

`BucketDataset(source, table=...)` returns, for index i, the image resized-to-cover and center-cropped to its
nearest bucket (spec §6.3), the caption chosen by the caption rule (§6.2), and the bookkeeping the official
loader returns (`img_hw` = original size, `aspect_ratio` = bucket key). Pair it with `AspectRatioBatchSampler`
(`dataset.bucket_keys()` gives the sampler's buckets) and `collate`.

A sample that fails to decode is skipped: it is logged, counted, and replaced by the next sample of the same
bucket, so batches keep one size. The returned dict carries the skipped `(reason, key)` pairs so the training
loop can count skips that happened inside DataLoader workers (`SkipReport.absorb`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .buckets import BucketTable, assign_buckets, closest_ratio, get_table, resize_cover_crop, to_tensor
from .captions import CaptionRule, PowerRule, select_caption
from .records import ImageTextSource, SampleInfo, SkipReport

MAX_SUBSTITUTES = 10  # as the official loader: give up after 10 consecutive bad samples


def sample_seed(*parts: Any) -> int:
    """A stable 64-bit seed from any parts (independent of PYTHONHASHSEED and of the platform)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def default_resample(table: BucketTable) -> Image.Resampling:
    """Bicubic, except Lanczos for tables of 2048 px and more (as the official transforms)."""
    return Image.Resampling.LANCZOS if max(table["1.0"]) >= 2048 else Image.Resampling.BICUBIC


def metadata_filter(*, hq_only: bool = False, min_clip_score: float | None = None) -> Callable[[SampleInfo], bool]:
    """The official sampler's filters (spec §6.4): keep only `version == "high_quality"` samples, and/or samples
    whose json `clipscore` is at least `min_clip_score` (samples without a score are kept)."""

    def keep(info: SampleInfo) -> bool:
        if hq_only and info.version != "high_quality":
            return False
        return min_clip_score is None or info.clip_score is None or info.clip_score >= min_clip_score

    return keep


def source_buckets(source: ImageTextSource, table: BucketTable) -> list[str]:
    """Bucket key of every sample, from metadata only (no image is decoded)."""
    infos = [source.info(i) for i in range(len(source))]
    keys = list(table)
    ids = assign_buckets(np.array([s.height for s in infos]), np.array([s.width for s in infos]), table)
    return [keys[i] for i in ids]


class BucketDataset(torch.utils.data.Dataset):
    """`source` bucketed to `table`, one caption per sample drawn by `caption_rule`.

    Args:
        source: any `ImageTextSource` (folder, shards, HF dataset).
        table: a bucket table or its name (`512`, `"1024"`, ...).
        caption_rule: `PowerRule()` (official default), `SoftmaxRule`, `ProportionRule`.
        seed: caption draws depend only on (seed, epoch, sample key) — not on workers or batch composition.
        keep: optional filter on metadata (e.g. `metadata_filter(hq_only=True)`); a sample with
            `keep(info) == False` gets no bucket, so the sampler never yields it.
    """

    def __init__(
        self,
        source: ImageTextSource,
        *,
        table: BucketTable | str | int = 512,
        caption_rule: CaptionRule | None = None,
        seed: int = 0,
        keep: Callable[[SampleInfo], bool] | None = None,
    ) -> None:
        self.source = source
        self.table = get_table(table) if isinstance(table, str | int) else dict(table)
        self.caption_rule = caption_rule or PowerRule()
        self.seed, self.epoch = seed, 0
        self.resample = default_resample(self.table)
        keys = source_buckets(source, self.table)
        self._buckets: list[str | None] = [
            k if keep is None or keep(source.info(i)) else None for i, k in enumerate(keys)
        ]
        self._members: dict[str, list[int]] = {}
        for i, key in enumerate(self._buckets):
            if key is not None:
                self._members.setdefault(key, []).append(i)
        self._position = {i: p for members in self._members.values() for p, i in enumerate(members)}

    @property
    def report(self) -> SkipReport:
        return self.source.report

    def __len__(self) -> int:
        return len(self.source)

    def bucket_keys(self) -> list[str | None]:
        """The bucket of each index (None where filtered out): the input of `AspectRatioBatchSampler`."""
        return list(self._buckets)

    def set_epoch(self, epoch: int) -> None:
        """Caption draws change per epoch; call it with the sampler's epoch (before creating the iterator)."""
        self.epoch = epoch

    def _substitutes(self, index: int) -> Sequence[int]:
        key = self._buckets[index]
        members = self._members.get(key, [index]) if key is not None else [index]
        start = self._position.get(index, 0)
        return [members[(start + k) % len(members)] for k in range(min(MAX_SUBSTITUTES, len(members)))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[tuple[str, str]] = []
        for candidate in self._substitutes(index):
            info = self.source.info(candidate)
            try:
                raw = self.source.load(candidate)
            except (OSError, ValueError, SyntaxError) as exc:  # PIL raises SyntaxError for some broken headers
                self.report.skip("corrupt image", info.key, repr(exc))
                skipped.append(("corrupt image", info.key))
                continue
            return self._build(candidate, info, raw, skipped)
        raise RuntimeError(f"{len(skipped)} consecutive unreadable samples from index {index}: {skipped}")

    def _build(self, index: int, info: SampleInfo, raw: Any, skipped: list[tuple[str, str]]) -> dict[str, Any]:
        key = self._buckets[index] or closest_ratio(info.height, info.width, self.table)
        rng = random.Random(sample_seed(self.seed, self.epoch, info.key))
        choice = select_caption(raw.captions, raw.clip_scores, self.caption_rule, rng)
        image = to_tensor(resize_cover_crop(raw.image, self.table[key], self.resample))  # (3, H, W) in [-1, 1]
        return {
            "image": image,
            "caption": choice.caption,
            "caption_type": choice.caption_type,
            "clip_score": choice.clip_score,
            "key": info.key,
            "index": index,
            "img_hw": (info.height, info.width),
            "aspect_ratio": key,
            "skipped": skipped,
        }


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a same-bucket batch: `image` (B, 3, H, W); every other field becomes a list."""
    sizes = {tuple(s["image"].shape) for s in samples}
    if len(sizes) != 1:
        raise ValueError(f"a batch must share one bucket size, got {sorted(sizes)}; use AspectRatioBatchSampler")
    batch: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples])}  # (B, 3, H, W)
    for field in samples[0]:
        if field != "image":
            batch[field] = [s[field] for s in samples]
    batch["skipped"] = [pair for s in samples for pair in s["skipped"]]
    return batch
