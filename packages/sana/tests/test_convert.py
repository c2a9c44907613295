"""`sana.convert`: transformer round trips between the official .pth, diffusers and ours; diffusers pipeline
folders to ours and back (checked by loading them in diffusers); atomic writes and overwrite refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

import sana.convert
from dcae import load_dcae
from linear_dit import LinearDiT, load_linear_dit, save_linear_dit
from linear_dit.testing import random_inputs, randomize_, tiny_config
from sana.convert import convert
from sana.hub import checkpoint_format

if TYPE_CHECKING:
    from conftest import FakeHubCache

torch.set_num_threads(1)

NULL_CAPTION = "y_embedder.y_embedding"


@pytest.fixture
def tiny_pth(tmp_path: Path) -> tuple[LinearDiT, Path]:
    model = randomize_(LinearDiT(tiny_config()))
    return model, save_linear_dit(model, tmp_path / "official.pth", fmt="sana")


def load_pth_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for key in a.keys() - set(skip):
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


# --- transformer checkpoints --------------------------------------------------------------------------------------


def test_pth_diffusers_ours_pth_round_trip(tmp_path: Path, tiny_pth) -> None:
    model, pth = tiny_pth
    cfg = model.config
    diffusers_dir = convert(pth, tmp_path / "diffusers", "diffusers", config=cfg)
    # diffusers configs carry no text length (the null caption's rows) or PAG layers: give the graph again
    ours_dir = convert(diffusers_dir, tmp_path / "ours", "linear_dit", config=cfg)
    back = convert(ours_dir, tmp_path / "back.pth", "sana")
    assert [checkpoint_format(p) for p in (diffusers_dir, ours_dir, back)] == [
        "diffusers_transformer",
        "linear_dit",
        "sana_pth",
    ]
    original, final = load_pth_state(pth), load_pth_state(back)
    assert_state_equal(original, final, skip=(NULL_CAPTION,))
    # diffusers stores no null caption: zeros come back (the pipeline recomputes it from the text encoder)
    assert torch.equal(final[NULL_CAPTION], torch.zeros_like(original[NULL_CAPTION]))
    assert original[NULL_CAPTION].abs().max() > 0
    reloaded = load_linear_dit(back, config=cfg)
    x, t, text, mask = random_inputs(cfg)
    with torch.no_grad():
        assert torch.equal(reloaded(x, t, text, mask), model(x, t, text, mask))


def test_pth_ours_pth_keeps_every_tensor(tmp_path: Path, tiny_pth) -> None:
    model, pth = tiny_pth
    ours = convert(pth, tmp_path / "ours", "linear_dit", config=model.config)
    back = convert(ours, tmp_path / "back.pth", "sana")
    assert_state_equal(load_pth_state(pth), load_pth_state(back))


def test_dtype_casts_and_keeps_the_trained_dtype(tmp_path: Path, tiny_pth) -> None:
    model, pth = tiny_pth
    ours = convert(pth, tmp_path / "ours", "linear_dit", config=model.config, dtype="bf16")
    loaded = load_linear_dit(ours, dtype=None)
    expected = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    assert_state_equal(loaded.state_dict(), expected)
    assert loaded.config.trained_dtype == "float32"  # what the source was stored in, kept as metadata
    back = convert(ours, tmp_path / "back.pth", "sana", dtype=torch.float32)
    assert all(v.dtype == torch.float32 for v in load_pth_state(back).values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"to": "onnx"}, "unknown target format to='onnx'"), ({"dtype": "float8"}, "unsupported dtype='float8'")],
)
def test_bad_arguments(tmp_path: Path, tiny_pth, kwargs: dict, message: str) -> None:
    _, pth = tiny_pth
    with pytest.raises(ValueError, match=message):
        convert(pth, tmp_path / "out", **{"to": "linear_dit", **kwargs})
    assert not (tmp_path / "out").exists()


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        convert(tmp_path / "nope.pth", tmp_path / "out", "linear_dit")


# --- overwrite and atomicity --------------------------------------------------------------------------------------


def test_existing_destination_needs_overwrite(tmp_path: Path, tiny_pth) -> None:
    model, pth = tiny_pth
    dst = tmp_path / "ours"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert(pth, dst, "linear_dit", config=model.config)
    assert (dst / "keep.txt").read_text() == "old"
    convert(pth, dst, "linear_dit", config=model.config, overwrite=True)
    assert not (dst / "keep.txt").exists()
    assert checkpoint_format(dst) == "linear_dit"
    with pytest.raises(ValueError, match="dst is the source itself"):
        convert(dst, dst, "linear_dit", overwrite=True)


def test_failure_mid_write_leaves_no_partial_destination(
    tmp_path: Path, tiny_diffusers_pipeline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_save(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(sana.convert, "save_dcae", broken_save)  # fails after the transformer was written
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="disk full"):
        convert(tiny_diffusers_pipeline_dir, out / "ours", "linear_dit")
    assert list(out.iterdir()) == []  # neither dst nor the temporary folder
    previous = out / "previous"
    previous.mkdir()
    (previous / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        convert(tiny_diffusers_pipeline_dir, previous, "linear_dit", overwrite=True)
    assert [p.name for p in out.iterdir()] == ["previous"]
    assert (previous / "keep.txt").read_text() == "old"


# --- whole pipelines ----------------------------------------------------------------------------------------------


def test_diffusers_pipeline_to_ours_and_back(tmp_path: Path, tiny_diffusers_pipeline_dir: Path) -> None:
    from diffusers import SanaPipeline

    src = tiny_diffusers_pipeline_dir
    ours = convert(src, tmp_path / "ours", "linear_dit")
    manifest = json.loads((ours / "sana_pipeline.json").read_text())
    assert checkpoint_format(ours) == "sana_pipeline"
    assert manifest["format"] == "sana_pipeline" and manifest["format_version"] == 1
    assert manifest["flow_shift"] == 3.0 and manifest["source"] == str(src)
    assert manifest["parts"] == {n: n for n in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")}
    assert checkpoint_format(ours / "transformer") == "linear_dit"
    assert json.loads((ours / "vae" / "config.json").read_text())["format"] == "dcae"
    for part in ("text_encoder", "tokenizer", "scheduler"):
        for file in (src / part).iterdir():
            assert (ours / part / file.name).read_bytes() == file.read_bytes()

    back = convert(ours, tmp_path / "back", "diffusers")
    assert json.loads((back / "model_index.json").read_text()) == json.loads((src / "model_index.json").read_text())
    reference, converted = SanaPipeline.from_pretrained(src), SanaPipeline.from_pretrained(back)
    for part in ("transformer", "vae", "text_encoder"):
        assert_state_equal(getattr(reference, part).state_dict(), getattr(converted, part).state_dict())
    assert converted.scheduler.config.flow_shift == reference.scheduler.config.flow_shift
    assert converted.tokenizer("a cat").input_ids == reference.tokenizer("a cat").input_ids

    ae_ours, ae_diffusers = load_dcae(ours), load_dcae(src)  # our vae/ folder holds the same autoencoder
    assert_state_equal(ae_ours.state_dict(), ae_diffusers.state_dict())
    assert ae_ours.scaling_factor == reference.vae.config.scaling_factor


def test_a_pipeline_with_skip_layers_warns_on_the_way_to_diffusers(
    tmp_path: Path, tiny_diffusers_pipeline_dir: Path
) -> None:
    """diffusers' SanaPipeline has no skip_layers: converting such a folder says it will not generate the same."""
    ours = convert(tiny_diffusers_pipeline_dir, tmp_path / "ours", "linear_dit")
    manifest = json.loads((ours / "sana_pipeline.json").read_text())
    (ours / "sana_pipeline.json").write_text(json.dumps({**manifest, "settings": {"text_encoder.skip_layers": 1}}))
    with pytest.warns(UserWarning, match=r"skip_layers=1 .*diffusers' SanaPipeline always uses the last"):
        back = convert(ours, tmp_path / "back", "diffusers")
    assert (back / "model_index.json").is_file()


