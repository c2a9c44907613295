"""Checkpoint formats: ours, diffusers folders and efficientvit files, each written and read back exactly."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderDC
from safetensors.torch import load_file, save_file

from dcae import DCAE, PRESETS, DCAEConfig, load_dcae, save_dcae
from dcae._convert import detect_format, from_format, to_format
from dcae.io import _match_preset
from dcae.testing import random_model, tiny_config, tiny_in_mix_config

CONFIGS = [tiny_config(), tiny_in_mix_config()]


def _assert_same_model(a: DCAE, b: DCAE) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # diffusers folders name the model after the folder; the graph and scaling must survive every format.
    assert dataclasses.replace(a.config, name="") == dataclasses.replace(b.config, name="")


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("fmt", ["dcae", "diffusers", "efficientvit"])
def test_state_dict_round_trip(cfg: DCAEConfig, fmt: str) -> None:
    state = random_model(cfg).state_dict()
    back = from_format(to_format(state, cfg, fmt), cfg, fmt)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_our_folder_round_trip(cfg: DCAEConfig, tmp_path: Path) -> None:
    model = random_model(cfg)
    model.save_pretrained(tmp_path / "ae")
    loaded = DCAE.from_pretrained(tmp_path / "ae")
    _assert_same_model(model, loaded)
    assert loaded.config == cfg
    assert loaded.scaling_factor == cfg.scaling_factor
    # The weights file alone carries the config in its metadata.
    alone = load_dcae(tmp_path / "ae" / "model.safetensors")
    assert alone.config == cfg


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_diffusers_folder_round_trip_and_readable_by_diffusers(cfg: DCAEConfig, tmp_path: Path) -> None:
    model = random_model(cfg)
    save_dcae(model, tmp_path / "vae", fmt="diffusers")
    loaded = load_dcae(tmp_path / "vae", config=None)
    _assert_same_model(model, loaded)
    assert loaded.scaling_factor == cfg.scaling_factor
    ref = AutoencoderDC.from_pretrained(tmp_path / "vae").eval()  # diffusers reads our folder
    assert ref.config.scaling_factor == cfg.scaling_factor
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ref.encode(images).latent, model.encode(images), atol=1e-5)


def test_reads_folder_written_by_diffusers_and_pipeline_layout(tmp_path: Path) -> None:
    cfg = tiny_config()
    model = random_model(cfg)
    from dcae._convert import config_to_diffusers

    ref = AutoencoderDC(**config_to_diffusers(cfg))
    ref.load_state_dict(to_format(model.state_dict(), cfg, "diffusers"))
    ref.save_pretrained(tmp_path / "pipeline" / "vae")  # a pipeline folder: the AE lives in vae/
    (tmp_path / "pipeline" / "model_index.json").write_text("{}")
    loaded = load_dcae(tmp_path / "pipeline")
    _assert_same_model(model, loaded)
    assert loaded.scaling_factor == cfg.scaling_factor


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_efficientvit_file_round_trip(cfg: DCAEConfig, suffix: str, tmp_path: Path) -> None:
    model = random_model(cfg)
    path = save_dcae(model, tmp_path / f"dc_ae{suffix}", fmt="efficientvit")
    _assert_same_model(model, load_dcae(path, config=cfg))


def test_efficientvit_hub_folder_names_its_preset(tmp_path: Path) -> None:
    cfg = tiny_config()
    save_dcae(random_model(cfg), tmp_path / "model.safetensors", fmt="efficientvit")
    with pytest.raises(ValueError, match="matches none of the presets"):
        load_dcae(tmp_path)  # no config anywhere: the tiny graph is no preset
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "tiny"}))
    assert load_dcae(tmp_path, config=cfg).config == cfg


def test_efficientvit_checkpoint_is_matched_to_its_preset() -> None:
    """A bare efficientvit state dict of the Sana graph is recognised by key names and shapes (meta tensors)."""
    cfg = PRESETS["dc-ae-f32c32-sana-1.0"]
    with torch.device("meta"):
        state = to_format(DCAE(cfg).state_dict(), cfg, "efficientvit")
    matched = _match_preset(state, detect_format(set(state)))
    assert matched.name == "dc-ae-f32c32-sana-1.0|dc-ae-f32c32-sana-1.1"
    assert matched.scaling_factor == 0.41407
    in_cfg = PRESETS["dc-ae-f64c128-mix-1.0"]
    with torch.device("meta"):
        state = to_format(DCAE(in_cfg).state_dict(), in_cfg, "efficientvit")
    assert "dc-ae-f64c128-mix-1.0" in _match_preset(state, "efficientvit").name


def test_pth_loads_with_weights_only(tmp_path: Path) -> None:
    """A pickle that needs arbitrary code (here a Path object) is refused by torch.load(weights_only=True)."""
    cfg = tiny_config()
    state = to_format(random_model(cfg).state_dict(), cfg, "efficientvit")
    torch.save({"state_dict": state, "extra": Path("x")}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        load_dcae(tmp_path / "evil.pth", config=cfg)


def test_mismatched_checkpoint_names_keys(tmp_path: Path) -> None:
    cfg = tiny_config()
    state = to_format(random_model(cfg).state_dict(), cfg, "efficientvit")
    state.pop("encoder.project_out.main.op_list.0.conv.bias")
    state["encoder.extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "broken.safetensors")
    with pytest.raises(KeyError, match=r"1 missing .*project_out.*1 unexpected .*encoder\.extra"):
        load_dcae(tmp_path / "broken.safetensors", config=cfg)


def test_load_dtype_and_missing_path(tmp_path: Path) -> None:
    random_model(tiny_config()).save_pretrained(tmp_path / "ae")
    assert load_dcae(tmp_path / "ae", dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(FileNotFoundError):
        load_dcae(tmp_path / "nothing-here")


def test_hub_id_uses_snapshot_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    random_model(tiny_config()).save_pretrained(tmp_path / "snap")
    import dcae.io

    calls = []
    monkeypatch.setattr(dcae.io, "_snapshot_download", lambda repo: calls.append(repo) or tmp_path / "snap")
    assert load_dcae("someone/some-dc-ae").config == tiny_config()
    assert calls == ["someone/some-dc-ae"]


def test_hub_id_without_extra_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"dcae\[hub\]"):
        load_dcae("someone/some-dc-ae")


def test_saved_weights_are_plain_safetensors(tmp_path: Path) -> None:
    cfg = tiny_config()
    random_model(cfg).save_pretrained(tmp_path / "ae")
    keys = set(load_file(tmp_path / "ae" / "model.safetensors"))
    assert detect_format(keys) == "dcae"
    assert json.loads((tmp_path / "ae" / "config.json").read_text())["config"]["scaling_factor"] == 0.5


def test_save_is_atomic_and_rejects_unknown_formats(tmp_path, monkeypatch):
    import dcae.io
    from dcae import save_dcae
    from dcae.testing import random_model, tiny_config

    model = random_model(tiny_config())
    with pytest.raises(ValueError, match="unknown checkpoint format 'onnx'"):
        save_dcae(model, tmp_path / "x", fmt="onnx")
    assert not (tmp_path / "x").exists()
    target = save_dcae(model, tmp_path / "ae")
    before = sorted(p.name for p in target.iterdir())

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dcae.io, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_dcae(model, tmp_path / "ae")
    assert sorted(p.name for p in target.iterdir()) == before  # the previous checkpoint is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["ae"]  # and no temporary is left behind
