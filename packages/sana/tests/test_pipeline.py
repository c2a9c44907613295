"""SanaPipeline behaviour on tiny random parts: seeds, binning, guidance, outputs, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sana import SanaPipeline
from sana.images import resize_and_crop
from sana.protocols import Autoencoder, Denoiser, Sampler, SupportsPAG, SupportsTiledDecode, TextEncoder
from sana.testing import tiny_parts, tiny_pipeline

FAST = {"num_inference_steps": 3, "progress": False, "use_resolution_binning": False}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading only adds contention
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe() -> SanaPipeline:
    return tiny_pipeline()


def test_parts_satisfy_the_protocols():
    parts = tiny_parts()
    assert isinstance(parts["autoencoder"], Autoencoder)
    assert isinstance(parts["autoencoder"], SupportsTiledDecode)
    assert isinstance(parts["text_encoder"], TextEncoder)
    assert isinstance(parts["denoiser"], Denoiser)
    assert isinstance(parts["denoiser"], SupportsPAG)
    from flow_dpm import FlowDPMSolver, FlowEuler

    assert isinstance(FlowDPMSolver(), Sampler) and isinstance(FlowEuler(), Sampler)


def test_output_is_an_image_in_range(pipe):
    images = pipe("a red circle", height=32, width=48, **FAST)
    assert images.shape == (1, 3, 32, 48) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.01


def test_image_i_is_the_same_whatever_the_batch(pipe):
    prompts = ["a red circle", "a blue square", "two green triangles"]
    batch = pipe(prompts, height=32, width=32, seed=7, **FAST)
    for i, prompt in enumerate(prompts):
        alone = pipe(prompt, height=32, width=32, seed=[7 + i], **FAST)
        torch.testing.assert_close(alone[0], batch[i], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batch[0], batch[1])


def test_num_images_per_prompt_are_consecutive_and_distinct(pipe):
    images = pipe(["a red circle", "a blue square"], height=32, width=32, num_images_per_prompt=2, seed=3, **FAST)
    assert images.shape[0] == 4
    again = pipe("a blue square", height=32, width=32, seed=[5], **FAST)  # image 2 of the batch: seed 3 + 2
    torch.testing.assert_close(again[0], images[2], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(images[2], images[3])


def test_generators_and_latents_reproduce(pipe):
    a = pipe("a red circle", height=32, width=32, generator=torch.Generator().manual_seed(1), **FAST)
    b = pipe("a red circle", height=32, width=32, seed=1, **FAST)
    torch.testing.assert_close(a, b)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    c = pipe("a red circle", height=32, width=32, latents=noise, **FAST)
    torch.testing.assert_close(a, c)


def test_binning_generates_at_the_bucket_and_crops_back(pipe):
    seen = []
    images = pipe(
        "a red circle", height=100, width=70, num_inference_steps=2, progress=False,
        callback=lambda i, t, x, x0: seen.append(tuple(x.shape)),
    )  # fmt: skip
    assert images.shape == (1, 3, 100, 70)
    # 100 / 70 = 1.43 -> bucket 1.46 of ASPECT_RATIO_256_TEST: 304 x 208 pixels -> 76 x 52 latents at f = 4
    assert seen == [(1, 4, 76, 52)] * 2


def test_aspect_ratio_flag_in_the_prompt_picks_a_bucket(pipe):
    images = pipe("a red circle --ar 1:2", height=32, width=32, num_inference_steps=2, progress=False)
    assert images.shape == (1, 3, 176, 352)  # key 0.5 of ASPECT_RATIO_256_TEST
    mixed = pipe(["a --hw 32:64", "b"], height=32, width=32, num_inference_steps=2, progress=False)
    assert [tuple(x.shape) for x in mixed] == [(3, 32, 64), (3, 32, 32)]


def test_negative_prompt_and_guidance_change_the_image(pipe):
    base = pipe("a red circle", height=32, width=32, seed=0, **FAST)
    neg = pipe("a red circle", height=32, width=32, seed=0, negative_prompt="blurry", **FAST)
    no_cfg = pipe("a red circle", height=32, width=32, seed=0, guidance_scale=1.0, **FAST)
    assert (base - neg).abs().max() > 1e-3 and (base - no_cfg).abs().max() > 1e-3


def test_pag_runs_three_branches_in_the_configured_layer(pipe):
    calls = []
    model = pipe.denoiser

    def spy(x, t, text, mask, **kw):
        calls.append((x.shape[0], kw.get("pag")))
        return model(x, t, text, mask, **kw)

    spy.pag_layers = model.pag_layers  # type: ignore[attr-defined]
    parts = {**tiny_parts(), "denoiser": spy}
    spied = SanaPipeline(None, overrides={"model.pag_applied_layers": [1], "model.image_size": 256}, **parts)
    with_pag = spied("a red circle", height=32, width=32, pag_guidance_scale=2.0, seed=0, **FAST)
    assert [c[0] for c in calls] == [3] * 3 and calls[0][1].layers == (1,) and calls[0][1].rows == slice(2, 3)
    without = pipe("a red circle", height=32, width=32, pag_guidance_scale=1.0, seed=0, **FAST)
    assert (with_pag - without).abs().max() > 1e-3


def test_pag_needs_a_denoiser_that_supports_it():
    parts = tiny_parts()
    model = parts["denoiser"]
    parts["denoiser"] = lambda x, t, text, mask: model(x, t, text, mask)
    plain = SanaPipeline(None, **parts)
    with pytest.raises(TypeError, match="perturbed-attention"):
        plain("x", height=32, width=32, pag_guidance_scale=2.0, **FAST)
    assert plain("x", height=32, width=32, pag_guidance_scale=1.0, **FAST).shape == (1, 3, 32, 32)


def test_output_types(pipe):
    pil = pipe("a", height=32, width=48, output_type="pil", **FAST)
    assert isinstance(pil[0], Image.Image) and pil[0].size == (48, 32)
    arr = pipe("a", height=32, width=48, output_type="np", **FAST)
    assert arr.shape == (1, 32, 48, 3) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr[0], np.asarray(pil[0]))
    latents = pipe("a", height=32, width=48, output_type="latent", **FAST)
    assert latents.shape == (1, 4, 8, 12)


def test_euler_sampler_and_callback(pipe):
    steps = []
    images = pipe("a", height=32, width=32, sampler="flow_euler", callback=lambda i, *a: steps.append(i), **FAST)
    assert steps == [0, 1, 2] and images.shape == (1, 3, 32, 32)
    dpm = pipe("a", height=32, width=32, **FAST)
    assert (images - dpm).abs().max() > 1e-4


def test_tiled_decode_is_used_under_a_small_budget():
    small = tiny_pipeline(decode_memory_budget=2**20)
    full = tiny_pipeline()
    a = small("a", height=128, width=128, seed=0, **FAST)
    b = full("a", height=128, width=128, seed=0, **FAST)
    assert a.shape == b.shape and 0 < (a - b).abs().max() < 0.5  # tiles blend: close, not bit-equal


def test_free_text_encoder_keeps_seen_negatives():
    pipe = tiny_pipeline()
    pipe("a", height=32, width=32, free_text_encoder=True, **FAST)
    assert pipe.text_encoder is None
    with pytest.raises(RuntimeError, match="freed"):
        pipe("a", height=32, width=32, **FAST)


def test_bf16_cpu_mode_runs():
    pipe = tiny_pipeline(dtype=torch.bfloat16)
    images = pipe("a", height=32, width=32, num_inference_steps=2, progress=False, use_resolution_binning=False)
    assert images.dtype == torch.float32 and images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"height": 30, "use_resolution_binning": False}, "height=30 is not a multiple of the autoencoder"),
        ({"num_inference_steps": 0}, "num_inference_steps must be an int >= 1"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt must be an int >= 1"),
        ({"output_type": "jpeg"}, "output_type must be one of"),
        ({"sampler": "sa-solver"}, "unknown sampler 'sa-solver'"),
        ({"seed": [1, 2]}, "got 2 seeds for 1 images"),
        ({"prompt": []}, "prompt must be a non-empty"),
        ({"uncond_mask": "theirs"}, "uncond_mask must be"),
    ],
)
def test_bad_input_gives_one_clear_error(pipe, kwargs, match):
    args = {"prompt": "a", "height": 32, "width": 32, "num_inference_steps": 2, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(**args)


def test_missing_weights_and_mismatched_parts():
    parts = tiny_parts()
    with pytest.raises(RuntimeError, match="from_pretrained"):
        SanaPipeline(None, autoencoder=parts["autoencoder"], text_encoder=parts["text_encoder"])("a")
    from dcae.testing import random_model, tiny_config

    parts["autoencoder"] = random_model(tiny_config(latent_channels=8))
    with pytest.raises(ValueError, match="takes 4 latent channels but the autoencoder makes 8"):
        SanaPipeline(None, **parts)


def test_resize_and_crop_matches_the_official_rule():
    x = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 1, 4, 6)
    assert resize_and_crop(x, 4, 6) is x
    y = resize_and_crop(x, 4, 4)  # ratio max(1, 4/6) = 1 -> crop the middle 4 columns
    torch.testing.assert_close(y, x[:, :, :, 1:5])
    z = resize_and_crop(x, 8, 8)  # scale 2 -> 8 x 12, crop columns 2..10
    assert z.shape == (1, 1, 8, 8)


def test_bf16_mode_keeps_the_autoencoder_fp32_on_cpus_without_avx512(monkeypatch):
    from sana._compose import autoencoder_dtype

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert autoencoder_dtype(torch.bfloat16, "cpu") == torch.float32
    assert autoencoder_dtype(torch.float32, "cpu") == torch.float32
    assert autoencoder_dtype(torch.bfloat16, "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert autoencoder_dtype(torch.bfloat16, "cpu") == torch.bfloat16
