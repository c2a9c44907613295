"""`sana.hub`: local paths, `hf://` paths and repo ids through the real huggingface_hub code, offline, on a
temporary Hugging Face cache the tests populate in the real layout; and checkpoint-kind detection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from huggingface_hub import constants

from linear_dit import LinearDiT, load_linear_dit, save_linear_dit
from linear_dit.testing import randomize_, tiny_config
from sana.hub import ModelNotFoundError, checkpoint_format, is_diffusers_pipeline, pipeline_parts, resolve

if TYPE_CHECKING:
    from conftest import FakeHubCache

torch.set_num_threads(1)


@pytest.fixture
def tiny_dit(tmp_path: Path) -> tuple[LinearDiT, Path, Path]:
    """A random tiny model, as an official `.pth` and as our folder."""
    model = randomize_(LinearDiT(tiny_config()))
    pth = save_linear_dit(model, tmp_path / "src" / "x.pth", fmt="sana")
    folder = save_linear_dit(model, tmp_path / "src" / "folder", fmt="linear_dit")
    return model, pth, folder


def assert_same_weights(a: LinearDiT, b: LinearDiT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --- hub locations, offline -----------------------------------------------------------------------------------------


def test_hf_file_resolves_from_the_cache_offline(offline_hf_cache: FakeHubCache, tiny_dit) -> None:
    model, pth, _ = tiny_dit
    snapshot = offline_hf_cache.add("org/repo", {"checkpoints/x.pth": pth})
    path = resolve("hf://org/repo/checkpoints/x.pth")
    assert path == snapshot / "checkpoints" / "x.pth"
    assert_same_weights(load_linear_dit(path, config=model.config), model)
    assert resolve("hf://org/repo/checkpoints/x.pth", revision=offline_hf_cache.commit) == path


def test_repo_id_and_bare_hf_url_resolve_to_the_snapshot(offline_hf_cache: FakeHubCache, tiny_dit) -> None:
    model, _, folder = tiny_dit
    files = {f"transformer/{p.name}": p for p in folder.iterdir()}
    snapshot = offline_hf_cache.add("org/repo", {**files, "README.md": folder / "config.json"})
    assert resolve("org/repo") == snapshot
    assert resolve("hf://org/repo") == snapshot
    assert resolve(Path("hf://org/repo")) == snapshot  # pathlib collapses the double slash
    assert resolve("org/repo", allow_patterns=["transformer/*"]) == snapshot
    assert_same_weights(load_linear_dit(resolve("org/repo") / "transformer"), model)


@pytest.mark.parametrize(
    ("location", "named"),
    [("org/missing", "org/missing"), ("hf://org/repo/checkpoints/other.pth", "hf://org/repo/checkpoints/other.pth")],
)
def test_missing_hub_item_offline_says_how_to_fix(
    offline_hf_cache: FakeHubCache, tiny_dit, location: str, named: str
) -> None:
    offline_hf_cache.add("org/repo", {"checkpoints/x.pth": tiny_dit[1]})
    with pytest.raises(ModelNotFoundError) as info:
        resolve(location)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert named in message
    assert "HF_HUB_OFFLINE is set" in message
    assert str(offline_hf_cache.root) in message
    assert "download" in message and "--model_path" in message
    assert ("no local file or folder 'org/missing' either" in message) == (location == "org/missing")


def test_offline_constant_alone_is_respected(offline_hf_cache: FakeHubCache, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE seen only by huggingface_hub at import (the variable since unset) keeps us offline."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
        resolve("org/absent")


def test_offline_variable_set_after_import_is_respected(
    offline_hf_cache: FakeHubCache, tiny_dit, monkeypatch: pytest.MonkeyPatch, network_attempts: list[object]
) -> None:
    """HF_HUB_OFFLINE=1 set after huggingface_hub was imported: `resolve` still fetches nothing.

    (huggingface_hub's own user-agent side request follows its import-time constant and may try the network;
    it fails silently here. Set HF_HUB_OFFLINE before starting Python to avoid even that.)
    """
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    snapshot = offline_hf_cache.add("org/repo", {"checkpoints/x.pth": tiny_dit[1]})
    assert resolve("hf://org/repo/checkpoints/x.pth") == snapshot / "checkpoints" / "x.pth"
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
        resolve("org/absent")
    assert all("huggingface.co" in str(a) for a in network_attempts)  # at most the side request, never a download
    network_attempts.clear()


def test_item_absent_from_the_hub_online(monkeypatch: pytest.MonkeyPatch, network_attempts: list[object]) -> None:
    """Online, a file the Hub does not have is a ModelNotFoundError too (the download is stubbed: no network)."""
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError

    def absent(**kwargs: object) -> str:
        raise EntryNotFoundError(f"404 for {kwargs['filename']}")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", absent)
    with pytest.raises(ModelNotFoundError, match=r"hf://org/repo/x\.pth was not found on the Hub"):
        resolve("hf://org/repo/x.pth")


# --- local paths and malformed locations ----------------------------------------------------------------------------


def test_local_paths_are_returned_as_they_are(tmp_path: Path, tiny_dit, monkeypatch: pytest.MonkeyPatch) -> None:
    _, pth, folder = tiny_dit
    assert resolve(pth) == pth
    assert resolve(str(folder)) == folder
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve("~/src/x.pth") == pth
    monkeypatch.chdir(tmp_path)  # a local folder named like a repo id wins over the hub
    (tmp_path / "org" / "repo").mkdir(parents=True)
    assert resolve("org/repo") == Path("org/repo")


@pytest.mark.parametrize("location", ["./nope.pth", "/not/here", "org/model.pth", "a/b/c", "~/nope", "a b/c"])
def test_missing_local_path_is_named(location: str, offline_hf_cache: FakeHubCache) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder") as info:
        resolve(location)
    assert not isinstance(info.value, ModelNotFoundError)
    assert Path(location).name in str(info.value)


@pytest.mark.parametrize("location", ["hf://onlyorg", "hf://", "hf://org//file.pth", "hf:///repo"])
def test_malformed_hf_url(location: str) -> None:
    with pytest.raises(ValueError, match="malformed Hub location"):
        resolve(location)


def test_location_type_is_checked() -> None:
    with pytest.raises(TypeError, match="location"):
        resolve(3)  # type: ignore[arg-type]


# --- what a path holds ----------------------------------------------------------------------------------------------


def test_checkpoint_formats(tmp_path: Path, tiny_dit, tiny_diffusers_pipeline_dir: Path) -> None:
    model, pth, folder = tiny_dit
    diffusers_folder = save_linear_dit(model, tmp_path / "diffusers", fmt="diffusers")
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "sana_pipeline.json").write_text("{}")
    assert checkpoint_format(pth) == "sana_pth"
    assert checkpoint_format(folder) == "linear_dit"
    assert checkpoint_format(folder / "model.safetensors") == "linear_dit"
    assert checkpoint_format(diffusers_folder) == "diffusers_transformer"
    assert checkpoint_format(tiny_diffusers_pipeline_dir) == "diffusers_pipeline"
    assert checkpoint_format(tmp_path / "ours") == "sana_pipeline"
    assert is_diffusers_pipeline(tiny_diffusers_pipeline_dir)
    assert not is_diffusers_pipeline(diffusers_folder)


def test_bare_sana_safetensors_is_a_sana_checkpoint(tmp_path: Path, tiny_dit) -> None:
    from safetensors.torch import save_file

    model, _, _ = tiny_dit
    save_file(model.state_dict(), tmp_path / "sana.safetensors")
    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    assert checkpoint_format(tmp_path / "sana.safetensors") == "sana_pth"
    with pytest.raises(ValueError, match="unrecognised checkpoint"):
        checkpoint_format(tmp_path / "other.safetensors")


@pytest.mark.parametrize("kind", ["empty", "text", "other_config"])
def test_unrecognised_checkpoints(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "thing"
    if kind == "text":
        path = tmp_path / "notes.txt"
        path.write_text("hello")
    else:
        path.mkdir()
        if kind == "other_config":
            (path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match=r"unrecognised checkpoint .*expected an official Sana \.pth"):
        checkpoint_format(path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        checkpoint_format(tmp_path / "absent")


def test_pipeline_parts(tiny_diffusers_pipeline_dir: Path, tmp_path: Path) -> None:
    parts = pipeline_parts(tiny_diffusers_pipeline_dir)
    assert list(parts) == ["transformer", "vae", "text_encoder", "tokenizer", "scheduler"]
    assert all(p == tiny_diffusers_pipeline_dir / name for name, p in parts.items())
    broken = tmp_path / "broken"
    broken.mkdir()
    index = json.loads((tiny_diffusers_pipeline_dir / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**index, "vae": [None, None]}))
    for name in ("transformer", "text_encoder", "tokenizer"):
        (broken / name).mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks the part\(s\) \['vae', 'scheduler'\]"):
        pipeline_parts(broken)
    with pytest.raises(FileNotFoundError, match="is not a pipeline folder"):
        pipeline_parts(tmp_path)
