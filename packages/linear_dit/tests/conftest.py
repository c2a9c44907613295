"""Shared test settings: two threads (CI's machine), and tiny models from linear_dit.testing."""

from __future__ import annotations

import pytest
import torch

from linear_dit import LinearDiTConfig
from linear_dit.testing import tiny_config

torch.set_num_threads(2)


@pytest.fixture
def tiny() -> LinearDiTConfig:
    return tiny_config()
