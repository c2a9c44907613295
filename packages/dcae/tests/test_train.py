"""Autoencoder training: loss falls, exact resume, decoder-only adversarial phase, atomic checkpoints, the
`dcae train` command, and every bad-input path. Tiny graphs on 16×16 PIL-drawn shapes, one thread."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from dcae import DCAE, load_dcae
from dcae.cli import main
from dcae.images import ssim
from dcae.losses import LossWeights, reconstruction_losses, sobel, ssim_map_mean
from dcae.testing import tiny_config
from dcae.train import SHAPES_F32, latest_checkpoint, train_autoencoder

SIZE = 16  # pixels; tiny_config has f = 4
COLOURS = [(220, 40, 40), (40, 90, 220), (40, 170, 60), (230, 200, 40), (150, 60, 200)]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and the CPU is shared


def _shape_image(i: int, size: int = SIZE) -> Image.Image:
    """A flat background with one coloured rectangle or ellipse: hard edges, like the shapes world."""
    img = Image.new("RGB", (size, size), (235, 235, 235) if i % 3 else (30, 30, 30))
    side = size // 2 + i % 3
    x0, y0 = (3 * i) % (size - side), (5 * i) % (size - side)
    box = [x0, y0, x0 + side - 1, y0 + side - 1]
    draw = ImageDraw.Draw(img)
    (draw.ellipse if i % 2 else draw.rectangle)(box, fill=COLOURS[i % len(COLOURS)])
    return img


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1  # (3, H, W)


def _images(n: int, size: int = SIZE) -> list[torch.Tensor]:
    return [_tensor(_shape_image(i, size)) for i in range(n)]


def _model(seed: int = 0) -> DCAE:
    torch.manual_seed(seed)
    return DCAE(tiny_config())


def _log(out: Path) -> list[dict[str, str]]:
    header, *lines = (out / "train_log.csv").read_text().splitlines()
    return [dict(zip(header.split(","), line.split(","))) for line in lines]


def _losses(rows: list[dict[str, str]]) -> list[tuple[str, ...]]:
    return [tuple(v for k, v in row.items() if k != "seconds") for row in rows]


def test_loss_falls_and_outputs_are_written(tmp_path: Path) -> None:
    out = tmp_path / "run"
    images = _images(3)
    report = train_autoencoder(_model(), images, out, steps=20, batch_size=3, lr=5e-3, log_every=1, holdout=0)
    losses = [float(r["loss"]) for r in _log(out)]
    assert len(losses) == 20
    assert losses[-1] < 0.6 * losses[0], losses  # measured: 1.02 -> 0.51 in 20 steps
    assert report.completed and report.eval_split == "train" and report.eval_images == 3  # nothing to hold out
    assert math.isfinite(report.eval_psnr) and report.eval_psnr > 8 and 0 < report.eval_ssim <= 1
    again = load_dcae(report.model_dir)
    assert again.scaling_factor == pytest.approx(report.scaling_factor)
    with torch.no_grad():
        rms = again.encode(torch.stack(images)).pow(2).mean().sqrt().item()
    assert rms * again.scaling_factor == pytest.approx(1.0, rel=1e-4)  # fitted on exactly these images
    saved = json.loads((out / "report.json").read_text())
    assert saved["eval_psnr"] == pytest.approx(report.eval_psnr) and saved["step"] == 20


def test_interrupted_run_matches_uninterrupted(tmp_path: Path) -> None:
    kwargs = dict(steps=8, batch_size=2, lr=2e-3, log_every=1, adversarial_from_step=5, holdout=1)
    full = train_autoencoder(_model(), _images(5), tmp_path / "full", **kwargs)
    part = train_autoencoder(_model(), _images(5), tmp_path / "part", max_steps=3, **kwargs)
    assert not part.completed and part.step == 3 and part.model_dir is None and part.eval_psnr is None
    resumed_model = _model(seed=123)  # different initial weights: everything must come from the checkpoint
    resumed = train_autoencoder(resumed_model, _images(5), tmp_path / "part", resume=True, **kwargs)
    assert resumed.completed and resumed.step == 8 and resumed.eval_split == "held-out" and resumed.eval_images == 1
    assert _losses(_log(tmp_path / "part")) == _losses(_log(tmp_path / "full"))
    assert resumed.eval_psnr == full.eval_psnr
    a, b = load_file(full.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adversarial_phase_trains_only_the_decoder(tmp_path: Path) -> None:
    model = _model()
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    out = tmp_path / "adv"
    train_autoencoder(model, _images(4), out, steps=3, batch_size=2, adversarial_from_step=0, log_every=1, holdout=1)
    assert all(torch.equal(encoder_before[k], v) for k, v in model.encoder.state_dict().items())  # frozen
    assert any(not torch.equal(decoder_before[k], v) for k, v in model.decoder.state_dict().items())
    rows = _log(out)
    assert all(math.isfinite(float(r["adv_g"])) and math.isfinite(float(r["adv_d"])) for r in rows)
    disc = load_file(latest_checkpoint(out) / "discriminator.safetensors")
    assert disc and all(torch.isfinite(t).all() for t in disc.values())
    plain = tmp_path / "plain"
    train_autoencoder(_model(), _images(4), plain, steps=2, batch_size=2, log_every=1, holdout=1)
    assert all(r["adv_g"] == "nan" for r in _log(plain))
    assert not (latest_checkpoint(plain) / "discriminator.safetensors").exists()


def test_failed_save_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    kwargs = dict(steps=6, batch_size=2, save_every=2, keep_last=2, log_every=1, holdout=1)
    train_autoencoder(_model(), _images(4), out, max_steps=4, **kwargs)
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step_0000002", "step_0000004"]
    real_save = torch.save

    def crash(obj: object, path: Path) -> None:
        Path(path).write_bytes(b"half-writ")  # a partial file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        train_autoencoder(_model(), _images(4), out, resume=True, **kwargs)
    assert latest_checkpoint(out).name == "step_0000004"
    monkeypatch.setattr(torch, "save", real_save)
    report = train_autoencoder(_model(), _images(4), out, resume=True, **kwargs)
    assert report.completed and [float(r["step"]) for r in _log(out)] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000004", "step_0000006"]


def test_bf16_autocast_step(tmp_path: Path) -> None:
    report = train_autoencoder(_model(), _images(2), tmp_path / "bf16", steps=1, batch_size=2, dtype="bf16")
    assert report.completed and math.isfinite(report.losses["loss"])


def test_losses_match_metrics() -> None:
    a, b = torch.stack(_images(2)), torch.stack(_images(3)[1:])
    assert torch.allclose(ssim_map_mean(a, b), ssim(a, b), atol=1e-5)
    assert sobel(torch.full((1, 3, 8, 8), 0.3)).abs().max() == 0
    small = ssim_map_mean(a[..., :6, :8], b[..., :6, :8])  # below the 11-pixel window: a 5-pixel one
    assert (
        small.shape == (2,)
        and torch.all(small < 1)
        and torch.allclose(ssim_map_mean(a[..., :6, :8], a[..., :6, :8]), torch.ones(2))
    )
    with pytest.raises(ValueError, match="at least one"):
        LossWeights(l1=0, l2=0, ssim=0, edge=0)
    with pytest.raises(ValueError, match=r"losses\.ssim must be a finite number >= 0"):
        LossWeights(ssim=-1)
    terms = reconstruction_losses(a, a, LossWeights())
    assert all(abs(terms[k].item()) < 1e-6 for k in ("l1", "l2", "ssim", "edge", "loss"))


def test_shapes_f32_size() -> None:
    model = DCAE(SHAPES_F32)
    params = sum(p.numel() for p in model.parameters())
    assert params == 1_018_659 and params * 4 <= 5e6  # 4.1 MB in fp32
    assert SHAPES_F32.spatial_compression == 32 and SHAPES_F32.latent_channels == 32
    with torch.no_grad():
        assert model.encode(torch.zeros(1, 3, 64, 64)).shape == (1, 32, 2, 2)


def _folder(root: Path, n: int = 4, size: int = SIZE) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _shape_image(i, size).save(root / f"{i:02d}.png")
    return root


def test_cli_train_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _folder(tmp_path / "imgs")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config().to_dict()))
    out = tmp_path / "out"
    common = ["train", str(images), "-o", str(out), "--config", str(config), "--batch-size", "2", "--log-every", "1"]
    common += ["--threads", "1", "--latent-noise", "0.25", "--crop", "8", "--crop-candidates", "3"]
    assert main([*common, "--steps", "3", "--max-steps", "2"]) == 0
    assert "continue with --resume" in capsys.readouterr().out
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the tqdm bar is on by default
    assert main([*common, "--steps", "3", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "3/3" in captured.err and "loss=" in captured.err  # resumed at step 2: the bar starts there
    printed = captured.out
    assert "held-out PSNR" in printed and str(out / "model") in printed
    assert load_dcae(out / "model").config.widths == tiny_config().widths
    assert [r["step"] for r in _log(out)] == ["1", "2", "3"]
    assert json.loads((latest_checkpoint(out) / "state.json").read_text())["settings"]["latent_noise"] == 0.25
    assert main([*common[:-1], "2", "--steps", "4", "--resume"]) == 2  # another --crop-candidates
    assert "['crop_candidates']" in capsys.readouterr().err
    assert main([*common, "--steps", "3"]) == 2  # existing checkpoints without --resume
    assert "pass resume=True" in capsys.readouterr().err


def test_cli_train_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["train", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "o"), "--steps", "1", "--config", "nope"]) == 2
    assert "shapes-f32" in capsys.readouterr().err
    small = _folder(tmp_path / "small", n=2, size=16)
    assert main(["train", str(small), "-o", str(tmp_path / "o"), "--steps", "1", "--crop", "64"]) == 2
    assert "smaller than crop=64" in capsys.readouterr().err  # shapes-f32: f = 32
    assert main(["train", str(small), "-o", str(tmp_path / "o"), "--steps", "1", "--latent-noise", "2"]) == 2
    assert "latent_noise must be a number in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("images", "kwargs", "error", "match"),
    [
        ([], {}, ValueError, "no images"),
        ([torch.zeros(3, 14, 16)], {}, ValueError, r"images\[0\]: size 16x14 is not a multiple of the compression f=4"),
        ([torch.zeros(3, 16, 16)], {"crop": 32}, ValueError, "smaller than crop=32"),
        ([torch.zeros(3, 16, 16)], {"crop": 6}, ValueError, "crop must be a positive multiple"),
        ([torch.zeros(16, 16)], {}, ValueError, r"shape \(3, H, W\)"),
        ([np.zeros((3, 16, 16))], {}, TypeError, "float tensor"),
        ([torch.zeros(3, 16, 16), torch.zeros(3, 8, 8)], {}, ValueError, "different sizes"),
        ([torch.zeros(3, 16, 16)] * 2, {"holdout": 2}, ValueError, "holdout"),
        ([torch.zeros(3, 16, 16)], {"dtype": "fp16"}, ValueError, "dtype must be one of"),
        ([torch.zeros(3, 16, 16)], {"steps": 0}, ValueError, "steps must be"),
        ([torch.zeros(3, 16, 16)], {"losses": {"l1": 1.0}}, TypeError, "losses must be a dcae.train.LossWeights"),
        ([torch.zeros(3, 16, 16)], {"crop": 8, "crop_candidates": 0}, ValueError, "crop_candidates must be an integer"),
        ([torch.zeros(3, 16, 16)], {"crop_candidates": 4}, ValueError, r"crop_candidates > 1 needs crop="),
        (42, {}, TypeError, "images must be a folder"),
        ([torch.zeros(3, 16, 16)], {"latent_noise": -0.1}, ValueError, r"latent_noise must be a number in \[0, 1\]"),
        ([torch.zeros(3, 16, 16)], {"latent_noise": 1.5}, ValueError, "latent_noise must be a number"),
        ([torch.zeros(3, 16, 16)], {"latent_noise": float("nan")}, ValueError, "latent_noise must be a number"),
        ([torch.zeros(3, 16, 16)], {"latent_noise": True}, ValueError, "latent_noise must be a number"),
    ],
)
def test_bad_inputs(tmp_path: Path, images: object, kwargs: dict, error: type, match: str) -> None:
    kwargs = {"steps": 1, **kwargs}
    with pytest.raises(error, match=match):
        train_autoencoder(_model(), images, tmp_path / "run", **kwargs)


def test_bad_folders_and_resume_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no folder"):
        train_autoencoder(_model(), tmp_path / "missing", tmp_path / "run", steps=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        train_autoencoder(_model(), tmp_path / "empty", tmp_path / "run", steps=1)
    folder = _folder(tmp_path / "imgs", n=2, size=18)
    with pytest.raises(ValueError, match="18x18 is not a multiple"):
        train_autoencoder(_model(), folder, tmp_path / "run", steps=1)
    train_autoencoder(_model(), folder, tmp_path / "run", steps=1, crop=16)
    with pytest.raises(ValueError, match=r"settings changed since it was written: \['lr'\]"):
        train_autoencoder(_model(), folder, tmp_path / "run", steps=2, crop=16, lr=0.5, resume=True)
    with pytest.raises(ValueError, match="float32"):
        train_autoencoder(_model().to(torch.bfloat16), folder, tmp_path / "run2", steps=1, crop=16)


def test_the_latent_penalty_keeps_latents_small(tmp_path: Path) -> None:
    """`LossWeights.latent` adds mean(z²) of the raw latents; it is logged, and a heavy weight shrinks the latents."""
    images = _images(8)
    rms = {}
    for weight in (0.0, 10.0):
        model = _model()
        train_autoencoder(model, images, tmp_path / f"w{weight}", steps=30, batch_size=4, lr=5e-3, log_every=1,
                          losses=LossWeights(latent=weight), holdout=2)  # fmt: skip
        rows = _log(tmp_path / f"w{weight}")
        assert all(math.isfinite(float(r["latent"])) and float(r["latent"]) >= 0 for r in rows)
        with torch.no_grad():
            rms[weight] = model.encode(torch.stack(images)).pow(2).mean().sqrt().item()
    assert rms[10.0] < 0.5 * rms[0.0], rms
    with pytest.raises(ValueError, match=r"losses\.latent must be a finite number >= 0"):
        LossWeights(latent=-1.0)


def test_crop_candidates_pick_the_crop_with_the_most_edges(tmp_path: Path) -> None:
    """Of `crop_candidates` random crops the batch holds the one with the most edge energy; the draw is a function
    of (seed, step), so it is reproducible and recorded in the run's settings."""
    from dcae.train import ImageSource

    img = torch.full((3, 64, 64), 0.9)
    img[:, 40:52, 8:20] = torch.tensor([-0.8, 0.6, -0.5])[:, None, None]  # one small square on a flat background

    def energy(c: torch.Tensor) -> float:
        return ((c[:, 1:] - c[:, :-1]).abs().sum() + (c[:, :, 1:] - c[:, :, :-1]).abs().sum()).item()

    plain = ImageSource.create([img, img], crop=16, f=4, holdout=0, seed=0)
    chosen = ImageSource.create([img, img], crop=16, f=4, holdout=0, seed=0, candidates=8)
    plain_e = [energy(c) for step in range(40) for c in plain.batch(step, 2)]
    chosen_e = [energy(c) for step in range(40) for c in chosen.batch(step, 2)]
    assert sum(e > 0 for e in chosen_e) > 2 * sum(e > 0 for e in plain_e), (plain_e, chosen_e)
    assert torch.equal(chosen.batch(7, 2), ImageSource.create([img, img], crop=16, f=4, holdout=0, seed=0,
                                                              candidates=8).batch(7, 2))  # fmt: skip
    train_autoencoder(_model(), [img, img], tmp_path / "run", steps=1, crop=16, crop_candidates=8, holdout=1)
    with pytest.raises(ValueError, match=r"settings changed since it was written: \['crop_candidates'\]"):
        train_autoencoder(_model(), [img, img], tmp_path / "run", steps=2, crop=16, crop_candidates=2, holdout=1,
                          resume=True)  # fmt: skip


