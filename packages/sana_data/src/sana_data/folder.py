"""Image + caption folders: `AAA.png` + `AAA.txt` (spec §6.1 A), with or without `meta_data.json`.

- Images: `.png`, `.jpg`, `.jpeg`, `.webp`. The caption is the **first line** of `<name>.txt` (type "prompt").
- `meta_data.json` (`{"name": ..., "__kind__": "Sana-ImgDataset", "img_names": [...]}`) lists the images when
  present; names without an extension default to `.png`, as in the official code. Without it the folder is
  scanned in sorted order.
- An optional `<name>.json` (written by the shard converter and the shapes world) carries `height`/`width`, so
  bucketing never opens the image; otherwise the image header (not the pixels) is read.
- Several folders are concatenated; keys are then `<folder name>/<name>` so they stay unique.

Missing or unreadable images, missing/empty captions and bad json are skipped, counted in `report`, and logged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .records import DEFAULT_CAPTION, ImageTextSource, RawSample, SampleInfo, SkipReport, check_not_empty, logger
from .sidecars import gather_sidecars, write_json_atomic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
META_FILE = "meta_data.json"


@dataclass(frozen=True)
class _Entry:
    stem: Path  # image path without extension; sidecars are `<stem><suffix>.json`
    image: Path
    caption: str
    info: SampleInfo


def _sibling(stem: Path, ext: str) -> Path:
    """`<stem><ext>`; unlike `with_suffix`, keeps dots inside the name (`a.b` -> `a.b.txt`)."""
    return stem.with_name(stem.name + ext)


def read_first_line(path: Path) -> str:
    """First line of a caption file, stripped; `""` for an empty file."""
    with open(path, encoding="utf-8") as f:
        return f.readline().strip()


def _read_sample_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"expected a json object, got {type(data).__name__}")
    return data


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image header; the pixels are not decoded."""
    with Image.open(path) as im:
        width, height = im.size
    return height, width


