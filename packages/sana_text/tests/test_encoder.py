"""TextEncoder on a tiny random Gemma-2: token-selection invariants, the negative/null path, memory, bad input."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from sana_text import (
    COMPLEX_HUMAN_INSTRUCTION,
    PromptTruncatedWarning,
    TextEncoder,
    encode_for_guidance,
    select_index,
)
from sana_text.testing import tiny_gemma2, tiny_text_encoder, tiny_tokenizer


@pytest.fixture(scope="module")
def encoder(tokenizer, gemma_lm) -> TextEncoder:
    """fp32 so that exact-equality invariants test the logic, not bf16 rounding."""
    return TextEncoder(gemma_lm.get_decoder(), tokenizer)


def _window_text(encoder: TextEncoder, prompt: str) -> str:
    """The text of the kept, unmasked positions after BOS."""
    tokens = encoder.tokenize([prompt])
    ids = tokens.input_ids[:, select_index(encoder.max_length)][0]
    mask = tokens.attention_mask[:, select_index(encoder.max_length)][0]
    return encoder.tokenizer.decode(ids[1:][mask[1:].bool()])


def test_shapes_dtypes_and_frozen(encoder: TextEncoder) -> None:
    out = encoder.encode(["a cat", "a busy city street at dusk"])
    assert out.embeddings.shape == (2, 300, encoder.embed_dim) and out.embeddings.dtype == torch.float32
    assert out.mask.shape == (2, 300) and out.mask.dtype == torch.int64
    assert not out.embeddings.requires_grad
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.model.parameters())
    emb, mask = out  # a plain 2-tuple for the protocol
    assert emb is out.embeddings and mask is out.mask


def test_outputs_can_feed_a_training_graph(encoder: TextEncoder) -> None:
    """no_grad, not inference_mode: inference tensors could not be saved for backward by the DiT's layers."""
    emb = encoder.encode(["a cat"]).embeddings
    weight = torch.randn(encoder.embed_dim, 4, requires_grad=True)
    (emb @ weight).square().sum().backward()
    assert weight.grad is not None


def test_position_zero_is_bos_and_mask_is_right_padded(encoder: TextEncoder) -> None:
    tokens = encoder.tokenize(["a cat", "portrait of an old man with a long white beard"])
    ids = tokens.input_ids[:, select_index(300)]
    mask = tokens.attention_mask[:, select_index(300)]
    assert (ids[:, 0] == encoder.tokenizer.bos_token_id).all()
    for row_ids, row_mask in zip(ids, mask):
        n = int(row_mask.sum())
        assert row_mask[:n].all() and not row_mask[n:].any()
        assert (row_ids[n:] == encoder.tokenizer.pad_token_id).all()
    assert torch.equal(encoder.encode(["a cat", "portrait of an old man with a long white beard"]).mask, mask)


def test_instruction_tokens_leave_the_window(encoder: TextEncoder) -> None:
    """The window starts at position n_chi - 1: at most the instruction's last token is kept (spec §11 target)."""
    assert encoder.sequence_length - (encoder.max_length - 1) == encoder.n_chi - 1
    text = _window_text(encoder, "a cat")
    assert text.endswith("a cat")
    assert len(text) <= len("Prompt: a cat")  # "User Prompt: " itself is (almost) entirely gone


def _words(n: int) -> str:
    return " ".join(["sunny", "windowsill", "at", "dusk", "猫"][i % 5] for i in range(n))


def test_prompt_tokens_fit_the_window_up_to_the_limit(tokenizer, gemma_lm) -> None:
    """Every prompt that is not truncated lies entirely inside the kept window; every truncated one is cut."""
    encoder = TextEncoder(gemma_lm.get_decoder(), tokenizer, max_length=40, on_truncate="ignore")
    dropped = {n: encoder.tokenize([_words(n)]).dropped[0] for n in range(1, 60, 3)}
    assert 0 < sum(d == 0 for d in dropped.values()) < len(dropped)  # both cases are exercised
    for n, d in dropped.items():
        assert _window_text(encoder, _words(n)).endswith(_words(n)) == (d == 0), n
    at_limit = max(n for n, d in dropped.items() if d == 0)
    assert encoder.tokenize([_words(at_limit)]).attention_mask.sum() >= encoder.sequence_length - 3


