"""Training checkpoints: `accelerate` state written atomically, keep-last-K, `latest`.

A checkpoint is the folder `work_dir/checkpoints/step_{S:07d}/` holding `accelerator.save_state` output (model,
optimizer, LR scheduler, RNG, registered objects such as the trainer state) and `transformer/` (the weights in our
`linear_dit` format, loadable by `load_from` and the pipeline). It is written under a temporary name and renamed
into place when complete, so a crash (or a full disk) while saving leaves the previous checkpoints valid and no
half-written folder under a real name. `latest` is a text file naming the newest complete checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
LATEST = "latest"
_NAME = re.compile(r"^step_(\d{7,})$")


def checkpoint_dir(work_dir: str | Path) -> Path:
    return Path(work_dir) / CHECKPOINTS


def list_checkpoints(work_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(work_dir)
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(work_dir: str | Path, resume_from: str) -> Path:
    """`latest` (the `latest` file, else the highest step) or an explicit checkpoint folder."""
    if resume_from != LATEST:
        path = Path(resume_from).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"resume_from: no checkpoint folder at {path}")
        return path
    pointer = checkpoint_dir(work_dir) / LATEST
    if pointer.is_file():
        named = checkpoint_dir(work_dir) / pointer.read_text().strip()
        if named.is_dir():
            return named
    found = list_checkpoints(work_dir)
    if not found:
        raise FileNotFoundError(f"resume_from=latest: no checkpoint under {checkpoint_dir(work_dir)}")
    return found[-1]


def save_checkpoint(accelerator: Any, work_dir: str | Path, step: int, write_weights: Any, keep: int) -> Path:
    """Write the checkpoint of `step` atomically; `write_weights(folder)` adds the transformer weights."""
    root = checkpoint_dir(work_dir)
    final = root / f"step_{step:07d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
    accelerator.wait_for_everyone()
    tmp = root / f".tmp_step_{step:07d}"
    accelerator.save_state(str(tmp))  # every rank writes its own RNG state
    if accelerator.is_main_process:
        write_weights(tmp / "transformer")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_text(root / LATEST, final.name)
        for old in list_checkpoints(work_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _remove_leftovers(root: Path) -> None:
    """Temporaries of a save that was killed part-way (a `.tmp_step_*` folder, a `.latest.*` file): the run is the
    folder's only writer, so before it saves, any that exist are stale."""
    for leftover in [*root.glob(".tmp_step_*"), *root.glob(f"{_temp_prefix(LATEST)}*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover)  # as before: a stale save that cannot be removed is an error, not skipped
        else:
            leftover.unlink(missing_ok=True)


def _temp_prefix(name: str) -> str:
    """The prefix of `_write_text`'s temporary for the file `name` (what `_remove_leftovers` looks for)."""
    return f".{name}."


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)
