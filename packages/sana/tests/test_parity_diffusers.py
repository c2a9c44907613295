"""Whole-pipeline parity with diffusers' SanaPipeline / SanaPAGPipeline (0.42.1) on one tiny diffusers-format repo.

Both pipelines load the same folder (`tiny_diffusers_pipeline_dir`: tiny transformer, AutoencoderDC, Gemma-2 and
tokenizer, flow DPM-Solver scheduler) and generate from the same prompts, initial latents, instruction, steps and
guidance. Deliberate differences, each pinned separately:
- diffusers lowercases prompts; we keep case (native Sana). Parity prompts are lowercase; `test_case_is_kept`.
- diffusers reads the null/negative features through the negative prompt's own mask; native Sana (our default)
  through the prompt's mask. `uncond_mask="own"` reproduces diffusers; `test_native_uncond_mask_differs`.
- diffusers bins to the 40-key training tables by `sample_size`; native Sana (ours) to the 33-key `_TEST` tables.
  Parity runs without binning; binning is tested in test_pipeline.py.
- diffusers' DPMSolverMultistepScheduler hands the transformer `int64(σ·1000)` (truncated) while its update uses
  the exact σ; native Sana (ours) evaluates the model at the exact 1000·t. The DPM parity tests wrap our denoiser in
  `DiffusersTimesteps`, which truncates the same way; `test_exact_timesteps_differ_from_diffusers_dpm` pins the
  difference. (diffusers' FlowMatchEuler uses float timesteps: that test needs no wrapper.)
Tolerance: diffusers keeps its timesteps in float32 and we keep the solver grid in float64, and the linear-attention
eps differs (1e-15 vs Sana's 1e-8), so images agree to ~1e-5, not bit for bit; we assert 1e-4 on [0, 1] pixels.
"""

from __future__ import annotations

import pytest
import torch

from sana import SanaPipeline
from sana_text import COMPLEX_HUMAN_INSTRUCTION_LINES

PROMPTS = ["a red circle to the left of a blue square", "two green triangles on a white background"]
STEPS, SIZE, CFG = 6, 32, 4.5
ATOL = 1e-4  # on [0, 1] pixels; see the module docstring


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class DiffusersTimesteps:
    """Our denoiser evaluated at diffusers' multistep timesteps: t -> trunc(1000 t) / 1000 (see module docstring)."""

    def __init__(self, model):
        self.model, self.pag_layers, self.config = model, model.pag_layers, model.config

    def __call__(self, x, t, text, mask, **kw):
        return self.model(x, torch.trunc(t.double() * 1000 + 1e-6) / 1000, text, mask, **kw)


@pytest.fixture(scope="module")
def exact(tiny_diffusers_pipeline_dir):
    return SanaPipeline.from_pretrained(tiny_diffusers_pipeline_dir)


@pytest.fixture(scope="module")
def ours(tiny_diffusers_pipeline_dir):
    pipe = SanaPipeline.from_pretrained(tiny_diffusers_pipeline_dir)
    pipe.denoiser = DiffusersTimesteps(pipe.denoiser)
    return pipe


def _latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(len(PROMPTS), 4, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(seed))


def _diffusers(folder, latents, *, pag: float | None = None, **kw):
    from diffusers import SanaPAGPipeline
    from diffusers import SanaPipeline as DiffusersSana

    common = {
        "prompt": PROMPTS, "height": SIZE, "width": SIZE, "num_inference_steps": STEPS, "guidance_scale": CFG,
        "latents": latents.clone(), "output_type": "pt", "use_resolution_binning": False, "clean_caption": False,
        "complex_human_instruction": list(COMPLEX_HUMAN_INSTRUCTION_LINES),
    }  # fmt: skip
    if pag is None:
        pipe = DiffusersSana.from_pretrained(folder)
    else:
        pipe = SanaPAGPipeline.from_pretrained(folder, pag_applied_layers=["transformer_blocks.1"])
        common["pag_scale"] = pag
    pipe.set_progress_bar_config(disable=True)
    return pipe(**common, **kw).images  # (B, 3, H, W) in [0, 1]


def _ours(pipe, latents, **kw):
    args = {
        "height": SIZE, "width": SIZE, "num_inference_steps": STEPS, "guidance_scale": CFG,
        "pag_guidance_scale": 1.0, "latents": latents, "use_resolution_binning": False, "progress": False,
        "uncond_mask": "own", **kw,
    }  # fmt: skip
    return pipe(PROMPTS, **args) * 0.5 + 0.5  # [-1, 1] -> diffusers' [0, 1]


def test_cfg_images_match_diffusers(ours, tiny_diffusers_pipeline_dir):
    latents = _latents()
    reference = _diffusers(tiny_diffusers_pipeline_dir, latents)
    mine = _ours(ours, latents)
    assert reference.std() > 0.05  # a real image, not a constant
    torch.testing.assert_close(mine, reference, atol=ATOL, rtol=0)


def test_negative_prompt_matches_diffusers(ours, tiny_diffusers_pipeline_dir):
    latents = _latents(1)
    reference = _diffusers(tiny_diffusers_pipeline_dir, latents, negative_prompt="blurry, low quality")
    mine = _ours(ours, latents, negative_prompt="blurry, low quality")
    torch.testing.assert_close(mine, reference, atol=ATOL, rtol=0)


def test_pag_matches_diffusers_pag_pipeline(ours, tiny_diffusers_pipeline_dir):
    latents = _latents(2)
    reference = _diffusers(tiny_diffusers_pipeline_dir, latents, pag=2.0)
    mine = _ours(ours, latents, pag_guidance_scale=2.0)
    plain = _ours(ours, latents)
    assert (mine - plain).abs().max() > 1e-3  # PAG really acts
    torch.testing.assert_close(mine, reference, atol=ATOL, rtol=0)


def test_euler_matches_diffusers_flow_match_euler(tiny_diffusers_pipeline_dir):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers import SanaPipeline as DiffusersSana

    latents = _latents(3)
    pipe = DiffusersSana.from_pretrained(tiny_diffusers_pipeline_dir)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        prompt=PROMPTS, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=CFG,
        latents=latents.clone(), output_type="pt", use_resolution_binning=False, clean_caption=False,
        complex_human_instruction=list(COMPLEX_HUMAN_INSTRUCTION_LINES),
    ).images  # fmt: skip
    mine = _ours(SanaPipeline.from_pretrained(tiny_diffusers_pipeline_dir), latents, sampler="flow_euler")
    torch.testing.assert_close(mine, reference, atol=ATOL, rtol=0)


def test_exact_timesteps_differ_from_diffusers_dpm(ours, exact):
    latents = _latents()
    assert (_ours(ours, latents) - _ours(exact, latents)).abs().max() > 1e-3


def test_native_uncond_mask_differs(ours):
    latents = _latents()
    own, native = _ours(ours, latents), _ours(ours, latents, uncond_mask="conditional")
    assert (own - native).abs().max() > 1e-4  # the documented deliberate difference is real


def test_case_is_kept(ours):
    latents = _latents()[:1]
    upper = ours("A RED CIRCLE", height=SIZE, width=SIZE, num_inference_steps=2, latents=latents, progress=False,
                 use_resolution_binning=False)  # fmt: skip
    lower = ours("a red circle", height=SIZE, width=SIZE, num_inference_steps=2, latents=latents, progress=False,
                 use_resolution_binning=False)  # fmt: skip
    assert (upper - lower).abs().max() > 1e-4


def test_folder_settings_are_read(ours):
    assert ours.config.scheduler.flow_shift == 3.0
    assert ours.config.model.image_size == 256 and ours.autoencoder.spatial_compression == 4
