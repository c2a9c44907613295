"""Writing caption sidecars with a vision-language model and clip-score sidecars with a CLIP model.

Both work with any local Hugging Face checkpoint folder (`AutoProcessor` + `AutoModelForImageTextToText` for
captions, `AutoProcessor` + `AutoModel` with `get_image_features`/`get_text_features` for CLIP scores), write the
sidecar format of spec §6.1 (per image for folders, per shard for shards), show a progress bar, and resume:
samples already present in the sidecar are skipped. Needs the `vlm` extra: `pip install "sana_data[vlm]"`.

The clip score is `100 * max(cos(image, text), 0)` (torchmetrics' CLIPScore), the scale of Sana's threshold 25.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .folder import FolderSource
from .records import DEFAULT_CAPTION, ImageTextSource, RawSample, logger
from .shards import ShardSource, require
from .sidecars import gather_sidecars, read_json, suffix_type, write_json_atomic

CLIP_SCALE = 100.0
FLUSH_EVERY = 16  # batches between sidecar rewrites (shard sidecars hold many keys)


def sidecar_path(source: ImageTextSource, index: int, suffix: str) -> Path:
    """Where the sidecar of sample `index` lives: next to the image (folders) or the shard (shards)."""
    if isinstance(source, FolderSource):
        stem = source.stem(index)
    elif isinstance(source, ShardSource):
        stem = source.shard_of(index).with_suffix("")
    else:
        raise TypeError(f"sidecars are written for folder and shard datasets, not {type(source).__name__}")
    return stem.with_name(stem.name + f"{suffix}.json")


def _sidecar_key(source: ImageTextSource, index: int) -> str:
    """Folder sidecars are keyed by the file name (no multi-folder prefix), shard sidecars by the member key."""
    return source.stem(index).name if isinstance(source, FolderSource) else source.info(index).key


class _Sidecars:
    """Sidecar files loaded on first use, updated in memory, rewritten atomically on `flush`."""

    def __init__(self, source: ImageTextSource, suffix: str) -> None:
        self.source, self.suffix = source, suffix
        self.files: dict[Path, dict[str, Any]] = {}
        self.dirty: set[Path] = set()

    def entry(self, index: int) -> dict[str, Any]:
        path = sidecar_path(self.source, index, self.suffix)
        if path not in self.files:
            self.files[path] = dict(read_json(path)) if path.exists() else {}
        return self.files[path].get(_sidecar_key(self.source, index), {})

    def set(self, index: int, values: dict[str, Any]) -> None:
        path = sidecar_path(self.source, index, self.suffix)
        self.entry(index)
        self.files[path].setdefault(_sidecar_key(self.source, index), {}).update(values)
        self.dirty.add(path)

    def flush(self) -> None:
        for path in sorted(self.dirty):
            write_json_atomic(path, self.files[path])
        self.dirty.clear()


def _batches(source: ImageTextSource, todo: list[int], batch_size: int) -> Iterator[list[tuple[int, RawSample]]]:
    for start in range(0, len(todo), batch_size):
        batch = []
        for i in todo[start : start + batch_size]:
            try:
                batch.append((i, source.load(i)))
            except (OSError, ValueError, SyntaxError) as exc:
                source.report.skip("corrupt image", source.info(i).key, repr(exc))
        yield batch


def _run(source: ImageTextSource, sidecars: _Sidecars, todo: list[int], batch_size: int, desc: str, fn: Any) -> int:
    done = 0
    with tqdm(total=len(todo), desc=desc, unit="img") as bar:
        for n, batch in enumerate(_batches(source, todo, batch_size)):
            if batch:
                for (i, _), values in zip(batch, fn([s for _, s in batch])):
                    sidecars.set(i, values)
                done += len(batch)
            bar.update(batch_size)
            if n % FLUSH_EVERY == FLUSH_EVERY - 1:
                sidecars.flush()
    sidecars.flush()
    source.report.log_summary(desc)
    return done


# --- Captioning -----------------------------------------------------------------------------------------------


class Captioner:
    """Any HF image-text-to-text model from a local folder; `prompt` is the instruction for chat VLMs."""

    def __init__(self, model: str | os.PathLike, *, prompt: str | None = None, max_new_tokens: int = 77,
                 device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        transformers = require("transformers", "vlm")
        self.processor = transformers.AutoProcessor.from_pretrained(model)
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(model, dtype=dtype).to(device).eval()
        self.prompt, self.max_new_tokens, self.device = prompt, max_new_tokens, device

    def _text(self, n: int) -> list[str] | None:
        if self.prompt is None:
            return None
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            return [self.processor.apply_chat_template(messages, add_generation_prompt=True)] * n
        return [self.prompt] * n

    @torch.no_grad()
    def __call__(self, images: Sequence[Any]) -> list[str]:
        text = self._text(len(images))
        inputs = self.processor(images=list(images), text=text, return_tensors="pt", padding=text is not None)
        inputs = inputs.to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)  # (B, T)
        prompt_ids = inputs.get("input_ids")
        if (
            prompt_ids is not None
            and out.shape[1] >= prompt_ids.shape[1]
            and torch.equal(out[:, : prompt_ids.shape[1]], prompt_ids)
        ):
            out = out[:, prompt_ids.shape[1] :]  # decoder-only models echo the prompt
        return [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]


def write_captions(
    source: ImageTextSource, captioner: Any, *, suffix: str = "_vlm", caption_type: str | None = None,
    batch_size: int = 4,
) -> int:  # fmt: skip
    """Caption every sample lacking `caption_type` in its `<suffix>` sidecar; returns how many were captioned.

    `captioner` maps a list of PIL images to a list of captions (a `Captioner`, or any callable).
    """
    caption_type = caption_type or suffix_type(suffix)
    sidecars = _Sidecars(source, suffix)
    todo = [i for i in range(len(source)) if caption_type not in sidecars.entry(i)]
    logger.info("captioning %d of %d samples into *%s.json", len(todo), len(source), suffix)

    def caption(samples: list[RawSample]) -> list[dict[str, str]]:
        texts = captioner([s.image for s in samples])
        for s, text in zip(samples, texts):
            if not text.strip():
                source.report.skip("empty generated caption", s.key)
        return [{caption_type: c} if c.strip() else {} for c in texts]

    return _run(source, sidecars, todo, batch_size, f"captioning ({caption_type})", caption)


# --- CLIP scores ----------------------------------------------------------------------------------------------


class ClipScorer:
    """CLIP score `100 * max(cos, 0)` of (image, caption) pairs with any local HF CLIP-style model."""

    def __init__(self, model: str | os.PathLike, *, device: str = "cpu") -> None:
        transformers = require("transformers", "vlm")
        self.processor = transformers.AutoProcessor.from_pretrained(model)
        self.model = transformers.AutoModel.from_pretrained(model).to(device).eval()
        self.device = device

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object

    @torch.no_grad()
    def __call__(self, images: Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        """Scores (N,) of image i with text i."""
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        tokens = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True).to(self.device)
        img = self._features(self.model.get_image_features(pixel_values=pixels))  # (N, D)
        txt = self._features(self.model.get_text_features(**tokens))  # (N, D)
        # fp32 cosine: half-precision norms of large features lose the digits the 25-point threshold needs.
        cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)  # (N,)
        return CLIP_SCALE * cos.clamp(min=0)


def write_clip_scores(source: ImageTextSource, scorer: Any, *, suffix: str = "_clip_score", batch_size: int = 8) -> int:
    """Score every caption type of every sample (its prompt and the source's caption sidecars) into the
    `<suffix>` sidecar; pairs already scored are skipped. Returns the number of samples scored."""
    sidecars = _Sidecars(source, suffix)

    def score(samples: list[RawSample]) -> list[dict[str, float]]:
        pairs = [(k, t, s.image, c) for k, s in enumerate(samples) for t, c in s.captions.items()]
        values = scorer([p[2] for p in pairs], [p[3] for p in pairs]).tolist() if pairs else []
        out: list[dict[str, float]] = [{} for _ in samples]
        for (k, t, _, _), v in zip(pairs, values):
            out[k][t] = round(float(v), 4)
        return out

    # Resume: skip samples whose entry already scores every caption type they have (read from the caption
    # sidecars, without decoding images).
    todo = [i for i in range(len(source)) if _needs_scores(source, i, sidecars.entry(i))]
    return _run(source, sidecars, todo, batch_size, "clip scores", score)


def _needs_scores(source: ImageTextSource, index: int, entry: dict[str, Any]) -> bool:
    types = {DEFAULT_CAPTION}
    if isinstance(source, FolderSource | ShardSource):
        stem = str(sidecar_path(source, index, "")).removesuffix(".json")
        captions, _ = gather_sidecars(stem, _sidecar_key(source, index), source.caption_suffixes, (), source.report)
        types |= set(captions)
    return not types <= set(entry)
