"""Hugging Face `datasets` as an `ImageTextSource`: an image column and a text column, chosen by name.

The image column is read undecoded (`datasets.Image(decode=False)`), so `info` only parses the image header.
Optional `height`/`width` columns skip even that. Needs the `datasets` extra: `pip install "sana_data[datasets]"`.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from .records import DEFAULT_CAPTION, RawSample, SampleInfo, SkipReport, check_not_empty
from .shards import require


def _open(value: dict[str, Any]) -> Image.Image:
    if value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"]))
    if value.get("path"):
        return Image.open(value["path"])
    raise ValueError("image cell has neither bytes nor path")


class HFSource:
    """A `datasets.Dataset` with one image column and one or more text columns.

    Args:
        dataset: a `datasets.Dataset` (load it yourself: `load_dataset(...)`, `load_from_disk(...)`).
        image_column: name of the image column.
        text_column: the caption column; its caption type is "prompt".
        extra_text_columns: more caption columns, each becoming a caption type named after the column.
        key_column: a column of unique sample keys; default: the row index as a zero-padded string.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        image_column: str = "image",
        text_column: str = "text",
        extra_text_columns: tuple[str, ...] = (),
        key_column: str | None = None,
    ) -> None:
        datasets = require("datasets", "datasets")
        for column in (image_column, text_column, *extra_text_columns, *([key_column] if key_column else [])):
            if column not in dataset.column_names:
                raise KeyError(f"column {column!r} not in the dataset; columns: {dataset.column_names}")
        self.dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.image_column, self.text_column = image_column, text_column
        self.extra_text_columns = extra_text_columns
        self.report = SkipReport()
        self._rows: list[int] = []
        self._infos: list[SampleInfo] = []
        width = len(str(len(dataset)))
        has_size = {"height", "width"} <= set(dataset.column_names)
        for row in range(len(self.dataset)):
            record = self.dataset[row]
            key = str(record[key_column]) if key_column else str(row).zfill(width)
            info = self._make_info(record, key, has_size)
            if info is not None:
                self._rows.append(row)
                self._infos.append(info)
        check_not_empty(len(self._rows), f"datasets.Dataset ({len(dataset)} rows)", self.report)

    def _make_info(self, record: dict[str, Any], key: str, has_size: bool) -> SampleInfo | None:
        caption = record[self.text_column]
        if not isinstance(caption, str) or not caption.strip():
            self.report.skip("empty caption", f"row {key}")
            return None
        try:
            if has_size:
                height, width = int(record["height"]), int(record["width"])
            else:
                with _open(record[self.image_column]) as im:
                    width, height = im.size
        except (OSError, ValueError, TypeError) as exc:
            self.report.skip("unreadable image", f"row {key}", str(exc))
            return None
        return SampleInfo(key, height, width)

    def __len__(self) -> int:
        return len(self._rows)

    def info(self, index: int) -> SampleInfo:
        return self._infos[index]

    def load(self, index: int) -> RawSample:
        record = self.dataset[self._rows[index]]
        with _open(record[self.image_column]) as im:
            im.load()
            image = im.convert("RGB")
        captions = {DEFAULT_CAPTION: record[self.text_column].strip().split("\n")[0]}
        for column in self.extra_text_columns:
            if isinstance(record[column], str) and record[column].strip():
                captions[column] = record[column].strip()
        return RawSample(self._infos[index], image, captions)
