"""What every source yields, and the bookkeeping of samples that could not be used.

A *source* is an indexable collection of image-text samples (a folder, WebDataset shards, a Hugging Face
dataset). It answers `info(i)` from metadata alone (no image decode; this is what bucketing reads) and
`load(i)` with the decoded image and every caption. Sources satisfy the `ImageTextSource` protocol.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

logger = logging.getLogger("sana_data")

DEFAULT_CAPTION = "prompt"  # caption type of the sample's own caption (the .txt first line / json "prompt")


@dataclass(frozen=True)
class SampleInfo:
    """Metadata known without decoding the image: enough to bucket and filter a sample."""

    key: str
    height: int  # original image height in pixels
    width: int  # original image width in pixels
    version: str | None = None  # the official `hq_only` filter keeps version == "high_quality"
    clip_score: float | None = None  # the json's `clipscore`, used by the sampler's score filter


@dataclass
class RawSample:
    """A decoded sample: the image, every caption by type and every clip score by caption type."""

    info: SampleInfo
    image: Image.Image
    captions: dict[str, str]
    clip_scores: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # the per-sample json (ground truth, file name, ...)

    @property
    def key(self) -> str:
        return self.info.key


@runtime_checkable
class ImageTextSource(Protocol):
    """An indexable image-text dataset. `info` must not decode the image."""

    report: SkipReport

    def __len__(self) -> int: ...
    def info(self, index: int) -> SampleInfo: ...
    def load(self, index: int) -> RawSample: ...


class NoUsableSampleError(ValueError):
    """A dataset in which every candidate sample was skipped (the message says why)."""


@dataclass
class SkipReport:
    """Counts skipped samples by reason and keeps a few examples of each; every skip is also logged."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown.append(where)
        logger.warning("skipped %s (%s)%s", where, reason, f": {detail}" if detail else "")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: SkipReport) -> None:
        for reason, n in other.counts.items():
            self.counts[reason] += n
            self.examples.setdefault(reason, [])
            room = self.max_examples - len(self.examples[reason])
            self.examples[reason].extend(other.examples.get(reason, [])[: max(room, 0)])

    def absorb(self, skipped: Iterable[Sequence[str]]) -> None:
        """Count `(reason, where)` pairs carried back by samples from DataLoader workers."""
        for reason, where in skipped:
            self.counts[reason] += 1
            shown = self.examples.setdefault(reason, [])
            if len(shown) < self.max_examples:
                shown.append(where)

    def summary(self) -> str:
        if not self.counts:
            return "no sample skipped"
        parts = [
            f"{n} {reason} (e.g. {', '.join(self.examples.get(reason, [])[:2])})"
            for reason, n in self.counts.most_common()
        ]
        return f"skipped {self.total} samples: " + "; ".join(parts)

    def log_summary(self, what: str) -> None:
        if self.counts:
            logger.warning("%s: %s", what, self.summary())
        else:
            logger.info("%s: %s", what, self.summary())


def check_not_empty(n_usable: int, where: str, report: SkipReport) -> None:
    """Raise `NoUsableSampleError` naming every reason when nothing usable was found."""
    if n_usable == 0:
        why = report.summary() if report.counts else "no image files found"
        raise NoUsableSampleError(f"no usable sample in {where}: {why}")
    report.log_summary(f"{where}: {n_usable} usable samples")
