"""WebDataset tar shards (spec §6.1 B): indexed reading with `wids`, writing with `webdataset`, the shard index.

A shard holds, per sample key, an image (`.png`/`.jpg`/`.jpeg`/`.webp`) and a `.json` with at least `prompt`,
`height` and `width` (the original size, so bucketing never decodes the image). A folder of shards may carry
`wids-meta.json` (the wids shard index: `{"__kind__": "wids-shard-index-v1", "shardlist": [{"url", "nsamples",
"filesize", "md5sum"}]}`); without it every `*.tar` in the folder is read in sorted order. Caption and clip-score
sidecars are per shard: `<shard minus .tar><suffix>.json`.

`write_shards` converts any source (typically a `FolderSource`) to shards and writes the index, so users never
hand-write `wids-meta.json` (user needs #7). Needs the `webdataset` extra: `pip install "sana_data[webdataset]"`.
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .records import DEFAULT_CAPTION, ImageTextSource, RawSample, SampleInfo, SkipReport, check_not_empty, logger
from .sidecars import gather_sidecars, read_json, write_json_atomic

INDEX_FILE = "wids-meta.json"
CAPTIONS_SUFFIX = "_captions"  # per-shard sidecar written by `write_shards` for every caption type but "prompt"
CLIPSCORE_SUFFIX = "_clip_score"
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
_MAX_OPEN_SHARDS = 16


def require(module: str, extra: str) -> Any:
    """Import an optional dependency or fail with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f'`{module}` is needed here: pip install "sana_data[{extra}]"') from exc


@dataclass(frozen=True)
class _Entry:
    shard: int
    files: dict[str, int]  # extension without dot -> file index inside the shard
    image_ext: str
    prompt: str
    info: SampleInfo


