import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # the test tensors are tiny: extra threads only add sync overhead


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
