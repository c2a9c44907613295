"""Behaviour of the model itself: masks, batching, shapes, checkpointing, numerics, bad inputs, compile."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch

from linear_dit import PAG, LinearDiT, LinearDiTConfig, PrecisionWarning
from linear_dit.testing import random_inputs, randomize_, tiny_config


def _model(config: LinearDiTConfig | None = None, seed: int = 0) -> LinearDiT:
    return randomize_(LinearDiT(config or tiny_config()), seed).eval()


@torch.no_grad()
def test_padding_tokens_do_not_change_the_output() -> None:
    model = _model()
    x, t, text, mask = random_inputs(model.config, batch=3, text_len=10)
    ref = model(x, t, text, mask)
    scrambled = torch.where(mask[..., None], text, 100 * torch.randn_like(text))  # new values under the padding
    torch.testing.assert_close(model(x, t, scrambled, mask), ref, rtol=0, atol=1e-5)
    longer = torch.cat([text, torch.randn(3, 7, text.shape[-1])], dim=1)  # seven more padding columns
    longer_mask = torch.cat([mask, torch.zeros(3, 7, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(x, t, longer, longer_mask), ref, rtol=0, atol=1e-5)
    assert (model(x, t, text, torch.ones_like(mask)) - ref).abs().max() > 1e-3  # the mask really matters


@torch.no_grad()
def test_mask_forms_and_broadcast() -> None:
    model = _model()
    x, t, text, mask = random_inputs(model.config, batch=2, text_len=6)
    ref = model(x, t, text, mask)
    torch.testing.assert_close(model(x, t, text, mask.long()), ref)
    torch.testing.assert_close(model(x, t, text, mask.float()), ref)
    shared = model(x, t, text, mask[:1])  # one mask for the whole (CFG) batch
    torch.testing.assert_close(shared, model(x, t, text, mask[:1].expand(2, -1)))
    torch.testing.assert_close(model(x, t, text, None), model(x, t, text, torch.ones_like(mask)))


@torch.no_grad()
def test_batch_invariance() -> None:
    model = _model()
    x, t, text, mask = random_inputs(model.config, batch=4, text_len=9)
    batched = model(x, t, text, mask)
    single = torch.cat([model(x[i : i + 1], t[i : i + 1], text[i : i + 1], mask[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("size", [(1, 1), (3, 7), (8, 2), (5, 5)])
def test_non_square_latents_and_scalar_time(size: tuple[int, int]) -> None:
    model = _model(tiny_config(pos_embed="sincos"))
    x, t, text, mask = random_inputs(model.config, batch=2, size=size)
    out = model(x, t[:1].reshape(()), text, mask)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, model(x, t[:1].expand(2), text, mask))


@torch.no_grad()
def test_patch_size_two_round_trips_the_grid() -> None:
    model = _model(tiny_config(patch_size=2))
    x, t, text, mask = random_inputs(model.config, batch=1, size=(4, 6))
    assert model(x, t, text, mask).shape == (1, 8, 4, 6)


@pytest.mark.parametrize("which", [True, {0}])
def test_gradient_checkpointing_gives_the_same_gradients(which) -> None:
    model = _model()
    model.train()
    x, t, text, mask = random_inputs(model.config, batch=2)

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(x, t, text, mask).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.grad_checkpointing = which
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": torch.randn(2, 4, 4, 6)}, r"C_z=8.*\(2, 4, 4, 6\)"),
        ({"x": torch.randn(8, 4, 6)}, r"\(8, 4, 6\)"),
        ({"text": torch.randn(2, 12, 32)}, r"D_txt\)=\(2, L, 48\).*\(2, 12, 32\)"),
        ({"text": torch.randn(3, 12, 48)}, r"\(3, 12, 48\)"),
        ({"text_mask": torch.ones(2, 11, dtype=torch.bool)}, r"\(2, 12\).*\(2, 11\)"),
        ({"text_mask": torch.ones(2, 1, 1, 12, dtype=torch.bool)}, r"\(2, 1, 1, 12\)"),
        ({"t": torch.rand(3)}, r"\(3,\)"),
    ],
    ids=["channels", "rank", "text-width", "text-batch", "mask-length", "mask-rank", "time"],
)
def test_bad_inputs_name_the_shapes(change: dict, message: str) -> None:
    model = _model()
    x, t, text, mask = random_inputs(model.config, batch=2)
    args = {"x": x, "t": t, "text": text, "text_mask": mask, **change}
    with pytest.raises(ValueError, match=message):
        model(**args)


def test_latent_size_must_be_a_multiple_of_the_patch() -> None:
    model = _model(tiny_config(patch_size=2))
    x, t, text, mask = random_inputs(model.config, batch=1, size=(4, 5))
    with pytest.raises(ValueError, match=r"4x5.*\(1, 8, 4, 5\).*patch 2"):
        model(x, t, text, mask)


def test_pag_layers_are_checked_at_call_time() -> None:
    model = _model(replace(tiny_config(), pag_layers=(14,)))
    x, t, text, mask = random_inputs(model.config, batch=2)
    with pytest.raises(ValueError, match=r"PAG layers \[14\]"):
        model(x, t, text, mask, pag=PAG(rows=slice(1, 2)))


@torch.no_grad()
def test_fp16_clamp_is_a_checkpoint_property_not_a_dtype_choice() -> None:
    """fp16-trained weights get the ±65504 self-attention clamp even in fp32 (user-needs §2.1)."""
    outputs = {}
    for trained in ("float16", "bfloat16", None):
        model = _model(tiny_config(trained_dtype=trained))
        model.blocks[0].attn.proj.weight.mul_(1e6)  # push the attention output far past fp16's range
        h = torch.randn(1, 6, model.config.hidden_size)
        outputs[trained] = model.blocks[0].attn(h).abs().max().item()
    assert outputs["float16"] == 65504.0
    assert outputs["bfloat16"] > 1e5 and outputs[None] > 1e5


def test_running_in_the_other_half_precision_warns() -> None:
    model = _model(tiny_config(trained_dtype="float16"))
    x, t, text, mask = random_inputs(model.config, batch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x, t, text, mask)  # fp32 is always fine
    with pytest.warns(PrecisionWarning, match="trained in float16 but runs in bfloat16"):
        model.to(torch.bfloat16)(x, t, text, mask)


@torch.no_grad()
def test_bf16_stays_close_to_fp32_and_attention_stays_fp32() -> None:
    model = _model()
    x, t, text, mask = random_inputs(model.config, batch=2, size=(6, 6))
    ref = model(x, t, text, mask)
    out = model.to(torch.bfloat16)(x, t, text, mask)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.02
    from linear_dit import relu_linear_attention

    q = torch.rand(1, 2, 5, 32, dtype=torch.bfloat16)
    assert relu_linear_attention(q, q, q).dtype == torch.float32


def test_a_block_compiles_without_graph_breaks() -> None:
    """fullgraph=True fails on any graph break; the eager backend keeps the check cheap (no codegen)."""
    model = _model(tiny_config(depth=1))
    mask = random_inputs(model.config, batch=2, size=(4, 4))[3]
    block = model.blocks[0]
    h = torch.randn(2, 16, 64)
    y = torch.randn(2, 12, 64)
    t0 = torch.randn(2, 6 * 64)
    bias = (~mask).float()[:, None, None, :] * -10000.0
    rows = torch.tensor([False, True])
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(h, y, t0, bias, (4, 4), rows), block(h, y, t0, bias, (4, 4), rows))
    torch._dynamo.reset()
