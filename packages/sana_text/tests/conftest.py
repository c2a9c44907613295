"""Shared fixtures: everything is built in memory or in a temp folder; the Hub is switched off before any import."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # an accidental download fails loudly instead of hanging
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path

import pytest
import torch

from sana_text.testing import save_tiny_llm, tiny_gemma2, tiny_tokenizer

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tokenizer():
    """The Gemma-style tiny tokenizer (adds BOS, pads with <pad>). Read-only: tests must not mutate it."""
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def gemma_lm(tokenizer):
    """A 1-layer random Gemma2ForCausalLM in fp32."""
    return tiny_gemma2(vocab_size=len(tokenizer))


@pytest.fixture(scope="session")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Gemma-2 model and tokenizer saved as a local model folder."""
    return save_tiny_llm(tmp_path_factory.mktemp("gemma2"), "gemma2")
