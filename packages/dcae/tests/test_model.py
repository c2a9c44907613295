"""The model's public contract: shapes, errors, dtype policy, and the attention and norm fp32 islands."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from dcae import DCAE
from dcae.attention import LINEAR_ATTENTION_EPS, relu_linear_attention, relu_quadratic_attention
from dcae.norms import rms_norm_2d
from dcae.testing import random_model, tiny_config, tiny_in_mix_config


def test_protocol_attributes() -> None:
    model = DCAE(tiny_config())
    assert isinstance(model.spatial_compression, int) and model.spatial_compression == 4
    assert isinstance(model.latent_channels, int) and model.latent_channels == 4
    assert isinstance(model.scaling_factor, float) and model.scaling_factor == 0.5


def test_encode_is_raw_and_decode_shapes() -> None:
    model = random_model(tiny_config())
    images = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        z = model.encode(images)
        assert z.shape == (2, 4, 8, 12)
        assert torch.equal(z, model.encoder(images))  # no scaling inside dcae
        assert model.decode(z).shape == (2, 3, 32, 48)


def test_batch_invariance() -> None:
    model = random_model(tiny_in_mix_config())
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        batched = model.decode(model.encode(images))
        single = torch.cat([model.decode(model.encode(x[None])) for x in images])
    assert torch.allclose(batched, single, atol=1e-5)


def test_size_not_multiple_of_f_offers_pad_or_crop() -> None:
    with pytest.raises(ValueError, match="pad or crop"):
        DCAE(tiny_config()).encode(torch.zeros(1, 3, 30, 32))


def test_wrong_latent_channels() -> None:
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        DCAE(tiny_config()).decode(torch.zeros(1, 8, 4, 4))


def test_wrong_image_channels() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        DCAE(tiny_config()).encode(torch.zeros(1, 4, 32, 32))


def test_bf16_close_to_fp32() -> None:
    """bf16 compute (fp32 attention and norms) stays within 2% RMS / 6% max of fp32 on a random tiny model."""
    model = random_model(tiny_config())
    images = torch.rand(2, 3, 48, 48) * 2 - 1  # small: bf16 convolutions are slow on AVX2-only CPUs
    with torch.no_grad():
        z32 = model.encode(images)
        x32 = model.decode(z32)
        model_bf16 = model.to(torch.bfloat16)
        z16 = model_bf16.encode(images)
        x16 = model_bf16.decode(z32)
    assert z16.dtype == x16.dtype == torch.bfloat16
    for low, ref in [(z16, z32), (x16, x32)]:
        err = low.float() - ref
        assert err.abs().max() <= 0.06 * ref.abs().max()
        assert err.pow(2).mean().sqrt() <= 0.02 * ref.pow(2).mean().sqrt()


def test_fp16_decode_warns_and_fp32_does_not() -> None:
    model = random_model(tiny_config())
    z = torch.randn(1, 4, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.decode(z)
    with pytest.warns(UserWarning, match="float16 can overflow"):
        model.half().decode(z)


def test_bf16_on_cpu_without_avx512_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(tiny_config()).to(torch.bfloat16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    with pytest.warns(UserWarning, match="no AVX-512"):
        model.decode(torch.randn(1, 4, 2, 2))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.decode(torch.randn(1, 4, 2, 2))


def _padded_ones_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """The upstream formulation: pad v with a row of ones so one matmul also yields the normaliser (fp64)."""
    q, k, v = F.relu(q.double()), F.relu(k.double()), v.double()
    v = F.pad(v, (0, 0, 0, 1), value=1.0)  # (B, nh, hd+1, N)
    out = torch.matmul(torch.matmul(v, k.transpose(-1, -2)), q)  # (B, nh, hd+1, N)
    return out[:, :, :-1] / (out[:, :, -1:] + eps)


def test_linear_attention_matches_padded_ones_form_and_quadratic_form() -> None:
    q, k, v = torch.randn(3, 2, 4, 8, 50).unbind(0)  # each (B=2, nh=4, hd=8, N=50)
    out = relu_linear_attention(q, k, v)
    assert out.shape == (2, 4, 8, 50)
    ref = _padded_ones_reference(q, k, v, LINEAR_ATTENTION_EPS)
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(relu_quadratic_attention(q, k, v), out, rtol=1e-4, atol=1e-6)


def test_linear_attention_bf16_inputs_computed_in_fp32() -> None:
    q, k, v = (torch.randn(3, 1, 2, 8, 4096) * 4).unbind(0)
    exact = relu_linear_attention(q, k, v)
    out = relu_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    reference = relu_linear_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float())
    assert torch.allclose(out.float(), reference, rtol=1e-2, atol=1e-2)  # only the final cast rounds
    assert (out.float() - exact).abs().max() < 0.1 * exact.abs().max()


def test_rms_norm_2d_formula_and_fp16_range() -> None:
    x = torch.randn(2, 6, 3, 5)
    w, b = torch.rand(6) + 0.5, torch.randn(6)
    expected = x / x.pow(2).mean(1, keepdim=True).add(1e-5).sqrt() * w[:, None, None] + b[:, None, None]
    assert torch.allclose(rms_norm_2d(x, w, b), expected, atol=1e-6)
    big = torch.full((1, 4, 2, 2), 300.0, dtype=torch.float16)  # x² = 9e4 overflows fp16 (max 65504)
    out = rms_norm_2d(big, torch.ones(4, dtype=torch.float16), torch.zeros(4, dtype=torch.float16))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert torch.allclose(out.float(), torch.ones(1, 4, 2, 2), atol=1e-3)


@pytest.mark.parametrize("onednn", [True, False])
def test_pointwise_conv_routes_match_conv2d(monkeypatch: pytest.MonkeyPatch, onednn: bool) -> None:
    """Both kernels of PointwiseConv (oneDNN's 1×1 conv on AVX-512 CPUs, the matmul elsewhere) give nn.Conv2d's."""
    from dcae import norms

    monkeypatch.setattr(norms, "_onednn_fp32_faster", lambda: onednn)
    torch.manual_seed(0)
    conv = norms.PointwiseConv(12, 20)
    x = torch.randn(2, 12, 5, 7)
    ref = F.conv2d(x, conv.weight, conv.bias)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)  # with autograd: always the matmul


@pytest.mark.parametrize("cfg", [tiny_config(), tiny_in_mix_config()], ids=["sana", "in-mix"])
def test_inference_kernels_match_the_autograd_path(cfg) -> None:
    """Without autograd the model runs its inference kernels (channels-last ResBlock stages, in-place adds and
    activations, the single-conv upsample, the three-pass RMSNorm); with it, the plain ones. Same numbers, and
    the inference outputs come back in ordinary NCHW memory."""
    model = random_model(cfg)
    images = torch.rand(2, 3, 64, 96) * 2 - 1
    z_train = model.encode(images)  # autograd on: the parameters require grad
    assert z_train.requires_grad
    x_train = model.decode(z_train.detach())
    with torch.no_grad():
        z = model.encode(images)
        x = model.decode(z_train.detach())
    assert z.is_contiguous() and x.is_contiguous()
    torch.testing.assert_close(z, z_train.detach(), rtol=1e-5, atol=1e-5 * z_train.abs().max().item())
    torch.testing.assert_close(x, x_train.detach(), rtol=1e-5, atol=1e-5 * x_train.abs().max().item())


@pytest.mark.parametrize(("in_channels", "out_channels"), [(8, 8), (16, 8), (32, 8), (4, 3), (4, 8)])
def test_duplicate_phase_is_a_phase_of_channel_to_space_duplicate(in_channels: int, out_channels: int) -> None:
    from dcae.blocks import channel_to_space_duplicate, duplicate_phase

    x = torch.randn(2, in_channels, 3, 5)
    full = channel_to_space_duplicate(x, out_channels)  # (2, out, 6, 10)
    for p in range(4):
        a, b = divmod(p, 2)
        assert torch.equal(duplicate_phase(x, out_channels, p), full[:, :, a::2, b::2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_2d_inference_path_matches_fp32_formula(dtype: torch.dtype) -> None:
    """The no-grad norm (three passes, fp32 statistic) against the fp32 formula, in NCHW and channels-last."""
    x = (torch.randn(2, 24, 6, 7) * 5).to(dtype)
    w, b = torch.rand(24) + 0.5, torch.randn(24)
    exact = rms_norm_2d(x.float(), w, b)  # autograd path in fp32
    for layout in (torch.contiguous_format, torch.channels_last):
        with torch.no_grad():
            out = rms_norm_2d(x.contiguous(memory_format=layout), w.to(dtype), b.to(dtype))
        assert out.dtype == dtype and out.is_contiguous(memory_format=layout)
        tol = 1e-6 if dtype == torch.float32 else 2e-2  # bf16: the output's rounding and 1/rms's
        torch.testing.assert_close(out.float(), exact, rtol=tol, atol=tol * exact.abs().max().item())


@pytest.mark.parametrize(("in_channels", "out_channels"), [(8, 16), (8, 8), (16, 8), (16, 4), (6, 8)])
def test_in_place_space_to_channel_average(in_channels: int, out_channels: int) -> None:
    from dcae.blocks import add_space_to_channel_average_, space_to_channel_average

    x = torch.randn(2, in_channels, 6, 10)
    y = torch.randn(2, out_channels, 3, 5)
    expected = y + space_to_channel_average(x, out_channels)
    for layout in (torch.contiguous_format, torch.channels_last):
        out = add_space_to_channel_average_(y.clone(memory_format=layout), x.contiguous(memory_format=layout))
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
