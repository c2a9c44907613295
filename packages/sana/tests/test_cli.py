"""The seed's usage of SanaPipeline, the hub path through a real (offline) HF cache, and the `sana` command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sana import SanaPipeline, read_metadata
from sana.cli import main

SEED_CONFIG = "configs/sana_config/1024ms/Sana_1600M_img1024.yaml"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_seed_usage_as_written(tiny_local_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the packaged copy of configs/ answers the seed's relative path from anywhere
    sana = SanaPipeline(SEED_CONFIG, overrides=tiny_local_model.overrides)
    sana.from_pretrained(str(tiny_local_model.pth))
    generator = torch.Generator().manual_seed(42)
    image = sana(
        prompt="a cyberpunk cat with a neon sign that says 'Sana'", height=256, width=256, guidance_scale=5.0,
        pag_guidance_scale=2.0, num_inference_steps=3, generator=generator,
    )  # fmt: skip
    assert image.shape == (1, 3, 256, 256) and image.min() >= -1 and image.max() <= 1
    assert sana.config.model.model == "SanaMS_1600M_P1_D20" and sana.denoiser.config.pag_layers == (1,)
    pil = sana("a cat", height=64, width=64, num_inference_steps=2, output_type="pil", progress=False)
    assert pil[0].size == (64, 64)


def test_unreachable_hub_model_names_the_config_field(offline_hf_cache):
    with pytest.raises(FileNotFoundError, match=r"vae\.vae_pretrained") as err:
        SanaPipeline(SEED_CONFIG)
    assert "mit-han-lab/dc-ae-f32c32-sana-1.0" in str(err.value)


def test_hub_paths_load_offline_through_huggingface_hub(
    offline_hf_cache, tiny_local_model, tiny_diffusers_pipeline_dir
):
    offline_hf_cache.add("Efficient-Large-Model/Tiny_Sana", {"checkpoints/tiny.pth": tiny_local_model.pth})
    sana = SanaPipeline(SEED_CONFIG, overrides=tiny_local_model.overrides)
    sana.from_pretrained("hf://Efficient-Large-Model/Tiny_Sana/checkpoints/tiny.pth")
    a = sana("a red circle", height=32, width=32, num_inference_steps=2, progress=False, use_resolution_binning=False)
    offline_hf_cache.add_folder("Efficient-Large-Model/Tiny_Sana_diffusers", tiny_diffusers_pipeline_dir)
    pipe = SanaPipeline.from_pretrained("Efficient-Large-Model/Tiny_Sana_diffusers")
    b = pipe("a red circle", height=32, width=32, num_inference_steps=2, progress=False, use_resolution_binning=False)
    assert a.shape == b.shape == (1, 3, 32, 32)
    assert "models--Efficient-Large-Model--Tiny_Sana_diffusers" in pipe.sources["vae"]


def _generate(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["generate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_pngs_with_metadata_and_a_manifest(tiny_diffusers_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = _generate(
        ["a red circle", "a blue square --hw 32:64", "--model_path", str(tiny_diffusers_pipeline_dir),
         "--height", "32", "--width", "32", "--steps", "2", "--seed", "5", "-o", str(out)], capsys,
    )  # fmt: skip
    assert code == 0, stdout
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["00000.png", "00001.png"]
    assert Image.open(out / "00001.png").size == (64, 32)
    meta = read_metadata(out / "00001.png")
    assert meta["prompt"] == "a blue square --hw 32:64" and meta["seed"] == 6 and meta["num_inference_steps"] == 2
    assert "Negative prompt" in Image.open(out / "00000.png").text["parameters"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["file"] for r in manifest["images"]] == files and manifest["images"][0]["seed"] == 5


def test_batch_size_does_not_change_images_and_runs_resume(tiny_diffusers_pipeline_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\ntwo green triangles --ar 1:2\n")
    common = ["--txt_file", str(prompts), "--model_path", str(tiny_diffusers_pipeline_dir), "--steps", "2",
              "--height", "64", "--width", "64"]  # fmt: skip
    assert _generate([*common, "--bs", "1", "-o", str(tmp_path / "bs1")], capsys)[0] == 0
    assert _generate([*common, "--bs", "3", "-o", str(tmp_path / "bs3")], capsys)[0] == 0
    names = sorted(p.name for p in (tmp_path / "bs1").glob("*.png"))
    assert names == ["00001_a_red_circle.png", "00003_a_blue_square.png", "00004_two_green_triangles_--ar_1_2.png"]
    for name in names:
        a, b = (np.asarray(Image.open(tmp_path / d / name), dtype=int) for d in ("bs1", "bs3"))
        assert np.abs(a - b).max() <= 1  # same seeds; batched float sums may flip one rounding
    target = tmp_path / "bs3" / names[1]
    kept = tmp_path / "bs3" / names[0]
    before, kept_mtime = np.asarray(Image.open(target)), kept.stat().st_mtime_ns
    target.unlink()
    code, stdout, _ = _generate([*common, "--bs", "3", "-o", str(tmp_path / "bs3")], capsys)
    assert code == 0 and stdout.count(".png") == 1 and names[1] in stdout  # only the missing image was made
    assert kept.stat().st_mtime_ns == kept_mtime
    np.testing.assert_array_equal(np.asarray(Image.open(target)), before)
    assert len(json.loads((tmp_path / "bs3" / "manifest.json").read_text())["images"]) == 3


def test_generate_from_official_config_and_pth(tiny_local_model, tmp_path, capsys):
    code, _stdout, err = _generate(
        ["a red circle", "--config", SEED_CONFIG, "--model_path", str(tiny_local_model.pth), "--height", "256",
         "--width", "256", "--steps", "2", "--pag_scale", "2.0", "-o", str(tmp_path), *tiny_local_model.overrides],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert Image.open(tmp_path / "00000.png").size == (256, 256)
    assert read_metadata(tmp_path / "00000.png")["pag_guidance_scale"] == 2.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x", "--model.multi_scal=false"], "unknown config key 'model.multi_scal'"),
        (["x", "--model.mixed_precision=fp8"], "model.mixed_precision"),
        (["x", "--steps", "0", "--model_path", "{pipe}"], "num_inference_steps must be an int >= 1"),
        (["x", "--height", "30", "--no_binning", "--model_path", "{pipe}"], "height=30 is not a multiple"),
        (["--json_file", "{bad_json}", "--model_path", "{pipe}"], "line 3 column"),
        (["--json_file", "{no_prompt}", "--model_path", "{pipe}"], "entry 'a' has no non-empty string \"prompt\""),
        (["--txt_file", "{missing}", "--model_path", "{pipe}"], "prompt file not found"),
        ([], "no prompt"),
        (["x", "--config", SEED_CONFIG], "no model: pass --model_path"),  # without --config: the embedded model
        (["x", "--model_path", "{missing}"], "no such file or folder"),
    ],
)
def test_bad_input_gives_one_clear_message(args, message, tiny_diffusers_pipeline_dir, tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{\n  "a": {"prompt": "x"},\n  "b": {"prompt": "y",,}\n}\n')
    (tmp_path / "no_prompt.json").write_text('{"a": {"caption": "x"}}')
    paths = {"pipe": tiny_diffusers_pipeline_dir, "bad_json": tmp_path / "bad.json",
             "no_prompt": tmp_path / "no_prompt.json", "missing": tmp_path / "missing.txt"}  # fmt: skip
    args = [a.format(**paths) for a in args]
    code, _, err = _generate([*args, "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and message in err and err.count("error:") == 1 and "Traceback" not in err
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


def test_print_config_applies_the_seed_overrides(capsys):
    code = main(
        ["config", "configs/sana_config/512ms/Sana_600M_img512.yaml", '--data.data_dir="[asset/example_data]"',
         "--data.type=SanaImgDataset", "--model.multi_scale=false", "--train.train_batch_size=32"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "train_batch_size: 32" in out and "multi_scale: false" in out and "- asset/example_data" in out
    assert main(["generate", "--print-config", "--config", SEED_CONFIG, "--scheduler.flow_shift=4"]) == 0
    assert "flow_shift: 4.0" in capsys.readouterr().out


def test_convert_command_round_trips(tiny_diffusers_pipeline_dir, tmp_path, capsys):
    from linear_dit import load_linear_dit

    ours, back = tmp_path / "ours", tmp_path / "back"
    assert main(["convert", str(tiny_diffusers_pipeline_dir), str(ours), "--to", "linear_dit"]) == 0
    assert main(["convert", str(ours), str(back), "--to", "diffusers"]) == 0
    pth = tmp_path / "transformer.pth"
    assert main(["convert", str(back / "transformer"), str(pth), "--to", "sana"]) == 0
    assert main(["convert", str(back / "transformer"), str(pth), "--to", "sana"]) == 2
    assert "already exists" in capsys.readouterr().err
    a = load_linear_dit(tiny_diffusers_pipeline_dir).state_dict()
    b = load_linear_dit(pth, cross_attention_heads=2).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_the_installed_command_runs_in_a_new_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sana", "config", SEED_CONFIG, "--model.image_size=512"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "image_size: 512" in result.stdout and "SanaMS_1600M_P1_D20" in result.stdout


def test_eval_shapes_writes_a_report_and_a_grid(tiny_diffusers_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "shapes", "--model_path", str(tiny_diffusers_pipeline_dir), "-n", "12", "--size", "32",
                 "--steps", "2", "--ae_images", "2", "-o", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert set(report["scores"]) >= {"single_object", "two_objects", "counting", "colors", "position", "color_attr"}
    assert 0 <= report["overall"] <= 1 and len(report["records"]) == 12
    assert report["autoencoder"]["psnr"] > 0 and Image.open(out / "grid.png").size[0] > 32
    assert "overall" in (out / "report.md").read_text()
    # the autoencoder ceiling: the same 12 prompts' own scenes through the autoencoder, scored per category
    top = report["autoencoder_ceiling"]
    assert (
        sum(top["counts"].values()) == 12 and 0 <= top["overall"] <= 1 and set(top["scores"]) == set(report["scores"])
    )
    assert "Autoencoder ceiling" in (out / "report.md").read_text()
    # --ae_images 0 skips the autoencoder's check (it used to fail after all the generation); < 0 fails at once
    code = main(["eval", "shapes", "--model_path", str(tiny_diffusers_pipeline_dir), "-n", "6", "--size", "32",
                 "--steps", "1", "--ae_images", "0", "-o", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["autoencoder"] is None
    assert json.loads((out / "report.json").read_text())["autoencoder_ceiling"] is None
    assert "Autoencoder not checked" in (out / "report.md").read_text()
    # --pag_scale > 1 evaluates with PAG on (the default 1.0 is off): other images, recorded in the report
    plain = (out / "grid.png").read_bytes()
    code = main(["eval", "shapes", "--model_path", str(tiny_diffusers_pipeline_dir), "-n", "6", "--size", "32",
                 "--steps", "1", "--ae_images", "0", "--pag_scale", "3", "-o", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["settings"]["pag_scale"] == 3.0
    assert (out / "grid.png").read_bytes() != plain
    capsys.readouterr()
    assert main(["eval", "shapes", "--model_path", "/nonexistent", "--ae_images", "-1", "-o", str(out)]) == 2
    assert "--ae_images must be >= 0" in capsys.readouterr().err


def test_outputs_are_written_atomically_with_the_umask_permissions(tmp_path):
    """PNGs, manifests and configs go through one atomic writer: readable as the umask says (not 0600), and a
    failed write leaves neither a partial file nor a temporary one."""
    import os

    from PIL import Image

    from sana._io import atomic_open
    from sana.images import read_metadata, save_png

    umask = os.umask(0o022)
    try:
        path = save_png(Image.new("RGB", (8, 8)), tmp_path / "a.png", {"prompt": "x"})
        assert (path.stat().st_mode & 0o777) == 0o644 and read_metadata(path)["prompt"] == "x"
        with pytest.raises(RuntimeError, match="disk full"), atomic_open(tmp_path / "b.json") as f:
            f.write("{")
            raise RuntimeError("disk full")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    finally:
        os.umask(umask)
