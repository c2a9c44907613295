"""Training data from a config: bucketed image + caption batches from `sana_data` (spec §6, §7.6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sana.config import SanaConfig
from sana_data import (
    AspectRatioBatchSampler,
    BucketDataset,
    PowerRule,
    ProportionRule,
    collate,
    get_table,
    metadata_filter,
    open_source,
)

# `data.type` values this loader reads (folders or WebDataset shards; the class decides nothing else here).
DATASET_TYPES = ("SanaImgDataset", "SanaWebDataset", "SanaWebDatasetMS")


def bucket_table(cfg: SanaConfig) -> dict[str, tuple[int, int]]:
    """Multi-scale: the `model.aspect_ratio_type` table; otherwise one square bucket of `data.image_size`."""
    if cfg.model.multi_scale:
        return get_table(cfg.model.aspect_ratio_type.removeprefix("ASPECT_RATIO_"))
    size = cfg.data.image_size
    return {"1.0": (size, size)}


def check_data(cfg: SanaConfig) -> list[Path]:
    """Fail before any heavy work when the data cannot be read."""
    if cfg.data.type not in DATASET_TYPES:
        raise ValueError(f"config key 'data.type': {cfg.data.type!r} is not one of {DATASET_TYPES}")
    if not cfg.data.data_dir:
        raise ValueError("config key 'data.data_dir' is empty; give one or more dataset folders")
    dirs = [Path(d).expanduser() for d in cfg.data.data_dir]
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise FileNotFoundError(f"config key 'data.data_dir': no such folder(s) {missing}")
    return dirs


class RankSlice(torch.utils.data.Sampler[list[int]]):
    """This rank's slice of global batches: every step plans one same-bucket batch of `world * batch` samples and
    rank r trains on positions [r * batch, (r + 1) * batch). One process with the whole global batch therefore sees
    exactly what N processes see together. `state_dict`/`load_state_dict` resume mid-epoch (`sana_data`)."""

    def __init__(self, plan: AspectRatioBatchSampler, rank: int, batch: int) -> None:
        self.plan, self.rank, self.batch = plan, rank, batch

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self):
        for global_batch in self.plan:
            yield global_batch[self.rank * self.batch : (self.rank + 1) * self.batch]

    def offset(self) -> int:
        """Position of this rank's first sample in the global batch."""
        return self.rank * self.batch

    def state_dict(self, consumed: int | None = None) -> dict[str, int]:
        return self.plan.state_dict(consumed)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.plan.load_state_dict(state)

    def set_epoch(self, epoch: int) -> None:
        self.plan.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.plan.epoch


def open_training_source(cfg: SanaConfig) -> Any:
    """The image + caption source of `data.data_dir` (folders or shards) with the config's caption sidecars."""
    d = cfg.data
    return open_source(
        check_data(cfg), caption_suffixes=d.external_caption_suffixes, clipscore_suffixes=d.external_clipscore_suffixes
    )


def caption_rule(cfg: SanaConfig) -> Any:
    """The official clip-score rule when clip-score sidecars are configured, else `data.caption_proportion`."""
    d = cfg.data
    if d.external_clipscore_suffixes:
        return PowerRule(tau=d.clip_thr_temperature, threshold=d.clip_thr)
    return ProportionRule(dict(d.caption_proportion))


def build_data(cfg: SanaConfig, *, rank: int, world: int) -> tuple[BucketDataset, RankSlice]:
    """The dataset (captions drawn by the config's rule) and this rank's same-bucket batch sampler."""
    keep = metadata_filter(hq_only=True) if cfg.data.hq_only else None
    dataset = BucketDataset(
        open_training_source(cfg),
        table=bucket_table(cfg),
        caption_rule=caption_rule(cfg),
        seed=cfg.train.seed,
        keep=keep,
    )
    bs = cfg.train.train_batch_size
    plan = AspectRatioBatchSampler(dataset.bucket_keys(), bs * world, seed=cfg.train.seed, num_replicas=1, rank=0)
    sampler = RankSlice(plan, rank, bs)
    if len(sampler) == 0:
        raise ValueError(
            f"no full batch of {cfg.train.train_batch_size} x {world} process(es) in any bucket of "
            f"{len(dataset)} samples; lower train.train_batch_size or add data"
        )
    return dataset, sampler


def build_cached_data(cfg: SanaConfig, *, rank: int, world: int) -> tuple[Any, RankSlice]:
    """Training samples from a `sana encode-latents` feature cache (`data.feature_cache`)."""
    from sana_data import CachedFeatureDataset, FeatureCache

    d = cfg.data
    if not d.feature_cache:
        raise ValueError("data.load_vae_feat/load_text_feat need data.feature_cache (written by `sana encode-latents`)")
    cache = FeatureCache(Path(d.feature_cache).expanduser())
    dataset = CachedFeatureDataset(cache, caption_rule=caption_rule(cfg), seed=cfg.train.seed)
    bs = cfg.train.train_batch_size
    plan = AspectRatioBatchSampler(dataset.bucket_keys(), bs * world, seed=cfg.train.seed, num_replicas=1, rank=0)
    if len(plan) == 0:
        raise ValueError(f"no full batch of {bs} x {world} in any bucket of the {len(dataset)} cached samples")
    return dataset, RankSlice(plan, rank, bs)


def uses_cache(cfg: SanaConfig) -> bool:
    d = cfg.data
    if d.load_vae_feat != d.load_text_feat:
        raise ValueError("data.load_vae_feat and data.load_text_feat must be set together (one cache holds both)")
    return d.load_vae_feat


def loader(dataset: Any, sampler: RankSlice, workers: int) -> torch.utils.data.DataLoader:
    from sana_data import CachedFeatureDataset, collate_features

    collate_fn = collate_features if isinstance(dataset, CachedFeatureDataset) else collate
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=workers, persistent_workers=False
    )
