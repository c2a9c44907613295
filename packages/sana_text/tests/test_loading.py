"""The public loading path users take (`from_pretrained` on a folder) for Gemma-2, Gemma-3, Qwen2 and T5."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sana_text import TextEncoder, load_t5_encoder, load_text_encoder
from sana_text.testing import save_tiny_llm


def test_gemma2_folder_loads_the_decoder_only_in_bf16(gemma_dir: Path, gemma_lm, tokenizer) -> None:
    from transformers import Gemma2Model

    encoder = load_text_encoder(gemma_dir)
    assert isinstance(encoder.model, Gemma2Model)  # the decoder stack, no LM head
    assert encoder.dtype == torch.bfloat16 and encoder.embed_dim == 32 and encoder.max_length == 300
    assert encoder.model_id == str(gemma_dir) and encoder.revision.startswith("local-")
    assert encoder.n_chi == len(encoder.tokenizer(encoder.instruction)["input_ids"])
    assert encoder.encode(["a cat"]).embeddings.dtype == torch.bfloat16
    # (bf16 equality with the official `AutoModelForCausalLM(...).get_decoder()` loading: test_parity_diffusers.)


def test_loaded_weights_are_the_saved_ones(gemma_dir: Path, gemma_lm, tokenizer) -> None:
    """fp32 load == the in-memory model's `.get_decoder()`, so nothing is lost between saving and loading."""
    encoder = load_text_encoder(gemma_dir, dtype=torch.float32)
    out = encoder.encode(["a cat", "a dog"])
    ref = TextEncoder(gemma_lm.get_decoder(), tokenizer).encode(["a cat", "a dog"])
    assert torch.equal(out.embeddings, ref.embeddings) and torch.equal(out.mask, ref.mask)


def test_loader_options(gemma_dir: Path) -> None:
    encoder = load_text_encoder(gemma_dir, chi=None, max_length=20, dtype=torch.float32, revision="v1")
    assert encoder.instruction == "" and encoder.revision == "v1" and encoder.dtype == torch.float32
    assert encoder.encode(["a cat"]).embeddings.shape == (1, 20, 32)
    with pytest.raises(ValueError, match="expects D_txt = 2304"):
        load_text_encoder(gemma_dir, expected_dim=2304)
    assert load_text_encoder(gemma_dir, skip_layers=0).skip_layers == 0
    with pytest.raises(ValueError, match="skip_layers=1 leaves no block of this 1-layer model"):
        load_text_encoder(gemma_dir, skip_layers=1)


def test_local_revision_follows_the_files(tmp_path: Path) -> None:
    folder = save_tiny_llm(tmp_path / "m", "gemma2")
    first = load_text_encoder(folder).revision
    assert load_text_encoder(folder).revision == first
    save_tiny_llm(folder, "gemma2", seed=1)  # new weights in the same place
    assert load_text_encoder(folder).revision != first


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_other_decoder_families_through_automodel(tmp_path: Path, family: str) -> None:
    folder = save_tiny_llm(tmp_path / family, family)
    encoder = load_text_encoder(folder, max_length=24)
    assert "ForCausalLM" not in type(encoder.model).__name__
    assert encoder.prepend_bos == (family == "qwen2")  # the Qwen-style tokenizer does not add BOS itself
    out = encoder.encode(["a cat", "一只猫"])
    assert out.embeddings.shape == (2, 24, 32) and out.embeddings.dtype == torch.bfloat16
    tokens = encoder.tokenize(["a cat"])
    assert tokens.input_ids[0, 0] == encoder.tokenizer.bos_token_id
    assert torch.isfinite(out.embeddings.float()).all()
    assert out.mask[:, 0].all()


def test_t5_encoder(tmp_path: Path) -> None:
    folder = save_tiny_llm(tmp_path / "t5", "t5")
    encoder = load_t5_encoder(folder, max_length=24, dtype=torch.float32)
    assert encoder.is_t5 and encoder.instruction == "" and not encoder.prepend_bos
    out = encoder.encode(["a cat", "a busy city street at dusk"])
    assert out.embeddings.shape == (2, 24, 32)
    ids = encoder.tokenizer(["a cat"])["input_ids"][0]
    assert ids[-1] == encoder.tokenizer.eos_token_id  # T5 appends EOS, no BOS
    assert int(out.mask[0].sum()) == len(ids)
    # Bidirectional, but padding is masked: batch composition does not change a prompt's features.
    one = encoder.encode(["a cat"])
    torch.testing.assert_close(one.embeddings[0, : len(ids)], out.embeddings[0, : len(ids)], rtol=1e-5, atol=1e-6)
    null = encoder.null_embedding()
    assert null.mask[0, :2].tolist() == [1, 0]  # "" is just </s>


def test_wrong_loader_for_the_family(tmp_path: Path, gemma_dir: Path) -> None:
    t5 = save_tiny_llm(tmp_path / "t5", "t5")
    with pytest.raises(ValueError, match="load_t5_encoder"):
        load_text_encoder(t5)
    with pytest.raises(ValueError, match="load_text_encoder"):
        load_t5_encoder(gemma_dir)
    from transformers import AutoModel, AutoTokenizer

    with pytest.raises(ValueError, match="chi=None for a T5"):
        TextEncoder(AutoModel.from_pretrained(t5).get_encoder(), AutoTokenizer.from_pretrained(t5))


def test_missing_folder_fails_offline(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_text_encoder(tmp_path / "does-not-exist")
