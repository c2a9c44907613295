"""What the recipe sweeps (`ae_recipe_sweep.py`, `dit_recipe_sweep.py`) share: choosing variants by name, and
running each chosen variant in a process of its own (small models: all of them at once on one GPU)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def pick(only: str | None, variants: dict) -> list[str]:
    """The names of `--only a,b` (default: every variant); an unknown name ends the program listing the known."""
    names = only.split(",") if only else list(variants)
    unknown = sorted(set(names) - set(variants))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(variants)}")
    return names


def fan_out(command: list[str], names: list[str], folder: Path) -> tuple[list[dict], list[str]]:
    """Run `command + ["--worker", "NAME:PATH"]` for every name at once; each worker writes its result as JSON to
    PATH (in `folder`). Returns the results of the workers that succeeded, in `names` order, and the failed names."""
    jobs = [(n, folder / f"{n}.json") for n in names]
    for _, path in jobs:
        path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([*command, "--worker", f"{n}:{p}"], env=env) for n, p in jobs]
    failed = [n for (n, _), p in zip(jobs, procs) if p.wait()]
    return [json.loads(p.read_text()) for n, p in jobs if n not in failed], failed