def test_long_prompts_are_reported_not_silent(tokenizer, gemma_lm) -> None:
    encoder = TextEncoder(gemma_lm.get_decoder(), tokenizer, max_length=8)
    long_prompt = "a photo of an astronaut riding a horse on the moon, digital art"
    full = len(tokenizer(COMPLEX_HUMAN_INSTRUCTION + long_prompt)["input_ids"])
    expected = full - encoder.sequence_length
    assert encoder.tokenize(["a cat", long_prompt]).dropped == (0, expected)
    with pytest.warns(PromptTruncatedWarning, match=rf"1 of 2 prompt\(s\).*\{{1: {expected}\}}"):
        encoder.encode(["a cat", long_prompt])
    strict = TextEncoder(gemma_lm.get_decoder(), tokenizer, max_length=8, on_truncate="error")
    with pytest.raises(ValueError, match="exceed the 8-token limit"):
        strict.encode([long_prompt])
    quiet = TextEncoder(gemma_lm.get_decoder(), tokenizer, max_length=8, on_truncate="ignore")
    with warnings_as_errors():
        quiet.encode([long_prompt])


class warnings_as_errors:  # noqa: N801 (used as a context manager)
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_selected_positions_are_the_full_forward_at_those_positions(encoder: TextEncoder) -> None:
    tokens = encoder.tokenize(["a cat", "a dog"])
    with torch.no_grad():
        full = encoder.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    assert torch.equal(encoder.encode(["a cat", "a dog"]).embeddings, full[:, select_index(300)])


def test_real_tokens_do_not_depend_on_max_length(tokenizer, gemma_lm) -> None:
    """Causal attention + right padding: a longer budget only adds padding after the real tokens."""
    short = TextEncoder(gemma_lm.get_decoder(), tokenizer, max_length=40).encode(["a cat on a mat"])
    long = TextEncoder(gemma_lm.get_decoder(), tokenizer, max_length=300).encode(["a cat on a mat"])
    n = int(short.mask.sum())
    assert int(long.mask.sum()) == n
    torch.testing.assert_close(short.embeddings[:, :n], long.embeddings[:, :n], rtol=1e-5, atol=1e-5)


def test_batch_invariance(encoder: TextEncoder) -> None:
    prompts = ["a cat", "a busy city street at dusk", "一只猫 🐱"]
    batch = encoder.encode(prompts)
    for i, prompt in enumerate(prompts):
        one = encoder.encode([prompt])
        assert torch.equal(one.mask[0], batch.mask[i])
        assert torch.equal(one.embeddings[0], batch.embeddings[i])  # exact, padding positions included


def test_instruction_changes_the_features(tokenizer, gemma_lm) -> None:
    with_chi = TextEncoder(gemma_lm.get_decoder(), tokenizer).encode(["a cat"])
    custom = TextEncoder(gemma_lm.get_decoder(), tokenizer, chi=["Describe the image.", "Prompt: "]).encode(["a cat"])
    without = TextEncoder(gemma_lm.get_decoder(), tokenizer, chi=None).encode(["a cat"])
    assert not torch.equal(with_chi.embeddings, custom.embeddings)
    assert not torch.equal(with_chi.embeddings, without.embeddings)
    assert without.mask.sum() == len(tokenizer("a cat")["input_ids"])  # CHI off: plain tokens, all kept


def test_case_and_cjk_reach_the_model(encoder: TextEncoder) -> None:
    assert not torch.equal(encoder.tokenize(["A Cat"]).input_ids, encoder.tokenize(["a cat"]).input_ids)
    assert _window_text(encoder, "一只可爱的猫 🐱").endswith("一只可爱的猫 🐱")
    assert encoder.tokenize(["  a cat \n"]).input_ids.equal(encoder.tokenize(["a cat"]).input_ids)