def shard_paths(path: str | os.PathLike) -> list[Path]:
    """Shards named by a wids index file, by a folder (its `wids-meta.json`, else every `*.tar`), or a `.tar`."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        index = read_json(path)
        base = Path(index.get("base") or path.parent)
        return [base / shard["url"] for shard in index["shardlist"]]
    if path.is_dir():
        if (path / INDEX_FILE).exists():
            return shard_paths(path / INDEX_FILE)
        return sorted(path.glob("*.tar"))
    if path.suffix == ".tar":
        return [path]
    raise FileNotFoundError(f"no shards at {path} (expected a folder of .tar files, a .tar, or a wids index)")


def _open_shard(path: Path) -> Any:
    wids = require("wids.wids", "webdataset")
    return wids.IndexedTarSamples(path=str(path))


def _read_member(tar: Any, file_index: int) -> bytes:
    _, stream = tar.reader.get_file(file_index)
    return stream.read()


class ShardSource:
    """WebDataset shards as an `ImageTextSource`, with random access through `wids`.

    Args:
        paths: folders of shards, `.tar` files or wids index files (concatenated in order).
        caption_suffixes: per-shard caption sidecars to merge (`write_shards` writes `"_captions"`).
        clipscore_suffixes: per-shard clip-score sidecars (`write_shards` writes `"_clip_score"`).
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        caption_suffixes: Sequence[str] = (),
        clipscore_suffixes: Sequence[str] = (),
    ) -> None:
        paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        self.shards: list[Path] = [s for p in paths for s in shard_paths(p)]
        self.caption_suffixes = tuple(caption_suffixes)
        self.clipscore_suffixes = tuple(clipscore_suffixes)
        self.report = SkipReport()
        self._entries: list[_Entry] = []
        self._open: OrderedDict[int, Any] = OrderedDict()
        for shard_index, shard in enumerate(self.shards):
            self._scan(shard_index, shard)
        self._close_all()  # handles are reopened lazily (also in DataLoader workers)
        check_not_empty(len(self._entries), ", ".join(map(str, paths)), self.report)

    def _scan(self, shard_index: int, shard: Path) -> None:
        splitname = require("wids.wids", "webdataset").splitname
        try:
            tar = self._shard(shard_index)
            groups = list(tar.samples)
        except Exception as exc:  # wids raises assorted errors (struct, ValueError, OSError) on a corrupt tar
            self.report.skip("unreadable shard", str(shard), repr(exc))
            return
        if not groups:
            self.report.skip("unreadable shard", str(shard), "no member found (empty, truncated or not a tar)")
            return
        size = len(tar.reader.mmapped_file)
        cut = {i for i, (_, offset, length) in enumerate(tar.reader.by_index) if offset + 512 + length > size}
        for group in groups:
            names = {i: tar.reader.by_index[i][0] for i in group}
            key = splitname(names[group[0]])[0]
            if cut & set(group):
                self.report.skip("truncated shard", f"{shard}:{key}", "member data runs past the end of the file")
                continue
            files = {splitname(n)[1].lstrip(".").lower(): i for i, n in names.items()}
            entry = self._make_entry(shard_index, tar, key, files, f"{shard}:{key}")
            if entry is not None:
                self._entries.append(entry)

    def _make_entry(self, shard_index: int, tar: Any, key: str, files: dict[str, int], where: str) -> _Entry | None:
        image_ext = next((ext for ext in IMAGE_EXTS if ext in files), None)
        if image_ext is None:
            self.report.skip("missing image", where)
            return None
        if "json" not in files:
            self.report.skip("missing json", where)
            return None
        try:
            meta = json.loads(_read_member(tar, files["json"]))
            if not isinstance(meta, dict):
                raise ValueError("not a json object")
        except ValueError as exc:
            self.report.skip("bad json", where, str(exc))
            return None
        prompt = str(meta.get("prompt") or "").strip()
        if not prompt and "txt" in files:
            prompt = _read_member(tar, files["txt"]).decode("utf-8", "replace").strip().split("\n")[0]
        if not prompt:
            self.report.skip("empty caption", where)
            return None
        try:
            if "height" in meta and "width" in meta:
                height, width = int(meta["height"]), int(meta["width"])
            else:
                with Image.open(io.BytesIO(_read_member(tar, files[image_ext]))) as im:
                    width, height = im.size
        except (OSError, ValueError) as exc:
            self.report.skip("unreadable image", where, str(exc))
            return None
        clip = meta.get("clipscore")
        info = SampleInfo(key, height, width, meta.get("version"), float(clip) if clip is not None else None)
        return _Entry(shard_index, files, image_ext, prompt, info)

    def _shard(self, shard_index: int) -> Any:
        if shard_index in self._open:
            self._open.move_to_end(shard_index)
            return self._open[shard_index]
        tar = _open_shard(self.shards[shard_index])
        self._open[shard_index] = tar
        if len(self._open) > _MAX_OPEN_SHARDS:
            self._open.popitem(last=False)[1].close()
        return tar

    def _close_all(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # mmapped shards don't pickle; each worker reopens its own
        return state

    def __len__(self) -> int:
        return len(self._entries)

    def info(self, index: int) -> SampleInfo:
        return self._entries[index].info

    def load(self, index: int) -> RawSample:
        """Decode sample `index`. Raises `OSError`/`ValueError` for corrupt bytes (the caller skips and counts)."""
        entry = self._entries[index]
        tar = self._shard(entry.shard)
        with Image.open(io.BytesIO(_read_member(tar, entry.files[entry.image_ext]))) as im:
            im.load()
            image = im.convert("RGB")
        extra = json.loads(_read_member(tar, entry.files["json"]))
        stem = str(self.shards[entry.shard].with_suffix(""))
        captions, scores = gather_sidecars(
            stem, entry.info.key, self.caption_suffixes, self.clipscore_suffixes, self.report
        )
        return RawSample(entry.info, image, {DEFAULT_CAPTION: entry.prompt, **captions}, scores, extra)

    def shard_of(self, index: int) -> Path:
        return self.shards[self._entries[index].shard]


# --- Writing -------------------------------------------------------------------------------------------------


def _image_bytes(source: ImageTextSource, index: int, sample: RawSample) -> tuple[str, bytes]:
    """Original file bytes when the source has files (no re-encode), else a lossless PNG."""
    image_path = getattr(source, "image_path", None)
    if image_path is not None:
        path = Path(image_path(index))
        return path.suffix.lstrip(".").lower(), path.read_bytes()
    buffer = io.BytesIO()
    sample.image.save(buffer, format="PNG")
    return "png", buffer.getvalue()


def write_shards(
    source: ImageTextSource,
    out_dir: str | os.PathLike,
    *,
    samples_per_shard: int = 1000,
    name: str = "shard",
    index: bool = True,
) -> list[Path]:
    """Write `source` as WebDataset shards `<name>-000000.tar`, ... plus sidecars and the wids index.

    Each sample gets its image (original bytes when possible) and a `.json` with `prompt`, `height`, `width`,
    `file_name` and every field of the source's per-sample json (e.g. the shapes world's ground truth). Other
    caption types go to `<shard>_captions.json`, clip scores to `<shard>_clip_score.json`. Samples whose image
    fails to decode are skipped and counted in `source.report`. Keys have `.` replaced by `_` (webdataset
    splits keys at the first dot).
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    wds = require("webdataset", "webdataset")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    writer, writer_count, captions, scores = None, 0, {}, {}
    for i in range(len(source)):
        try:
            sample = source.load(i)
        except (OSError, ValueError) as exc:
            source.report.skip("unreadable image", sample_where(source, i), str(exc))
            continue
        if writer is None or writer_count >= samples_per_shard:
            if writer is not None:
                _finish_shard(writer, written[-1], captions, scores)
            written.append(out / f"{name}-{len(written):06d}.tar")
            writer, writer_count, captions, scores = wds.TarWriter(str(written[-1]), mtime=0.0), 0, {}, {}
        key = sample.key.replace(".", "_")
        ext, data = _image_bytes(source, i, sample)
        meta = {**sample.extra, "prompt": sample.captions[DEFAULT_CAPTION], "height": sample.info.height,
                "width": sample.info.width, "file_name": f"{key}.{ext}"}  # fmt: skip
        writer.write({"__key__": key, ext: data, "json": json.dumps(meta).encode()})
        writer_count += 1
        if others := {t: c for t, c in sample.captions.items() if t != DEFAULT_CAPTION}:
            captions[key] = others
        if sample.clip_scores:
            scores[key] = sample.clip_scores
    if writer is not None:
        _finish_shard(writer, written[-1], captions, scores)
    check_not_empty(len(written), f"conversion to {out}", source.report)
    if index:
        write_wids_index(out, written, name=out.name)
    logger.info("wrote %d shards to %s", len(written), out)
    return written


def sample_where(source: ImageTextSource, index: int) -> str:
    try:
        return source.info(index).key
    except Exception:
        return f"index {index}"


def _finish_shard(writer: Any, path: Path, captions: dict, scores: dict) -> None:
    writer.close()
    stem = str(path.with_suffix(""))
    if captions:
        write_json_atomic(f"{stem}{CAPTIONS_SUFFIX}.json", captions)
    if scores:
        write_json_atomic(f"{stem}{CLIPSCORE_SUFFIX}.json", scores)


def write_wids_index(out_dir: str | os.PathLike, shards: Sequence[Path] | None = None, *, name: str = "") -> Path:
    """Write `wids-meta.json` for `shards` (default: every `*.tar` in `out_dir`), urls relative to the folder."""
    wids = require("wids.wids", "webdataset")
    out = Path(out_dir)
    shards = sorted(out.glob("*.tar")) if shards is None else list(shards)
    shardlist = [
        {
            "url": os.path.relpath(s, out),
            "nsamples": int(wids.compute_num_samples(str(s))),
            "filesize": s.stat().st_size,
            "md5sum": wids.compute_file_md5sum(str(s)),
        }
        for s in shards
    ]
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name or out.name, "shardlist": shardlist}
    path = out / INDEX_FILE
    write_json_atomic(path, index)
    return path