def test_latent_noise_perturbs_what_the_decoder_sees_reproducibly(tmp_path: Path) -> None:
    """`latent_noise`: noise of std u * strength * RMS per sample (u ~ U(0, 1)), drawn from (seed, step); it changes
    training, a resumed run still matches an uninterrupted one, and runs recorded before the option resume."""
    from dcae.train import _noisy

    z = torch.randn(64, 4, 3, 3) * torch.linspace(0.5, 4.0, 64).view(64, 1, 1, 1)
    assert _noisy(z, 0.0, 0, 0) is z
    a, b = _noisy(z, 0.5, 0, 7), _noisy(z, 0.5, 0, 7)
    assert torch.equal(a, b) and not torch.equal(a, _noisy(z, 0.5, 0, 8))  # a function of (seed, step)
    rms = z.pow(2).mean(dim=(1, 2, 3)).sqrt()
    relative = (a - z).pow(2).mean(dim=(1, 2, 3)).sqrt() / rms  # per sample: u * 0.5, u ~ U(0, 1)
    assert float(relative.max()) < 0.5 * 1.3 and float(relative.min()) < 0.1 and 0.15 < float(relative.mean()) < 0.35

    kwargs = dict(steps=6, batch_size=2, lr=2e-3, log_every=1, adversarial_from_step=2, holdout=1, latent_noise=0.5)
    full = train_autoencoder(_model(), _images(5), tmp_path / "full", **kwargs)
    train_autoencoder(_model(), _images(5), tmp_path / "part", max_steps=3, **kwargs)
    resumed = train_autoencoder(_model(seed=9), _images(5), tmp_path / "part", resume=True, **kwargs)
    assert _losses(_log(tmp_path / "part")) == _losses(_log(tmp_path / "full")) and resumed.eval_psnr == full.eval_psnr
    clean = train_autoencoder(_model(), _images(5), tmp_path / "clean", **{**kwargs, "latent_noise": 0.0})
    assert _losses(_log(tmp_path / "clean")) != _losses(_log(tmp_path / "full"))
    saved = json.loads((latest_checkpoint(tmp_path / "full") / "state.json").read_text())["settings"]
    assert saved["latent_noise"] == 0.5 and clean.completed

    # a checkpoint written before the option existed has no latent_noise: it was 0, so it resumes without noise only
    old = tmp_path / "old"
    train_autoencoder(_model(), _images(5), old, max_steps=2, **{**kwargs, "latent_noise": 0.0})
    state_path = latest_checkpoint(old) / "state.json"
    state = json.loads(state_path.read_text())
    del state["settings"]["latent_noise"]
    state_path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"settings changed since it was written: \['latent_noise'\]"):
        train_autoencoder(_model(), _images(5), old, resume=True, **kwargs)
    assert train_autoencoder(_model(), _images(5), old, resume=True, **{**kwargs, "latent_noise": 0.0}).completed