def test_negative_and_null_have_no_instruction(encoder: TextEncoder, tokenizer, gemma_lm) -> None:
    plain = TextEncoder(gemma_lm.get_decoder(), tokenizer, chi=None)
    assert torch.equal(encoder.encode_negative(["blurry"]).embeddings, plain.encode(["blurry"]).embeddings)
    null = encoder.null_embedding()
    assert null.embeddings.shape == (1, 300, encoder.embed_dim)
    assert null.mask[0].tolist() == [1] + [0] * 299  # BOS + 299 pads
    assert torch.equal(encoder.encode_negative("").embeddings, null.embeddings)
    assert torch.equal(encoder.encode_negative([""]).embeddings, null.embeddings)


def test_encode_for_guidance(encoder: TextEncoder) -> None:
    cond, uncond = encode_for_guidance(encoder, ["a cat", "a dog on a mat"], "")
    assert uncond.embeddings.shape == cond.embeddings.shape
    null = encoder.null_embedding()
    assert torch.equal(uncond.embeddings[1], null.embeddings[0])
    assert torch.equal(uncond.mask, cond.mask)
    _, own = encode_for_guidance(encoder, ["a cat", "a dog on a mat"], "", uncond_mask="own")
    assert torch.equal(own.mask, null.mask.expand(2, -1))
    with pytest.raises(ValueError, match="uncond_mask"):
        encode_for_guidance(encoder, ["a cat"], uncond_mask="diffusers")  # type: ignore[arg-type]


def test_qwen_style_tokenizer_gets_bos_prepended(gemma_lm) -> None:
    tok = tiny_tokenizer(add_bos=False)
    encoder = TextEncoder(gemma_lm.get_decoder(), tok)
    assert encoder.prepend_bos
    assert encoder.n_chi == len(tok(COMPLEX_HUMAN_INSTRUCTION)["input_ids"]) + 1
    tokens = encoder.tokenize(["a cat"])
    assert tokens.input_ids.shape == (1, encoder.sequence_length)
    assert tokens.input_ids[0, 0] == tok.bos_token_id
    assert tokens.input_ids[0, 1:].tolist()[:10] == tok(COMPLEX_HUMAN_INSTRUCTION + "a cat")["input_ids"][:10]
    assert _window_text(encoder, "a cat").endswith("a cat")
    assert encoder.encode(["a cat"]).mask[0, 0] == 1


# --- memory --------------------------------------------------------------------------------------------------------


def test_offload_keeps_working_and_free_releases_the_model() -> None:
    encoder = tiny_text_encoder(max_length=16)
    before = encoder.encode(["a cat"])
    assert encoder.offload() is encoder and encoder.device == torch.device("cpu")
    assert torch.equal(encoder.encode(["a cat"]).embeddings, before.embeddings)
    model_ref = weakref.ref(encoder.model)
    encoder.free()
    gc.collect()
    assert model_ref() is None, "free() must drop every reference to the LLM"
    with pytest.raises(RuntimeError, match="freed"):
        encoder.encode(["a cat"])
    assert encoder.fingerprint()["dtype"] == "float32"  # still usable as a cache identity


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offload_and_free_release_gpu_memory() -> None:
    baseline = torch.cuda.memory_allocated()
    encoder = tiny_text_encoder(max_length=16).to("cuda")
    assert encoder.encode(["a cat"]).embeddings.device.type == "cuda"
    used = torch.cuda.memory_allocated()
    encoder.offload()
    assert torch.cuda.memory_allocated() < used
    encoder.to("cuda").free()
    assert torch.cuda.memory_allocated() <= baseline


# --- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, 3, b"a cat", ["a cat", 3], [None]])
def test_non_string_prompts(encoder: TextEncoder, bad) -> None:
    with pytest.raises(TypeError, match="str"):
        encoder.encode(bad)


@pytest.mark.parametrize("bad", [[], [""], ["a cat", "   "]])
def test_empty_prompts(encoder: TextEncoder, bad) -> None:
    with pytest.raises(ValueError, match="empty"):
        encoder.encode(bad)
    if bad:
        encoder.tokenize(bad, conditional=False)  # legal for the negative branch


