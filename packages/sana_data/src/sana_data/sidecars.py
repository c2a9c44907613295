"""External caption and clip-score sidecars (spec §6.1).

Folder datasets keep one sidecar per image, `<dir>/<name><suffix>.json`; shard datasets one per shard,
`<shard minus .tar><suffix>.json`. Both map the sample key to `{caption_type: caption}` (caption sidecars) or
`{caption_type: score}` (clip-score sidecars). A caption entry that only has `"prompt"` (or is a bare string)
is stored under a type named after the suffix without its leading underscore.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from .records import SkipReport


class BadSidecarError(ValueError):
    pass


_REPORTED: set[str] = set()


@lru_cache(maxsize=256)
def _read_json_cached(path: str, mtime_ns: int, size: int) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file, caching by (path, mtime, size): per-shard sidecars are read once per process."""
    stat = os.stat(path)
    return _read_json_cached(str(path), stat.st_mtime_ns, stat.st_size)


def suffix_type(suffix: str) -> str:
    """Caption type used for a sidecar entry that only carries a `prompt`."""
    return suffix.lstrip("_") or "prompt"


def _sidecar_entry(path: Path, key: str, report: SkipReport | None) -> dict | str | None:
    if not path.exists():
        return None
    try:
        data = read_json(path)
        if not isinstance(data, dict):
            raise BadSidecarError(f"expected an object keyed by sample key, got {type(data).__name__}")
    except (ValueError, OSError) as exc:
        if report is not None and str(path) not in _REPORTED:  # count each bad file once, not once per read
            _REPORTED.add(str(path))
            report.skip("bad sidecar json", str(path), str(exc))
        return None
    return data.get(key)


def read_captions(path: Path, key: str, suffix: str, report: SkipReport | None = None) -> dict[str, str]:
    """Captions for `key` from one caption sidecar; `{}` when absent or unreadable (counted in `report`)."""
    entry = _sidecar_entry(path, key, report)
    if entry is None:
        return {}
    if isinstance(entry, str):
        return {suffix_type(suffix): entry}
    if not isinstance(entry, dict):
        return {}
    captions = {str(t): str(c) for t, c in entry.items() if isinstance(c, str) and c.strip()}
    if set(captions) == {"prompt"}:
        return {suffix_type(suffix): captions["prompt"]}
    return captions


def read_clip_scores(path: Path, key: str, report: SkipReport | None = None) -> dict[str, float]:
    """Clip scores for `key` from one clip-score sidecar; non-numeric scores are ignored."""
    entry = _sidecar_entry(path, key, report)
    if not isinstance(entry, dict):
        return {}
    scores: dict[str, float] = {}
    for caption_type, score in entry.items():
        try:
            scores[str(caption_type)] = float(score)
        except (TypeError, ValueError):
            continue
    return scores


def gather_sidecars(
    stem: str, key: str, caption_suffixes: tuple[str, ...], clipscore_suffixes: tuple[str, ...], report: SkipReport
) -> tuple[dict[str, str], dict[str, float]]:
    """All sidecar captions and clip scores for `key`, reading `<stem><suffix>.json` for each suffix."""
    captions: dict[str, str] = {}
    for suffix in caption_suffixes:
        captions.update(read_captions(Path(f"{stem}{suffix}.json"), key, suffix, report))
    scores: dict[str, float] = {}
    for suffix in clipscore_suffixes:
        scores.update(read_clip_scores(Path(f"{stem}{suffix}.json"), key, report))
    return captions, scores


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON through a temporary file + rename, so a crash never leaves a half-written sidecar."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)
