from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory: pytest.TempPathFactory):
    """12 shapes-world samples as an image + caption folder (read-only for tests: copy before corrupting)."""
    from sana_data.testing import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy"), n=12, seed=3)
