"""Bit-exact parity with diffusers' SanaPipeline text path (0.42.1), given the same tiny Gemma-2 and tokenizer.

We set diffusers' `complex_human_instruction` to our exact lines and `clean_caption=False`. Deliberate differences,
each pinned by a test below:
- diffusers lowercases prompts; we keep case (native Sana, user-needs #15). Parity is exact on lowercase prompts.
- diffusers' default instruction writes 'Enhanced prompt' in single quotes; ours uses the training configs' double
  quotes (see test_chi.py).
- diffusers pairs the negative embedding with the negative prompt's own mask; native Sana (our default in
  `encode_for_guidance`) pairs it with the conditional mask. `uncond_mask="own"` reproduces diffusers.
"""

from __future__ import annotations

import pytest
import torch

from sana_text import COMPLEX_HUMAN_INSTRUCTION_LINES, TextEncoder, encode_for_guidance, load_text_encoder
from sana_text.testing import tiny_gemma2

PROMPTS = [
    "a cat sleeping on a warm sunny windowsill",
    "a busy city street at dusk",
    "一只猫 🐱 with emoji",
    "portrait of an old man with a long white beard, oil painting, " * 3,
]


def _diffusers_pipe(tokenizer, decoder):
    from diffusers import SanaPipeline

    return SanaPipeline(tokenizer=tokenizer, text_encoder=decoder, vae=None, transformer=None, scheduler=None)


def _diffusers_encode(pipe, prompts, *, chi=True, max_length=300, negative=""):
    return pipe.encode_prompt(
        prompts,
        do_classifier_free_guidance=True,
        negative_prompt=negative,
        device=torch.device("cpu"),
        clean_caption=False,
        max_sequence_length=max_length,
        complex_human_instruction=list(COMPLEX_HUMAN_INSTRUCTION_LINES) if chi else None,
    )


def _assert_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b), f"max abs diff {(a.float() - b.float()).abs().max().item()}"


@pytest.fixture(scope="module")
def bf16_pair(tokenizer):
    """(our encoder, diffusers pipeline) over the very same bf16 decoder module and tokenizer."""
    decoder = tiny_gemma2(vocab_size=len(tokenizer), dtype=torch.bfloat16).get_decoder()
    return TextEncoder(decoder, tokenizer, on_truncate="ignore"), _diffusers_pipe(tokenizer, decoder)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_conditional_and_negative_match_diffusers(tokenizer, dtype: torch.dtype) -> None:
    decoder = tiny_gemma2(vocab_size=len(tokenizer), dtype=dtype).get_decoder()
    ours = TextEncoder(decoder, tokenizer, on_truncate="ignore")
    embeds, mask, neg_embeds, neg_mask = _diffusers_encode(_diffusers_pipe(tokenizer, decoder), PROMPTS)
    cond, own = encode_for_guidance(ours, PROMPTS, "", uncond_mask="own")
    _, native = encode_for_guidance(ours, PROMPTS, "")
    _assert_identical(cond.embeddings, embeds)
    _assert_identical(cond.mask, mask)
    _assert_identical(own.embeddings, neg_embeds)
    _assert_identical(own.mask, neg_mask)
    # Native Sana pairs the null features with the caption's mask; diffusers with "" 's own mask [1, 0, ...].
    _assert_identical(native.embeddings, neg_embeds)
    _assert_identical(native.mask, mask)
    assert not torch.equal(native.mask, neg_mask)


def test_negative_prompt_matches_diffusers(bf16_pair) -> None:
    ours, pipe = bf16_pair
    *_, neg_embeds, neg_mask = _diffusers_encode(pipe, PROMPTS[:1], negative="blurry, low quality")
    _, uncond = encode_for_guidance(ours, PROMPTS[:1], "blurry, low quality", uncond_mask="own")
    _assert_identical(uncond.embeddings, neg_embeds)
    _assert_identical(uncond.mask, neg_mask)


def test_without_instruction_matches_diffusers(bf16_pair, tokenizer) -> None:
    ours, pipe = bf16_pair
    plain = TextEncoder(ours.model, tokenizer, chi=None, on_truncate="ignore").encode(PROMPTS)
    embeds, mask, *_ = _diffusers_encode(pipe, PROMPTS, chi=False)
    _assert_identical(plain.embeddings, embeds)
    _assert_identical(plain.mask, mask)


@pytest.mark.parametrize("max_length", [2, 120])
def test_other_lengths_match_diffusers(bf16_pair, tokenizer, max_length: int) -> None:
    ours, pipe = bf16_pair
    short = TextEncoder(ours.model, tokenizer, max_length=max_length, on_truncate="ignore").encode(PROMPTS)
    embeds, mask, *_ = _diffusers_encode(pipe, PROMPTS, max_length=max_length)
    _assert_identical(short.embeddings, embeds)
    _assert_identical(short.mask, mask)


def test_we_keep_case_where_diffusers_lowercases(bf16_pair) -> None:
    ours, pipe = bf16_pair
    embeds, *_ = _diffusers_encode(pipe, ["A Cat On A Mat"])
    _assert_identical(ours.encode(["a cat on a mat"]).embeddings, embeds)  # diffusers saw the lowercase text
    assert not torch.equal(ours.encode(["A Cat On A Mat"]).embeddings, embeds)


def test_loaded_folder_matches_diffusers_official_loading(gemma_dir) -> None:
    """Our loader (AutoModel, bf16) against the official way: AutoModelForCausalLM(...).get_decoder() in bf16."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours = load_text_encoder(gemma_dir, on_truncate="ignore")
    decoder = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.bfloat16).get_decoder()
    pipe = _diffusers_pipe(AutoTokenizer.from_pretrained(gemma_dir), decoder)
    embeds, mask, *_ = _diffusers_encode(pipe, PROMPTS)
    cond = ours.encode(PROMPTS)
    assert cond.embeddings.dtype == torch.bfloat16
    _assert_identical(cond.embeddings, embeds)
    _assert_identical(cond.mask, mask)
