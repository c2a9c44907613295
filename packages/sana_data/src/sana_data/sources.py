"""`open_source`: a folder of images or WebDataset shards, recognised from what is on disk."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .folder import FolderSource
from .records import ImageTextSource
from .shards import INDEX_FILE, ShardSource


def is_shard_path(path: str | os.PathLike) -> bool:
    """A `.tar`, a wids index `.json`, or a folder holding `wids-meta.json` or `*.tar` files."""
    path = Path(path)
    if path.is_file():
        return path.suffix in (".tar", ".json")
    return (path / INDEX_FILE).exists() or any(path.glob("*.tar"))


def open_source(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    caption_suffixes: Sequence[str] = (),
    clipscore_suffixes: Sequence[str] = (),
) -> ImageTextSource:
    """A `ShardSource` when every path holds shards, a `FolderSource` when none does; mixing is an error."""
    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    kinds = {is_shard_path(p) for p in paths}
    if len(kinds) != 1:
        raise ValueError(f"mix of shard and folder datasets: {paths}; convert folders with `sana-data to-shards`")
    kind = ShardSource if kinds.pop() else FolderSource
    return kind(paths, caption_suffixes=caption_suffixes, clipscore_suffixes=clipscore_suffixes)
