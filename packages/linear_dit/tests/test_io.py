"""Checkpoint formats: ours, diffusers folders (sharded or not) and official .pth files, both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from linear_dit import LinearDiT, LinearDiTConfig, load_linear_dit, save_linear_dit
from linear_dit.testing import assert_close_to, diffusers_twin, random_inputs, randomize_, run_diffusers, tiny_config

NULL = "y_embedder.y_embedding"


def _model(config: LinearDiTConfig | None = None) -> LinearDiT:
    return randomize_(LinearDiT(config or tiny_config())).eval()


def _same_outputs(a: LinearDiT, b: LinearDiT) -> None:
    x, t, text, mask = random_inputs(a.config, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(b(x, t, text, mask), a(x, t, text, mask), rtol=0, atol=0)


def _same_state(a: LinearDiT, b: LinearDiT, skip: tuple[str, ...] = ()) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if k not in skip:
            assert torch.equal(sa[k], sb[k]), k


def test_our_format_round_trips(tmp_path: Path) -> None:
    model = _model(tiny_config(pos_embed="sincos", trained_dtype="bfloat16", pag_layers=(0, 1)))
    folder = save_linear_dit(model, tmp_path / "ours")
    assert json.loads((folder / "config.json").read_text())["format"] == "linear_dit"
    for source in (folder, folder / "model.safetensors"):  # the weights file alone is self-describing
        loaded = load_linear_dit(source)
        assert loaded.config == model.config
        _same_state(model, loaded)
        _same_outputs(model, loaded)


def test_diffusers_folder_round_trips_and_loads_in_diffusers(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    model = _model(tiny_config(qk_norm=True, cross_norm=True))
    folder = model.save_pretrained(tmp_path / "transformer", fmt="diffusers")
    theirs = diffusers.SanaTransformer2DModel.from_pretrained(folder).eval()  # our writer is valid diffusers
    x, t, text, mask = random_inputs(model.config, batch=2)
    with torch.no_grad():
        assert_close_to(model(x, t, text, mask), run_diffusers(theirs, x, t, text, mask))
    for source in (folder, tmp_path):  # the model folder, or a pipeline folder holding transformer/
        back = LinearDiT.from_pretrained(source)
        _same_state(model, back, skip=(NULL,))
        assert not back.state_dict()[NULL].any()  # diffusers stores no null caption


def test_sharded_fp16_diffusers_folder(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    model = _model()
    twin = diffusers_twin(model).to(torch.float16)
    twin.save_pretrained(tmp_path, max_shard_size="40KB", variant="fp16")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    loaded = load_linear_dit(tmp_path)
    assert loaded.config.trained_dtype == "float16" and loaded.config.clamps_fp16  # inferred from fp16 weights
    assert loaded.dtype == torch.float32
    expected = model.half().float().state_dict()
    for k, v in loaded.state_dict().items():
        if k != NULL:
            assert torch.equal(v, expected[k]), k


def test_official_pth_round_trips_with_inferred_config(tmp_path: Path) -> None:
    cfg = tiny_config(pos_embed="sincos", pe_base_size=4, pe_interpolation=2.0, qk_norm=True, cross_norm=True)
    model = _model(cfg).to(torch.bfloat16)
    path = save_linear_dit(model, tmp_path / "Sana_tiny.pth", fmt="sana")
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"state_dict"} and payload["state_dict"]["pos_embed"].shape == (1, 16, 64)
    with pytest.raises(ValueError, match="cross-attention heads of a width-64 model"):
        load_linear_dit(path)  # width 64 is no Sana preset: the head count is not in any shape
    loaded = load_linear_dit(path, dtype=None, cross_attention_heads=2, pag_layers=(1,))
    assert loaded.config == LinearDiTConfig.from_dict({**cfg.to_dict(), "trained_dtype": "bfloat16"})
    assert loaded.dtype == torch.bfloat16
    _same_state(model, loaded)


def test_official_pth_layout_variants(tmp_path: Path) -> None:
    """A training checkpoint (optimizer entries, DDP `module.` prefix) with a Sana-width graph loads by shapes."""
    cfg = tiny_config(hidden_size=1152, linear_head_dim=32, depth=1, mlp_ratio=0.25, caption_channels=16)
    model = _model(cfg)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.pos_embed"] = torch.zeros(1, 64, 1152)
    torch.save({"state_dict": state, "optimizer": {"step": 3}, "epoch": 2}, tmp_path / "ckpt.pth")
    loaded = load_linear_dit(tmp_path / "ckpt.pth")
    assert loaded.config.cross_attention_heads == 16 and loaded.config.pos_embed == "none"  # Sana-0.6B's heads
    _same_state(model, loaded)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    model = _model()
    state = dict(model.state_dict())
    del state["blocks.1.attn.proj.bias"]
    state["blocks.1.attn.extra"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match=r"missing \['blocks.1.attn.proj.bias'\], unexpected \['blocks.1.attn.extra'\]"):
        load_linear_dit(tmp_path / "bad.pth", cross_attention_heads=2)


class _Payload:
    def __reduce__(self):
        return (print, ("this would run at load time",))


def test_pickles_that_carry_code_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.pth"):
        load_linear_dit(tmp_path / "evil.pth")


def test_unknown_folders_and_paths_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="neither a linear_dit nor a SanaTransformer2DModel"):
        load_linear_dit(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_linear_dit(tmp_path / "missing.pth")


def test_sprint_configs_are_refused() -> None:
    from linear_dit._convert import config_from_diffusers, config_to_diffusers

    cfg = {**config_to_diffusers(tiny_config()), "guidance_embeds": True}
    with pytest.raises(ValueError, match="guidance_embeds"):
        config_from_diffusers(cfg)


def test_save_is_atomic_and_rejects_unknown_formats(tmp_path, monkeypatch):
    import linear_dit.io
    from linear_dit import LinearDiT, save_linear_dit
    from linear_dit.testing import tiny_config

    model = LinearDiT(tiny_config())
    with pytest.raises(ValueError, match="unknown format 'onnx'"):
        save_linear_dit(model, tmp_path / "x", fmt="onnx")
    target = save_linear_dit(model, tmp_path / "dit")
    before = sorted(p.name for p in target.iterdir())

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(linear_dit.io, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_linear_dit(model, tmp_path / "dit")
    assert sorted(p.name for p in target.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["dit"]


def test_trained_dtype_accepts_the_checkpoint_labels(tmp_path):
    from linear_dit import LinearDiT, load_linear_dit, save_linear_dit
    from linear_dit.testing import tiny_config

    path = save_linear_dit(LinearDiT(tiny_config()), tmp_path / "dit")
    assert load_linear_dit(path, trained_dtype="fp16-trained").config.clamps_fp16
    assert load_linear_dit(path, trained_dtype="bf16-trained").config.trained_dtype == "bfloat16"
