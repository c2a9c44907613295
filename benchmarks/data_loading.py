"""sana_data loading throughput and bucket-sampler overhead.

1. Samples/s through `DataLoader` + `AspectRatioBatchSampler` (batch 8, 256-px buckets, one epoch after a
   warm-up epoch) for the same shapes-world data as an image folder, as WebDataset shards, and as cached
   features, with 0 and 2 workers.
2. Sampler overhead per epoch on 1M metadata rows (bucketing from (h, w) + planning + iterating one epoch),
   against the official sampler's algorithm (walk a shuffled index list, append each index to its bucket,
   yield a bucket when it is full) written here in plain Python as the reference, in the same run.

Writes `docs/benchmarks/sana_data_loading.json` and prints a Markdown table.
Run: `python benchmarks/data_loading.py [--samples 256] [--rows 1000000]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sana_data import (
    ASPECT_RATIO_512,
    AspectRatioBatchSampler,
    BucketDataset,
    CachedFeatureDataset,
    CacheSpec,
    FolderSource,
    ShapesSource,
    ShardSource,
    build_feature_cache,
    collate,
    collate_features,
    write_folder,
    write_shards,
)
from sana_data.buckets import assign_buckets
from sana_data.testing import ToyAutoencoder, ToyTextEncoder

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "sana_data_loading.json"
SIZES = [(256, 256), (192, 320), (320, 192)]


def _throughput(dataset, collate_fn, workers: int, batch_size: int = 8) -> float:
    sampler = AspectRatioBatchSampler(dataset.bucket_keys(), batch_size, seed=0, drop_last=False)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=workers, persistent_workers=workers > 0
    )
    for _ in loader:  # warm-up epoch: worker start, page cache, shard index
        pass
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["key"])
    return n / (time.perf_counter() - start)


def _loading(samples: int, root: Path) -> list[dict]:
    shapes = ShapesSource(samples, seed=0, sizes=SIZES)
    write_folder(shapes, root / "folder")
    folder = FolderSource(root / "folder", caption_suffixes=["_captions"])
    write_shards(folder, root / "shards", samples_per_shard=64)
    shards = ShardSource(root / "shards", caption_suffixes=["_captions"])
    cache = build_feature_cache(folder, root / "cache", encode_images=ToyAutoencoder(32, 32),
                                encode_text=ToyTextEncoder(64, 300), spec=CacheSpec("toy-f32c32", "toy-300x64", "256"),
                                batch_size=16, shard_size=128)  # fmt: skip
    rows = []
    for name, dataset, fn in (
        ("image folder (decode + resize)", BucketDataset(folder, table=256), collate),
        ("WebDataset shards (decode + resize)", BucketDataset(shards, table=256), collate),
        ("cached features (f32c32 latents + 300x64 text)", CachedFeatureDataset(cache), collate_features),
    ):
        for workers in (0, 2):
            rate = _throughput(dataset, fn, workers)
            rows.append({"source": name, "workers": workers, "samples_per_s": round(rate, 1)})
            print(rows[-1])
    return rows


def _reference_epoch(buckets: np.ndarray, batch_size: int, seed: int) -> int:
    """The official algorithm: per-bucket queues filled while walking a shuffled index list."""
    order = np.random.default_rng(seed).permutation(len(buckets)).tolist()
    labels = buckets.tolist()
    queues: dict[int, list[int]] = {}
    n = 0
    for i in order:
        queue = queues.setdefault(labels[i], [])
        queue.append(i)
        if len(queue) == batch_size:
            n += 1
            queues[labels[i]] = []
    return n


def _sampler(rows: int, batch_size: int = 32) -> dict:
    rng = np.random.default_rng(0)
    heights, widths = rng.integers(256, 4096, rows), rng.integers(256, 4096, rows)
    start = time.perf_counter()
    ids = assign_buckets(heights, widths, ASPECT_RATIO_512)
    bucketing = time.perf_counter() - start
    keys = np.array(list(ASPECT_RATIO_512))[ids].tolist()
    start = time.perf_counter()
    sampler = AspectRatioBatchSampler(keys, batch_size, seed=0, num_replicas=8, rank=0)
    build = time.perf_counter() - start
    start = time.perf_counter()
    batches = sum(1 for _ in sampler)
    epoch = time.perf_counter() - start
    start = time.perf_counter()
    reference_batches = _reference_epoch(ids, batch_size, 0)
    reference = time.perf_counter() - start
    return {
        "rows": rows, "batch_size": batch_size, "world_size": 8, "bucketing_s": round(bucketing, 3),
        "sampler_build_s": round(build, 3), "epoch_plan_and_iterate_s": round(epoch, 3),
        "batches_per_rank": batches, "reference_epoch_s": round(reference, 3),
        "reference_batches_all_ranks": reference_batches,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        loading = _loading(args.samples, Path(tmp))
    sampler = _sampler(args.rows)
    result = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
              "samples": args.samples, "loading": loading, "sampler": sampler}  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print("\n| source | workers | samples/s |\n|---|---:|---:|")
    for row in loading:
        print(f"| {row['source']} | {row['workers']} | {row['samples_per_s']} |")
    print(f"\nsampler on {args.rows:,} rows: {json.dumps(sampler)}")


if __name__ == "__main__":
    main()
