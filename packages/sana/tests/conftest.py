"""Shared fixtures for the `sana` tests: tiny models built in the test, nothing downloaded."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# --- hub/convert fixtures -----------------------------------------------------------------------------------------

TINY_LATENT_CHANNELS = 4  # C_z: the tiny AutoencoderDC's latent channels = the tiny transformer's in_channels
TINY_TEXT_WIDTH = 32  # D_txt: the tiny Gemma-2's hidden size = the transformer's caption_channels
TINY_FLOW_SHIFT = 3.0


def build_tiny_diffusers_pipeline(folder: Path, seed: int = 0) -> Path:
    """A diffusers-format Sana pipeline folder written by `diffusers.SanaPipeline.save_pretrained`.

    Parts: a 2-block `SanaTransformer2DModel` (width 64, in_channels 4, caption_channels 32, sample_size 8,
    patch 1, no positional embedding) and an f = 4 `AutoencoderDC` (latent_channels 4), both with random
    trained-like weights; a 1-layer random `Gemma2Model` (width 32) with `sana_text.testing.tiny_tokenizer`;
    `DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)`.
    The random weights come from the leaves' test helpers and enter diffusers through its own `from_pretrained`.
    """
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    from dcae import save_dcae
    from dcae.testing import random_model
    from dcae.testing import tiny_config as tiny_ae_config
    from linear_dit import LinearDiT, save_linear_dit
    from linear_dit.testing import randomize_
    from linear_dit.testing import tiny_config as tiny_dit_config
    from sana_text.testing import tiny_gemma2, tiny_tokenizer

    parts = folder.parent / f".{folder.name}-parts"
    dit_config = tiny_dit_config(in_channels=TINY_LATENT_CHANNELS, caption_channels=TINY_TEXT_WIDTH, pe_base_size=8)
    dit = randomize_(LinearDiT(dit_config), seed=seed)
    transformer = SanaTransformer2DModel.from_pretrained(save_linear_dit(dit, parts / "transformer", fmt="diffusers"))
    ae = random_model(tiny_ae_config(latent_channels=TINY_LATENT_CHANNELS), seed=seed)
    vae = AutoencoderDC.from_pretrained(save_dcae(ae, parts / "vae", fmt="diffusers"))
    tokenizer = tiny_tokenizer()
    text_encoder = tiny_gemma2(vocab_size=len(tokenizer), hidden_size=TINY_TEXT_WIDTH, seed=seed).get_decoder()
    scheduler = DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=TINY_FLOW_SHIFT
    )
    pipe = SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_diffusers_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny diffusers-format Sana pipeline folder (see `build_tiny_diffusers_pipeline`); treat it as read-only."""
    return build_tiny_diffusers_pipeline(tmp_path_factory.mktemp("tiny_sana_diffusers") / "pipeline")


@dataclass(frozen=True)
class FakeHubCache:
    """A Hugging Face hub cache folder (`HF_HUB_CACHE`) that tests fill in huggingface_hub's real layout:
    `models--org--repo/blobs/<sha256>` holds the bytes, `snapshots/<commit>/<path>` is a relative symlink to the
    blob, `refs/main` holds the commit hash."""

    root: Path
    commit: str = "0123456789abcdef0123456789abcdef01234567"  # 40 hex digits, as the Hub's

    def add(self, repo_id: str, files: dict[str, Path]) -> Path:
        """Put `files` (path in the repo -> local file) in repo `repo_id`; returns the snapshot folder."""
        repo = self.root / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / self.commit
        for name, source in files.items():
            data = source.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(self.commit)
        return snapshot

    def add_folder(self, repo_id: str, folder: Path) -> Path:
        """Every file under `folder`, at its relative path, in repo `repo_id`; returns the snapshot folder."""
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.add(repo_id, files)


@pytest.fixture
def network_attempts(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every socket connection (and DNS look-up) is refused and recorded here."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def offline_hf_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, network_attempts: list[object]
) -> Iterator[FakeHubCache]:
    """An empty HF cache named by HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE=1, and no network (checked at teardown).

    huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE into `huggingface_hub.constants` at import: offline
    mode is set there too (as in a process started with HF_HUB_OFFLINE=1), while its cache constant is left
    pointing elsewhere, so finding the files proves the code under test takes the cache from the environment.
    """
    from huggingface_hub import constants

    cache = tmp_path / "hf_home" / "hub"
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "not_the_cache"))
    yield FakeHubCache(cache)
    assert network_attempts == [], f"the offline hub path touched the network: {network_attempts}"


# --- pipeline/CLI fixtures ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyLocalModel:
    """A tiny model laid out as the official configs expect it: an official-format transformer `.pth`, a DC-AE
    folder and a text-encoder folder, plus the dotted overrides that point an official YAML at them."""

    pth: Path
    vae: Path
    text_encoder: Path

    @property
    def overrides(self) -> list[str]:
        return [
            f"--vae.vae_pretrained={self.vae}",
            f"--vae.vae_latent_dim={TINY_LATENT_CHANNELS}",
            f"--text_encoder.text_encoder_name={self.text_encoder}",
            f"--text_encoder.caption_channels={TINY_TEXT_WIDTH}",
            "--model.pag_applied_layers=[1]",
            "--model.cross_attention_heads=2",
            "--model.image_size=256",  # bin to the 256 tables: the f = 4 autoencoder makes 4x the latents of f = 32
        ]


@pytest.fixture(scope="session")
def tiny_local_model(tmp_path_factory: pytest.TempPathFactory) -> TinyLocalModel:
    from dcae import save_dcae
    from dcae.testing import random_model
    from dcae.testing import tiny_config as tiny_ae_config
    from linear_dit import LinearDiT, save_linear_dit
    from linear_dit.testing import randomize_
    from linear_dit.testing import tiny_config as tiny_dit_config
    from sana_text.testing import save_tiny_llm

    root = tmp_path_factory.mktemp("tiny_local_model")
    dit = randomize_(LinearDiT(tiny_dit_config(in_channels=TINY_LATENT_CHANNELS, caption_channels=TINY_TEXT_WIDTH)))
    pth = save_linear_dit(dit, root / "checkpoints" / "tiny.pth", fmt="sana")
    vae = save_dcae(random_model(tiny_ae_config(latent_channels=TINY_LATENT_CHANNELS)), root / "vae")
    return TinyLocalModel(pth, vae, save_tiny_llm(root / "text_encoder"))
