"""sana_data: datasets, aspect-ratio buckets, caption selection, feature caching and a synthetic shapes world.

The data side of Sana (spec §6), usable without the rest of the toolkit:

- **sources** — an image + caption folder (`FolderSource`, with or without `meta_data.json`), WebDataset shards
  read through wids (`ShardSource`, written by `write_shards`), a Hugging Face dataset (`HFSource`), the shapes
  world (`ShapesSource`); caption and clip-score sidecars for several captions per image. Corrupt or missing
  files are skipped, counted in `source.report` and logged; a source with no usable sample raises.
- **buckets** — the official aspect-ratio tables (`ASPECT_RATIO_512`, ...), nearest-ratio assignment from metadata,
  resize-to-cover + center crop; `BucketDataset` + `AspectRatioBatchSampler` (same-size batches, distributed,
  deterministic from (seed, epoch), resumable from `state_dict`).
- **captions** — `PowerRule` (the official clip-score rule), `SoftmaxRule` (the paper's), `ProportionRule`.
- **feature cache** — `build_feature_cache` / `FeatureCache` / `CachedFeatureDataset`: latents and text embeddings
  keyed by sample key, encoders passed in as callables, mismatched caches refused.
- **shapes world** — deterministic synthetic images with exact ground truth (`sample_scene`, `render`, ...).

Shape glossary (shared by every package):

| symbol | meaning |
|---|---|
| `B` | batch |
| `C` | pixel channels (3) |
| `H, W` | pixel height and width |
| `C_z` | latent channels (32 for Sana's DC-AE) |
| `h, w` | latent height and width (`H/f`, `W/f`) |
| `f` | spatial compression of the autoencoder (32) |
| `p` | DiT patch size (1 for Sana) |
| `N` | image tokens, `h*w/p²` |
| `D` | model width |
| `L` | text tokens (300 by default) |
| `D_txt` | text-encoder width (2304 for Gemma-2-2B) |
| `nh`, `hd` | attention heads and head width |
| `K` | timesteps in a schedule |

Images are (3, H, W) float in [-1, 1]; bucket keys are the ratio height / width as strings.
"""

from .buckets import (
    ASPECT_RATIO_256,
    ASPECT_RATIO_256_TEST,
    ASPECT_RATIO_512,
    ASPECT_RATIO_512_TEST,
    ASPECT_RATIO_1024,
    ASPECT_RATIO_1024_TEST,
    ASPECT_RATIO_2048,
    ASPECT_RATIO_2048_TEST,
    ASPECT_RATIO_4096,
    TABLES,
    bucket_image,
    closest_ratio,
    get_table,
    resize_cover_crop,
    to_tensor,
)
from .cache import (
    CachedFeatureDataset,
    CacheError,
    CacheMismatchError,
    CacheSpec,
    FeatureCache,
    build_feature_cache,
    collate_features,
)
from .captions import CaptionChoice, PowerRule, ProportionRule, SoftmaxRule, caption_probabilities, select_caption
from .dataset import BucketDataset, collate, metadata_filter, source_buckets
from .folder import FolderSource, write_folder, write_meta_data
from .hf import HFSource
from .records import ImageTextSource, NoUsableSampleError, RawSample, SampleInfo, SkipReport
from .sampler import AspectRatioBatchSampler
from .shapes import (
    Scene,
    ShapeObject,
    ShapesSource,
    captions,
    ground_truth,
    is_heldout,
    render,
    sample_scene,
    scene_from_ground_truth,
)
from .shards import ShardSource, write_shards, write_wids_index
from .sources import open_source

__version__ = "0.1.0"

__all__ = (
    # Sources
    "FolderSource",
    "HFSource",
    "ImageTextSource",
    "NoUsableSampleError",
    "RawSample",
    "SampleInfo",
    "ShapesSource",
    "ShardSource",
    "SkipReport",
    "open_source",
    "write_folder",
    "write_meta_data",
    "write_shards",
    "write_wids_index",
    # Buckets and batches
    "ASPECT_RATIO_256",
    "ASPECT_RATIO_256_TEST",
    "ASPECT_RATIO_512",
    "ASPECT_RATIO_512_TEST",
    "ASPECT_RATIO_1024",
    "ASPECT_RATIO_1024_TEST",
    "ASPECT_RATIO_2048",
    "ASPECT_RATIO_2048_TEST",
    "ASPECT_RATIO_4096",
    "TABLES",
    "AspectRatioBatchSampler",
    "BucketDataset",
    "bucket_image",
    "closest_ratio",
    "collate",
    "metadata_filter",
    "get_table",
    "resize_cover_crop",
    "source_buckets",
    "to_tensor",
    # Captions
    "CaptionChoice",
    "PowerRule",
    "ProportionRule",
    "SoftmaxRule",
    "caption_probabilities",
    "select_caption",
    # Feature cache
    "CacheError",
    "CacheMismatchError",
    "CacheSpec",
    "CachedFeatureDataset",
    "FeatureCache",
    "build_feature_cache",
    "collate_features",
    # Shapes world
    "Scene",
    "ShapeObject",
    "captions",
    "ground_truth",
    "is_heldout",
    "render",
    "sample_scene",
    "scene_from_ground_truth",
)