def test_pipeline_to_sana_writes_the_transformer(tmp_path: Path, tiny_diffusers_pipeline_dir: Path) -> None:
    pth = convert(tiny_diffusers_pipeline_dir, tmp_path / "transformer.pth", "sana", dtype="bfloat16")
    expected = load_linear_dit(tiny_diffusers_pipeline_dir, dtype=torch.bfloat16).state_dict()
    state = load_pth_state(pth)
    state.pop("pos_embed")
    assert_state_equal(state, expected)


def test_pipeline_from_the_hub_cache_offline(
    tmp_path: Path, tiny_diffusers_pipeline_dir: Path, offline_hf_cache: FakeHubCache
) -> None:
    """A repo id resolves through huggingface_hub's cache (symlinked files) and converts like a local folder."""
    snapshot = offline_hf_cache.add_folder("org/sana-tiny", tiny_diffusers_pipeline_dir)
    ours = convert("org/sana-tiny", tmp_path / "ours", "linear_dit")
    assert json.loads((ours / "sana_pipeline.json").read_text())["source"] == "org/sana-tiny"
    tokenizer = ours / "tokenizer" / "tokenizer.json"
    assert not tokenizer.is_symlink()  # real files, not links into the cache
    assert tokenizer.read_bytes() == (snapshot / "tokenizer" / "tokenizer.json").read_bytes()
    assert_state_equal(load_dcae(ours / "vae").state_dict(), load_dcae(tiny_diffusers_pipeline_dir).state_dict())


def test_pipeline_to_its_own_format_is_refused(tmp_path: Path, tiny_diffusers_pipeline_dir: Path) -> None:
    with pytest.raises(ValueError, match="already a diffusers_pipeline"):
        convert(tiny_diffusers_pipeline_dir, tmp_path / "copy", "diffusers")
    assert not (tmp_path / "copy").exists()