def test_tokenizer_without_pad_or_bos(gemma_lm) -> None:
    with pytest.raises(ValueError, match="no pad token"):
        TextEncoder(gemma_lm.get_decoder(), tiny_tokenizer(pad_token=None))
    with pytest.raises(ValueError, match="no BOS token"):
        TextEncoder(gemma_lm.get_decoder(), tiny_tokenizer(bos_token=None, add_bos=False))


def test_warns_when_rotary_buffers_were_cast(tokenizer, gemma_lm) -> None:
    decoder = tiny_gemma2(vocab_size=len(tokenizer)).get_decoder().to(torch.bfloat16)
    with pytest.warns(UserWarning, match="rotary buffers"):
        TextEncoder(decoder, tokenizer)
    with warnings_as_errors():
        TextEncoder(tiny_gemma2(vocab_size=len(tokenizer), dtype=torch.bfloat16).get_decoder(), tokenizer)


def test_hidden_size_mismatch(tokenizer) -> None:
    model = tiny_gemma2(vocab_size=len(tokenizer), hidden_size=48).get_decoder()
    with pytest.raises(ValueError, match="hidden size is 48 but the caller expects D_txt = 2304"):
        TextEncoder(model, tokenizer, expected_dim=2304)
    assert TextEncoder(model, tokenizer, expected_dim=48).embed_dim == 48


def test_skip_layers_returns_the_stream_before_the_last_blocks(tokenizer) -> None:
    """skip_layers=k is what the same model cut after its first n - k blocks, with no final norm, returns."""
    import copy

    model = tiny_gemma2(vocab_size=len(tokenizer), num_layers=3).get_decoder()
    prompts = ["a cat on a mat", "a busy city street at dusk"]
    last = TextEncoder(model, tokenizer, max_length=40).encode(prompts)
    for k in (1, 2):
        cut = copy.deepcopy(model)
        cut.layers = cut.layers[: 3 - k]
        cut.config.num_hidden_layers = 3 - k
        cut.norm = torch.nn.Identity()
        expected = TextEncoder(cut, tokenizer, max_length=40).encode(prompts)
        got = TextEncoder(model, tokenizer, max_length=40, skip_layers=k).encode(prompts)
        assert torch.equal(got.mask, expected.mask) and torch.equal(got.mask, last.mask)
        torch.testing.assert_close(got.embeddings, expected.embeddings, rtol=0, atol=1e-6)
        assert not torch.allclose(got.embeddings, last.embeddings)
    assert torch.equal(TextEncoder(model, tokenizer, max_length=40, skip_layers=0).encode(prompts).embeddings,
                       last.embeddings)  # fmt: skip


def test_skip_layers_is_part_of_the_cache_identity(tokenizer) -> None:
    model = tiny_gemma2(vocab_size=len(tokenizer), num_layers=3).get_decoder()
    plain = TextEncoder(model, tokenizer).fingerprint()
    assert "skip_layers" not in plain  # 0 keeps the keys of caches written before the option existed
    assert TextEncoder(model, tokenizer, skip_layers=2).fingerprint() == {**plain, "skip_layers": "2"}


@pytest.mark.parametrize(("skip", "match"), [(-1, "an int >= 0"), (True, "an int >= 0"), (1.0, "an int >= 0"),
                                             (3, "leaves no block of this 3-layer model; use 0 to 2")])  # fmt: skip
def test_bad_skip_layers(tokenizer, skip, match) -> None:
    model = tiny_gemma2(vocab_size=len(tokenizer), num_layers=3).get_decoder()
    with pytest.raises(ValueError, match=match):
        TextEncoder(model, tokenizer, skip_layers=skip)


@pytest.mark.parametrize(("kwargs", "match"), [({"max_length": 1}, "max_length"), ({"on_truncate": "x"}, "on_trunc")])
def test_bad_settings(tokenizer, gemma_lm, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        TextEncoder(gemma_lm.get_decoder(), tokenizer, **kwargs)
