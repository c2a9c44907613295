"""The `dcae` command end to end on PNG/JPEG files written here, and every bad-input path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from dcae import save_dcae
from dcae.cli import main
from dcae.images import load_image
from dcae.testing import random_model, tiny_config, tiny_in_mix_config


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    random_model(tiny_config()).save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save("a.png")
    Image.fromarray(rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)).save("b.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (30, 33, 3), dtype=np.uint8)).save("odd.png")
    Path("broken.png").write_text("this is not an image")
    return tmp_path


def test_roundtrip_report_and_side_by_side(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["roundtrip", "a.png", "b.jpg", "--model", "model", "--report", "--side-by-side", "sbs"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["image", "PSNR", "dB", "SSIM"]
    assert [line.split()[0] for line in lines[1:]] == ["a.png", "b.jpg", "mean"]
    for line in lines[1:]:
        p, s = float(line.split()[1]), float(line.split()[2])
        assert 0 < p < 60 and -1 <= s <= 1
    pair = load_image(workdir / "sbs" / "a_roundtrip.png")
    assert pair.shape == (1, 3, 32, 96)  # original | reconstruction
    assert torch.allclose(pair[..., :48], load_image(workdir / "a.png"), atol=1e-6)


def test_encode_then_decode(workdir: Path) -> None:
    assert main(["encode", "a.png", "b.jpg", "-o", "lat.safetensors", "--model", "model", "--tile", "16"]) == 0
    with safe_open("lat.safetensors", framework="pt") as f:
        assert sorted(f.keys()) == ["a", "b"]
        assert tuple(f.get_tensor("a").shape) == (1, 4, 8, 12)
        assert f.metadata()["latent_channels"] == "4"
    assert main(["decode", "lat.safetensors", "-o", "out", "--model", "model", "--dtype", "bf16"]) == 0
    assert Image.open("out/a.png").size == (48, 32)
    assert Image.open("out/b.png").size == (32, 40)


def test_pad_restores_size_and_crop_shrinks(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["encode", "odd.png", "-o", "pad.safetensors", "--model", "model", "--pad"]) == 0
    assert main(["decode", "pad.safetensors", "-o", "out", "--model", "model"]) == 0
    assert Image.open("out/odd.png").size == (33, 30)  # padded to 36x32 for the encoder, cropped back
    assert main(["roundtrip", "odd.png", "--model", "model", "--crop", "--report"]) == 0
    assert "odd.png" in capsys.readouterr().out


def test_size_not_divisible_offers_pad_or_crop(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["roundtrip", "odd.png", "--model", "model"]) == 2
    err = capsys.readouterr().err
    assert "not a multiple of the compression 4" in err and "--pad" in err and "--crop" in err


@pytest.mark.parametrize("image", ["broken.png", "missing.png"])
def test_unreadable_image(workdir: Path, capsys: pytest.CaptureFixture[str], image: str) -> None:
    assert main(["encode", image, "-o", "x.safetensors", "--model", "model"]) == 2
    assert f"cannot read {image} as an image" in capsys.readouterr().err


def test_wrong_latent_channels(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_dcae(random_model(tiny_in_mix_config()), workdir / "other")  # 8 latent channels, f = 8
    assert main(["encode", "a.png", "-o", "lat.safetensors", "--model", "model"]) == 0
    assert main(["decode", "lat.safetensors", "-o", "out", "--model", "other"]) == 2
    err = capsys.readouterr().err
    assert "takes 8 channels" in err and "(1, 4, 8, 12)" in err


def test_bad_model_latents_and_tile(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["roundtrip", "a.png", "--model", "nowhere"]) == 2
    assert "cannot load the autoencoder from nowhere" in capsys.readouterr().err
    assert main(["decode", "a.png", "-o", "out", "--model", "model"]) == 2
    assert "cannot read latents from a.png" in capsys.readouterr().err
    assert main(["roundtrip", "a.png", "--model", "model", "--tile", "big"]) == 2
    assert "--tile must be" in capsys.readouterr().err


def test_console_entry_point(workdir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "dcae", "roundtrip", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--side-by-side" in done.stdout
