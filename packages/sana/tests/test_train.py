"""`sana train`: the seed's command, exact resume after a real SIGKILL, 2-process DDP, overfitting, safety.

Every run uses the official 512 YAML with overrides that point its model fields at tiny local checkpoints built
here (text encoder, DC-AE, transformer) and its data at a shapes-world folder, and trains at 64 px.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sana.config import load_config
from sana.train.loop import NonFiniteLossError, read_metrics, train
from sana.train.objective import ObjectiveSettings, draw, drop_captions

SEED_CONFIG = "configs/sana_config/512ms/Sana_600M_img512.yaml"
SEED_OVERRIDES = ['--data.data_dir="[{data}]"', "--data.type=SanaImgDataset", "--model.multi_scale=false"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from dcae import save_dcae
    from dcae.testing import random_model
    from dcae.testing import tiny_config as tiny_ae_config
    from linear_dit import LinearDiT, save_linear_dit
    from linear_dit.testing import tiny_config
    from sana_data.testing import make_toy_dataset
    from sana_text.testing import save_tiny_llm

    root = tmp_path_factory.mktemp("train_assets")
    torch.manual_seed(0)
    return {
        "data": make_toy_dataset(root / "data", n=8),
        "few": make_toy_dataset(root / "few", n=2, seed=1),
        "vae": save_dcae(random_model(tiny_ae_config(latent_channels=4)), root / "vae"),
        "te": save_tiny_llm(root / "te"),
        "dit": save_linear_dit(LinearDiT(tiny_config(in_channels=4, caption_channels=32)), root / "dit"),
    }


def tiny_args(assets, work_dir: Path, **extra) -> list[str]:
    """The seed's overrides plus those that point the model fields at the tiny checkpoints."""
    args = [a.format(**assets) for a in SEED_OVERRIDES] + [
        "--train.train_batch_size=2",
        f"--vae.vae_pretrained={assets['vae']}",
        "--vae.vae_latent_dim=4",
        f"--text_encoder.text_encoder_name={assets['te']}",
        "--text_encoder.caption_channels=32",
        f"--model.load_from={assets['dit']}",
        "--model.pag_applied_layers=[1]",
        "--model.image_size=256",
        "--data.image_size=64",
        "--train.num_workers=0",
        "--train.visualize=false",
        "--train.lr_schedule_args.num_warmup_steps=0",
        "--train.optimizer.lr=1e-3",
        f"--work_dir={work_dir}",
    ]
    return args + [f"--{k.replace('__', '.')}={v}" for k, v in extra.items()]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _losses(work_dir: Path) -> list[str]:
    return [row["loss"] for row in read_metrics(work_dir)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_seed_command_fails_at_once_on_unreachable_models(assets, tmp_path, offline_hf_cache, capsys):
    from sana.cli import main

    code = main(["train", SEED_CONFIG, *[a.format(**assets) for a in SEED_OVERRIDES], "--train.train_batch_size=32"])
    err = capsys.readouterr().err
    assert code == 2 and "mit-han-lab/dc-ae-f32c32-sana-1.0" in err and "--vae.vae_pretrained=" in err


def test_killed_run_resumes_exactly(assets, tmp_path):
    """A run killed with SIGKILL and resumed from `latest` reproduces the uninterrupted run's losses exactly."""
    steps = {"train__max_steps": 12, "train__save_model_steps": 4}
    command = [sys.executable, "-m", "sana", "train", SEED_CONFIG]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    subprocess.run([*command, *tiny_args(assets, whole, **steps)], env=_env(), check=True, capture_output=True)
    victim = subprocess.Popen([*command, *tiny_args(assets, parts, **steps)], env=_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (parts / "checkpoints" / "step_0000004").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = len(_losses(parts))
    assert 4 <= killed_at < 12
    subprocess.run(
        [*command, *tiny_args(assets, parts, resume_from="latest", **steps)],
        env=_env(),
        check=True,
        capture_output=True,
    )
    assert _losses(parts) == _losses(whole) and len(_losses(whole)) == 12
    from linear_dit import load_linear_dit

    w1 = load_linear_dit(whole / "checkpoints" / "step_0000012" / "transformer").state_dict()
    w2 = load_linear_dit(parts / "checkpoints" / "step_0000012" / "transformer").state_dict()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert sorted(p.name for p in (parts / "checkpoints").iterdir()) == [
        "latest",
        "step_0000004",
        "step_0000008",
        "step_0000012",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(assets, tmp_path):
    from linear_dit import load_linear_dit

    steps = {"train__max_steps": 3, "train__save_model_steps": 3}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        [sys.executable, "-m", "sana", "train", SEED_CONFIG, *tiny_args(assets, one, **steps)],
        env=_env(),
        check=True,
        capture_output=True,
    )
    ddp = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "sana",
        "train",
        SEED_CONFIG,
        *tiny_args(assets, two, **steps),
        "--train.train_batch_size=1",
    ]
    result = subprocess.run(ddp, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ranks diverged" not in result.stderr  # checked at every checkpoint
    # Same samples, noise and times; only the float summation order differs (all-reduce of two half-batch
    # gradients vs one batch mean), which CAME's rsqrt statistics amplify a little over the steps.
    torch.testing.assert_close(
        torch.tensor([float(x) for x in _losses(two)]),
        torch.tensor([float(x) for x in _losses(one)]),
        rtol=1e-4,
        atol=0,
    )
    # Weights: the two runs differ by under 1% of how far training moved them (parameters whose gradient is
    # ~0 take noise-dominated normalised steps in both runs, so an element-wise bound would be meaningless).
    w0 = load_linear_dit(assets["dit"]).state_dict()
    w1 = load_linear_dit(one / "checkpoints" / "step_0000003" / "transformer").state_dict()
    w2 = load_linear_dit(two / "checkpoints" / "step_0000003" / "transformer").state_dict()
    keys = [k for k in w1 if k != "y_embedder.y_embedding"]
    gap = sum(float((w1[k] - w2[k]).pow(2).sum()) for k in keys) ** 0.5
    moved = sum(float((w1[k] - w0[k]).pow(2).sum()) for k in keys) ** 0.5
    assert moved > 0 and gap < 0.01 * moved, (gap, moved)


def test_overfits_a_few_images(assets, tmp_path):
    args = tiny_args(
        assets,
        tmp_path,
        train__max_steps=60,
        train__save_model_steps=1000,
        model__class_dropout_prob=0.0,
        train__optimizer__lr=3e-3,
        train__auto_lr="null",
        data__data_dir=f"[{assets['few']}]",
    )
    cfg = load_config(SEED_CONFIG, args)
    train(cfg)
    losses = [float(x) for x in _losses(tmp_path)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first / 2, f"loss fell only from {first:.3f} to {last:.3f}"


def test_non_finite_losses_are_skipped_then_abort_with_the_checkpoint_intact(assets, tmp_path, monkeypatch):
    import sana.train.loop as loop

    real = loop.loss_fn
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(loop, "loss_fn", poisoned)
    cfg = load_config(
        SEED_CONFIG, tiny_args(assets, tmp_path, train__max_steps=20, train__save_model_steps=2, train__max_nan_steps=3)
    )
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row") as err:
        train(cfg)
    assert "last checkpoint" in str(err.value)
    rows = read_metrics(tmp_path)
    assert [r["skipped"] for r in rows] == ["0", "0", "1", "2"]  # the third is the abort
    from linear_dit import load_linear_dit

    weights = load_linear_dit(tmp_path / "checkpoints" / "step_0000002" / "transformer").state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_lora_training_saves_diffusers_lora_and_validation_grid(assets, tmp_path):
    cfg = load_config(
        SEED_CONFIG,
        tiny_args(
            assets,
            tmp_path,
            train__max_steps=2,
            train__save_model_steps=2,
            train__use_lora="true",
            train__visualize="true",
            train__eval_sampling_steps=2,
            train__validation_sampling_steps=2,
            train__validation_prompts='["a red circle","a blue square"]',
        ),
    )
    run = train(cfg)
    lora = tmp_path / "checkpoints" / "step_0000002" / "lora" / "pytorch_lora_weights.safetensors"
    assert lora.exists()
    trainable = [n for n, p in run.accelerator.unwrap_model(run.model).named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    from PIL import Image

    grid = Image.open(tmp_path / "log_vis" / "step_0000002.png")
    assert grid.size == (2 * 256, 256)


def test_caption_dropout_keeps_each_samples_mask():
    text = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    null = torch.zeros(5, 4)
    out, out_mask = drop_captions(text, mask, null, torch.tensor([False, True, False]))
    assert torch.equal(out[0], text[0]) and torch.equal(out[1], null) and torch.equal(out[2], text[2])
    assert torch.equal(out_mask, mask)


def test_draws_depend_on_the_sample_not_the_batch_split():
    s = ObjectiveSettings(caption_dropout=0.5)
    noise, t, drop = draw((4, 2, 2), s, seed=1, step=3, micro=0, indices=[0, 1, 2, 3])
    for i in range(4):
        n_i, t_i, d_i = draw((4, 2, 2), s, seed=1, step=3, micro=0, indices=[i])
        assert torch.equal(n_i[0], noise[i]) and torch.equal(t_i[0], t[i]) and bool(d_i[0]) == bool(drop[i])
    other, _, _ = draw((4, 2, 2), s, seed=1, step=4, micro=0, indices=[0])
    assert not torch.equal(other[0], noise[0])
    assert float(t.min()) > 0 and float(t.max()) < 1


def test_multi_scale_batches_have_one_size_each(assets, tmp_path):
    from sana.train.data import build_data, loader

    cfg = load_config(
        SEED_CONFIG,
        [
            *tiny_args(assets, tmp_path),
            "--model.multi_scale=true",
            "--model.aspect_ratio_type=ASPECT_RATIO_256",
            "--train.train_batch_size=1",
        ],
    )
    dataset, sampler = build_data(cfg, rank=0, world=1)
    sizes = {tuple(batch["image"].shape[-2:]) for batch in loader(dataset, sampler, 0)}
    assert len(sizes) > 1  # the toy data has several aspect ratios: several buckets
    for batch in loader(dataset, sampler, 0):
        assert len({tuple(im.shape) for im in batch["image"]}) == 1


EXAMPLE_DATA = Path(__file__).resolve().parents[3] / "asset" / "example_data"


def test_seed_command_unchanged_on_the_shipped_example_data(assets, tmp_path, capsys, monkeypatch):
    """The seed's command word for word (its data_dir is the shipped folder), plus overrides to tiny models."""
    from sana.cli import main

    seed = [
        '--data.data_dir="[asset/example_data]"',
        "--data.type=SanaImgDataset",
        "--model.multi_scale=false",
        "--train.train_batch_size=32",
    ]
    tiny = [
        a
        for a in tiny_args(assets, tmp_path, train__max_steps=1)
        if not a.startswith(("--data.data_dir", "--train.train_batch_size", "--data.type", "--model.multi_scale"))
    ]
    monkeypatch.chdir(EXAMPLE_DATA.parents[1])  # the seed's relative path, from the repository root
    assert main(["train", SEED_CONFIG, *seed, *tiny]) == 0, capsys.readouterr().err
    assert len(read_metrics(tmp_path)) == 1


def test_training_on_a_feature_cache(assets, tmp_path, capsys):
    from sana.cli import main

    cache = tmp_path / "cache"
    base = tiny_args(assets, tmp_path / "run", train__max_steps=2, train__save_model_steps=2)
    assert (
        main(["encode-latents", SEED_CONFIG, *base, "-o", str(cache), "--model.aspect_ratio_type=ASPECT_RATIO_256"])
        == 0
    )
    assert "8 samples" in capsys.readouterr().out
    cfg = load_config(
        SEED_CONFIG,
        [
            *base,
            "--data.load_vae_feat=true",
            "--data.load_text_feat=true",
            f"--data.feature_cache={cache}",
            "--model.aspect_ratio_type=ASPECT_RATIO_256",
        ],
    )
    run = train(cfg)
    assert run.state.step == 2 and all(float(r["t_vae"]) == 0.0 for r in read_metrics(tmp_path / "run"))
    bad = load_config(SEED_CONFIG, [*base, "--data.load_vae_feat=true"])
    with pytest.raises(ValueError, match="must be set together"):
        train(bad)


def test_ema_is_kept_and_saved(assets, tmp_path):
    cfg = load_config(
        SEED_CONFIG,
        tiny_args(
            assets, tmp_path, train__max_steps=2, train__save_model_steps=2, train__use_ema="true", train__ema_rate=0.5
        ),
    )
    run = train(cfg)
    model = run.accelerator.unwrap_model(run.model)
    key = "blocks.0.attn.qkv.weight"
    assert not torch.equal(run.ema.shadow[key], model.state_dict()[key].float())
    assert any(p.name.startswith("custom_checkpoint_2") for p in (tmp_path / "checkpoints" / "step_0000002").iterdir())


def test_a_failed_save_leaves_the_previous_checkpoint_valid(assets, tmp_path, monkeypatch):
    import accelerate

    cfg = load_config(SEED_CONFIG, tiny_args(assets, tmp_path, train__max_steps=4, train__save_model_steps=2))
    real = accelerate.Accelerator.save_state
    calls = {"n": 0}

    def disk_full(self, output_dir=None, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "partial.bin").write_bytes(b"x")
            raise OSError(28, "No space left on device")
        return real(self, output_dir, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "save_state", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(cfg)
    from sana.train.checkpoint import list_checkpoints, resolve_resume

    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002"]
    assert resolve_resume(tmp_path, "latest").name == "step_0000002"
    monkeypatch.setattr(accelerate.Accelerator, "save_state", real)
    resumed = train(
        load_config(
            SEED_CONFIG,
            tiny_args(assets, tmp_path, train__max_steps=4, train__save_model_steps=2, resume_from="latest"),
        )
    )
    assert resumed.state.step == 4 and not list((tmp_path / "checkpoints").glob(".tmp_*"))


def test_a_save_clears_what_a_killed_save_left(tmp_path):
    """A SIGKILL during a save can leave its temporaries (test_killed_run_resumes_exactly hit one: `.latest.*`, the
    pointer's temporary file): the next save removes them and leaves only real checkpoints and `latest`."""
    from sana.train.checkpoint import save_checkpoint

    class OneProcess:
        is_main_process = True

        def wait_for_everyone(self):
            pass

        def save_state(self, output_dir):
            Path(output_dir).mkdir(parents=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"state")

    root = tmp_path / "checkpoints"
    (root / ".tmp_step_0000004" / "transformer").mkdir(parents=True)  # killed while writing step 4
    (root / ".latest.k1ll3d").write_text("step_0000004\n")  # killed between the pointer's write and its rename
    saved = save_checkpoint(OneProcess(), tmp_path, 4, lambda folder: folder.mkdir(), keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000004"]
    assert (root / "latest").read_text().strip() == "step_0000004" and (saved / "transformer").is_dir()


def test_runs_of_different_precisions_follow_each_other_in_one_process(tmp_path):
    """accelerate allows one mixed precision per process; each training run starts its own state, so a bf16 run
    (the embedded recipe's transformer stage) can be followed by an fp32 one (a test suite, a notebook)."""
    from sana.embedded import RECIPE_CONFIG
    from sana.train.loop import _accelerator

    for precision, expected in [("bf16", "bf16"), ("fp32", "no"), ("bf16", "bf16")]:
        cfg = load_config(RECIPE_CONFIG, {"model.mixed_precision": precision})
        assert _accelerator(cfg, tmp_path).mixed_precision == expected
