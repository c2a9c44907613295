"""`linear_dit.ops.linear`: the oneDNN 1×1-convolution route gives F.linear's result, and only where intended."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from linear_dit import LinearDiT, ops
from linear_dit.testing import assert_close_to, diffusers_twin, random_inputs, randomize_, run_diffusers, tiny_config


@pytest.fixture
def onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the oneDNN route on any CPU (it is chosen automatically only on AVX-512 ones)."""
    monkeypatch.setattr(ops, "_onednn_faster", lambda dtype: dtype == torch.float32)


def _ran_convolution(fn) -> bool:
    with profile() as prof:
        fn()
    return any(e.name == "aten::convolution" for e in prof.events())


@pytest.mark.parametrize("bias", [True, False])
def test_onednn_route_matches_f_linear(onednn: None, bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 300, 48, generator=g)
    w, b = torch.randn(80, 48, generator=g), (torch.randn(80, generator=g) if bias else None)
    with torch.no_grad():
        assert _ran_convolution(lambda: ops.linear(x, w, b))
        out = ops.linear(x, w, b)
    ref = F.linear(x, w, b)
    assert out.shape == ref.shape == (2, 300, 80) and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_f_linear_kept_for_autograd_small_inputs_and_half_precision(onednn: None) -> None:
    x, w = torch.randn(2, 300, 16, requires_grad=True), torch.randn(8, 16)
    assert not _ran_convolution(lambda: ops.linear(x, w))  # gradients: training keeps F.linear
    with torch.no_grad():
        few = x[:, :100].contiguous()  # 200 rows < ONEDNN_MIN_ROWS
        strided = x.transpose(0, 1).contiguous().transpose(0, 1)
        for args in [(few, w), (x.bfloat16(), w.bfloat16()), (strided, w)]:
            assert not _ran_convolution(lambda: ops.linear(*args))  # noqa: B023
        assert torch.equal(ops.linear(few, w), F.linear(few, w))


def test_linear_module_is_an_nn_linear() -> None:
    """Initialisation and peft's LoRA find the projections through isinstance(module, nn.Linear)."""
    assert isinstance(ops.Linear(4, 5), torch.nn.Linear)


def test_model_on_the_onednn_route_matches_diffusers(onednn: None) -> None:
    """256 tokens per sample: every projection and both Mix-FFN 1×1 convs take the convolution route."""
    model = randomize_(LinearDiT(tiny_config()), seed=0).eval()
    x, t, text, mask = random_inputs(model.config, batch=2, size=(16, 16), text_len=300)
    with torch.no_grad():
        assert _ran_convolution(lambda: model(x, t, text, mask))
        ours = model(x, t, text, mask)
    assert_close_to(ours, run_diffusers(diffusers_twin(model), x, t, text, mask))


@pytest.mark.parametrize("native", [True, False])
def test_mix_ffn_bf16_depthwise_routes_agree(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """bf16 depthwise conv: the native kernel (AVX512-BF16 CPUs) and the fp32 round trip give the same output."""
    from linear_dit import ffn

    torch.manual_seed(0)
    mlp = ffn.MixFFN(32, 80).eval()
    x = torch.randn(2, 12 * 10, 32)
    with torch.no_grad():
        ref = mlp(x, (12, 10))
        monkeypatch.setattr(ffn, "native_bf16", lambda: native)
        out = mlp.bfloat16()(x.bfloat16(), (12, 10)).float()
    assert ((out - ref).norm() / ref.norm()).item() < 1e-2
