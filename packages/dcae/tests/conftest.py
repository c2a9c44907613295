"""Shared fixtures: offline hub, 2 threads, deterministic seeds, tiny models with non-trivial norms."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an accidental download fails loudly instead of hanging
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
