"""Atomic file writes shared by the package (configs, PNGs, manifests, reports)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a hidden sibling of `path` for writing and rename it over `path` when the block ends without error.

    Readers never see a partial file, and a failure leaves `path` as it was. The sibling is created by `open`, so
    its permissions follow the umask (`tempfile.mkstemp` would make every output 0600).
    """
    path = Path(path)
    if "w" not in mode:
        raise ValueError(f"atomic_open writes files: mode must contain 'w', got {mode!r}")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