def list_images(directory: Path, report: SkipReport, *, use_meta: bool = True) -> list[Path]:
    """Image paths of a folder: from `meta_data.json` when present and valid, else every image file, sorted."""
    meta = directory / META_FILE
    if use_meta and meta.exists():
        try:
            names = json.loads(meta.read_text(encoding="utf-8"))["img_names"]
            paths = []
            for name in names:
                path = directory / name
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    path = directory / f"{name}.png"  # the official default extension
                paths.append(path)
            return paths
        except (ValueError, KeyError, TypeError, OSError) as exc:
            report.skip("bad meta_data.json", str(meta), f"{exc!r}; scanning the folder instead")
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _make_entry(image: Path, key: str, report: SkipReport) -> _Entry | None:
    stem = image.with_suffix("")
    if not image.exists():
        report.skip("missing image", str(image))
        return None
    txt = _sibling(stem, ".txt")
    if not txt.exists():
        report.skip("missing caption", str(txt))
        return None
    try:
        caption = read_first_line(txt)
    except (OSError, UnicodeDecodeError) as exc:
        report.skip("unreadable caption", str(txt), str(exc))
        return None
    if not caption:
        report.skip("empty caption", str(txt))
        return None
    meta_json = _sibling(stem, ".json")
    try:
        meta = _read_sample_json(meta_json) if meta_json.exists() else {}
    except (OSError, ValueError) as exc:
        report.skip("bad json", str(meta_json), str(exc))
        return None
    try:
        if "height" in meta and "width" in meta:
            height, width = int(meta["height"]), int(meta["width"])
        else:
            height, width = _image_size(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        report.skip("unreadable image", str(image), str(exc))
        return None
    info = SampleInfo(key, height, width, meta.get("version"), _optional_float(meta.get("clipscore")))
    return _Entry(stem, image, caption, info)


def _optional_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class FolderSource:
    """Image + caption folders as an `ImageTextSource`.

    Args:
        dirs: one folder or several (concatenated in order).
        caption_suffixes: external caption sidecars `<name><suffix>.json` to merge, e.g. `("_InternVL2-26B",)`.
        clipscore_suffixes: clip-score sidecars `<name><suffix>.json`, e.g. `("_InternVL2-26B_clip_score",)`.
    """

    def __init__(
        self,
        dirs: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        caption_suffixes: Sequence[str] = (),
        clipscore_suffixes: Sequence[str] = (),
    ) -> None:
        self.dirs = [Path(dirs)] if isinstance(dirs, str | os.PathLike) else [Path(d) for d in dirs]
        self.caption_suffixes = tuple(caption_suffixes)
        self.clipscore_suffixes = tuple(clipscore_suffixes)
        self.report = SkipReport()
        self._entries: list[_Entry] = []
        for directory in self.dirs:
            if not directory.is_dir():
                raise FileNotFoundError(f"dataset folder not found: {directory}")
            prefix = f"{directory.name}/" if len(self.dirs) > 1 else ""
            for image in list_images(directory, self.report):
                entry = _make_entry(image, prefix + image.stem, self.report)
                if entry is not None:
                    self._entries.append(entry)
        check_not_empty(len(self._entries), ", ".join(map(str, self.dirs)), self.report)

    def __len__(self) -> int:
        return len(self._entries)

    def info(self, index: int) -> SampleInfo:
        return self._entries[index].info

    def load(self, index: int) -> RawSample:
        """Decode sample `index`. Raises `OSError` for a corrupt image (the caller skips and counts it)."""
        entry = self._entries[index]
        with Image.open(entry.image) as im:
            im.load()  # force the full decode here, so a truncated file fails now, not in a worker's transform
            image = im.convert("RGB")
        extra: dict[str, Any] = {}
        meta_json = _sibling(entry.stem, ".json")
        if meta_json.exists():
            extra = _read_sample_json(meta_json)
        captions, scores = gather_sidecars(
            str(entry.stem), entry.stem.name, self.caption_suffixes, self.clipscore_suffixes, self.report
        )
        return RawSample(entry.info, image, {DEFAULT_CAPTION: entry.caption, **captions}, scores, extra)

    def image_path(self, index: int) -> Path:
        return self._entries[index].image

    def stem(self, index: int) -> Path:
        return self._entries[index].stem


def write_meta_data(directory: str | os.PathLike, name: str | None = None) -> Path:
    """Write the official `meta_data.json` listing every image in `directory` that has a caption file."""
    directory = Path(directory)
    report = SkipReport()
    names = [
        p.name for p in list_images(directory, report, use_meta=False) if _sibling(p.with_suffix(""), ".txt").exists()
    ]
    if not names:
        raise FileNotFoundError(f"no image with a caption file in {directory}")
    path = directory / META_FILE
    write_json_atomic(path, {"name": name or directory.name, "__kind__": "Sana-ImgDataset", "img_names": names})
    logger.info("wrote %s (%d images)", path, len(names))
    return path


def write_folder(source: ImageTextSource, out_dir: str | os.PathLike, *, caption_suffix: str = "_captions") -> Path:
    """Write any source as an image + caption folder the official `SanaImgDataset` can read.

    Per sample: `<key>.png`, `<key>.txt` (the "prompt" caption), `<key>.json` (`prompt`, `height`, `width`,
    `file_name` and the source's per-sample json), and `<key><caption_suffix>.json` with the other caption types.
    Ends with `meta_data.json`. Samples that fail to decode are skipped and counted in `source.report`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for i in range(len(source)):
        try:
            sample = source.load(i)
        except (OSError, ValueError) as exc:
            source.report.skip("unreadable image", source.info(i).key, str(exc))
            continue
        key = sample.key.replace("/", "_")
        sample.image.save(out / f"{key}.png")
        (out / f"{key}.txt").write_text(sample.captions[DEFAULT_CAPTION] + "\n", encoding="utf-8")
        meta = {**sample.extra, "prompt": sample.captions[DEFAULT_CAPTION], "height": sample.info.height,
                "width": sample.info.width, "file_name": f"{key}.png"}  # fmt: skip
        write_json_atomic(out / f"{key}.json", meta)
        if others := {t: c for t, c in sample.captions.items() if t != DEFAULT_CAPTION}:
            write_json_atomic(out / f"{key}{caption_suffix}.json", {key: others})
        if sample.clip_scores:
            write_json_atomic(out / f"{key}_clip_score.json", {key: sample.clip_scores})
        written += 1
    check_not_empty(written, f"conversion to {out}", source.report)
    write_meta_data(out)
    return out
