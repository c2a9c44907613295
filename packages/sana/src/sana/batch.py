"""Batch generation over prompt files: resumable, one PNG per image with its settings, and a JSON manifest.

Image `i` of a run (prompt-major, `images_per_prompt` per prompt) uses seed `seed + i`, so an image depends only on
its index: a resumed run skips the files that exist and the rest come out as in an uninterrupted run, whatever the
batch size (native Sana keeps seeds aligned the same way, spec §8.5).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sana._io import atomic_open
from sana.images import save_png, to_pil
from sana.pipeline import SanaPipeline

MANIFEST = "manifest.json"
MAX_STEM = 80  # characters of a prompt kept in a txt-mode file name
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a batch run; `key` names its files (`{key}.png`, or `{key}_{j}.png` for several images)."""

    key: str
    prompt: str


@dataclass(frozen=True)
class Job:
    """One image: which prompt, which of its images, its run-wide index and seed, and its file name."""

    item: PromptItem
    image: int
    index: int
    seed: int
    file: str


def _slug(text: str) -> str:
    return _UNSAFE.sub("_", text.strip())[:MAX_STEM].strip("_") or "prompt"


def read_txt_prompts(path: str | Path) -> list[PromptItem]:
    """One prompt per non-empty line (`--ar H:W` flags allowed); files are `{line:05d}_{prompt slug}.png`."""
    path = Path(path)
    lines = _read_text(path).splitlines()
    items = [PromptItem(f"{n:05d}_{_slug(line)}", line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    if not items:
        raise ValueError(f"{path}: no prompts (the file is empty)")
    return items


def read_json_prompts(path: str | Path) -> list[PromptItem]:
    """MJHQ-style `{key: {"prompt": ...}, ...}` or a list of `{"prompt": ..., "key"?: ...}`; files are `{key}.png`."""
    path = Path(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} line {err.lineno} column {err.colno}: malformed JSON ({err.msg})") from None
    if isinstance(data, Mapping):
        entries = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, list):
        entries = [(str(v.get("key", f"{i:05d}")) if isinstance(v, Mapping) else "", v) for i, v in enumerate(data)]
    else:
        raise ValueError(f"{path}: expected an object of entries or a list, got {type(data).__name__}")
    items = []
    for key, entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
            raise ValueError(f'{path}: entry {key!r} has no non-empty string "prompt" field')
        items.append(PromptItem(_slug(key), entry["prompt"].strip()))
    if not items:
        raise ValueError(f"{path}: no prompts")
    return items


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"prompt file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err}") from None


def plan(items: Sequence[PromptItem], images_per_prompt: int, seed: int) -> list[Job]:
    """Every image of the run, in order, with its seed and file name."""
    jobs = []
    for p, item in enumerate(items):
        for j in range(images_per_prompt):
            index = p * images_per_prompt + j
            name = f"{item.key}.png" if images_per_prompt == 1 else f"{item.key}_{j}.png"
            jobs.append(Job(item, j, index, seed + index, name))
    names = [job.file for job in jobs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:3]
        raise ValueError(f"several prompts would write the same file(s) {dup}; give the JSON entries unique keys")
    return jobs


def run_batch(
    pipe: SanaPipeline,
    items: Sequence[PromptItem],
    out_dir: str | Path,
    *,
    settings: Mapping[str, Any],
    images_per_prompt: int = 1,
    batch_size: int = 1,
    seed: int = 0,
    on_image: Callable[[Job, Path], Any] | None = None,
) -> Path:
    """Generate every image of `items` not yet in `out_dir`; returns the manifest path.

    Args:
        settings: keyword arguments for the pipeline call (height, width, num_inference_steps, guidance_scale, ...),
            also recorded in every PNG and in the manifest.
        batch_size: images per pipeline call (does not change any image).
        on_image: called after each PNG is written.
    """
    if batch_size < 1 or images_per_prompt < 1:
        raise ValueError(f"batch_size and images_per_prompt must be >= 1, got {batch_size}, {images_per_prompt}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan(items, images_per_prompt, seed)
    todo = [job for job in jobs if not (out / job.file).exists()]
    manifest = _load_manifest(out)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        prompts, seeds = [job.item.prompt for job in chunk], [job.seed for job in chunk]
        images = pipe(prompts, seed=seeds, **{**settings, "output_type": "pt"})  # (B, 3, H, W), or a list
        for k, job in enumerate(chunk):
            image = to_pil(images[k][None])[0]
            record = {"file": job.file, "prompt": job.item.prompt, "key": job.item.key, "index": job.index,
                      "seed": job.seed, **_jsonable(settings)}  # fmt: skip
            save_png(image, out / job.file, record)
            manifest[job.file] = record
            if on_image is not None:
                on_image(job, out / job.file)
        _write_json(out / MANIFEST, {"images": [manifest[k] for k in sorted(manifest)]})
    if not todo:
        _write_json(out / MANIFEST, {"images": [manifest[k] for k in sorted(manifest)]})
    return out / MANIFEST


def _jsonable(settings: Mapping[str, Any]) -> dict[str, Any]:
    plain = str | int | float | bool | None | list | tuple
    return {k: v if isinstance(v, plain) else str(v) for k, v in settings.items()}


def _load_manifest(out: Path) -> dict[str, dict[str, Any]]:
    path = out / MANIFEST
    if not path.exists():
        return {}
    try:
        records = json.loads(path.read_text())["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a manifest written by `sana generate` ({err}); move it away") from None
    return {r["file"]: r for r in records if (out / r["file"]).exists()}


def _write_json(path: Path, data: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")


__all__ = ("PromptItem", "Job", "read_txt_prompts", "read_json_prompts", "plan", "run_batch")
