"""`sana.config`: the official YAMLs, overrides in the seed's syntax, error messages, dumping, pipeline helpers."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pydantic
import pytest
import torch
import yaml

from linear_dit import get_preset
from sana.config import (
    MODEL_PRESETS,
    TEXT_ENCODER_IDS,
    ConfigError,
    SanaConfig,
    bucket_table_name,
    dit_config,
    dump_config,
    load_config,
    packaged_configs,
    parse_overrides,
    save_config,
    weight_dtype,
)
from sana_text import COMPLEX_HUMAN_INSTRUCTION_LINES

CFG_512 = "configs/sana_config/512ms/Sana_600M_img512.yaml"
CFG_1024 = "configs/sana_config/1024ms/Sana_1600M_img1024.yaml"
CFG_4K = "configs/sana_config/4096ms/Sana_1600M_img4096_bf16.yaml"
CFG_48 = "configs/sana1-5_config/1024ms/Sana_4800M_1024px_came8bit_grow_constant_allqknorm_bf16_lr2e5.yaml"
SEED_OVERRIDES = [
    '--data.data_dir="[asset/example_data]"',
    "--data.type=SanaImgDataset",
    "--model.multi_scale=false",
    "--train.train_batch_size=32",
]
EXPECTED_FILES = {
    "configs/sana_config/512ms/Sana_600M_img512.yaml",
    "configs/sana_config/512ms/Sana_1600M_img512.yaml",
    "configs/sana_config/1024ms/Sana_600M_img1024.yaml",
    "configs/sana_config/1024ms/Sana_1600M_img1024.yaml",
    "configs/sana_config/1024ms/Sana_1600M_img1024_CAME8bit.yaml",
    "configs/sana_config/1024ms/Sana_1600M_img1024_AdamW.yaml",
    "configs/sana_config/2048ms/Sana_1600M_img2048_bf16.yaml",
    "configs/sana_config/4096ms/Sana_1600M_img4096_bf16.yaml",
    "configs/sana_app_config/Sana_1600M_app.yaml",
    CFG_48,
}


def _error(path: str | None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# --- the shipped YAMLs ----------------------------------------------------------------------------------------------


OUR_FILES = {"configs/embedded/Sana_Shapes_img256.yaml"}  # the embedded default model's recipe (sana.embedded)


def test_packaged_configs_are_the_official_layout() -> None:
    assert set(packaged_configs()) == EXPECTED_FILES | OUR_FILES


def test_the_embedded_model_config_builds_its_preset() -> None:
    cfg = load_config("configs/embedded/Sana_Shapes_img256.yaml", {"text_encoder.caption_channels": 128})
    graph = dit_config(cfg)
    assert (graph.hidden_size, graph.depth, graph.in_channels, graph.pos_embed, graph.pe_base_size) == (
        192, 8, 32, "sincos", 8,
    )  # fmt: skip
    assert cfg.text_encoder.chi_prompt == [] and cfg.train.use_ema and cfg.data.load_vae_feat


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_every_shipped_yaml_loads_with_the_official_chi(name: str) -> None:
    cfg = load_config(name)
    assert cfg.text_encoder.chi_prompt == list(COMPLEX_HUMAN_INSTRUCTION_LINES)
    assert cfg.text_encoder.y_norm_scale_factor == 0.01
    assert cfg.model.class_dropout_prob == 0.1
    assert cfg.model.resume_from is None and cfg.model.load_from is None  # empty YAML values
    assert cfg.model.mlp_acts == ["silu", "silu", None]


def test_values_that_differ_between_the_official_files() -> None:
    c512, c1024, c4k, c48 = (load_config(p) for p in (CFG_512, CFG_1024, CFG_4K, CFG_48))
    assert (c512.model.model, c512.train.train_batch_size, c512.model.pag_applied_layers) == (
        "SanaMS_600M_P1_D28",
        128,
        [14],  # no pag_applied_layers in this file: the default applies
    )
    assert c1024.model.pag_applied_layers == [8] and c1024.scheduler.flow_shift == 3.0
    assert c1024.train.optimizer.type == "CAMEWrapper"
    assert c1024.train.optimizer.betas == [0.9, 0.999, 0.9999] and c1024.train.optimizer.eps == [1e-30, 1e-16]
    assert load_config("configs/sana_config/1024ms/Sana_600M_img1024.yaml").scheduler.flow_shift == 4.0
    assert (c4k.model.use_pe, c4k.model.pe_interpolation, c4k.scheduler.flow_shift) == (True, 2.0, 6.0)
    assert c4k.model.mixed_precision == "bf16" and c4k.vae.vae_type == "AutoencoderDC"
    assert (c48.model.qk_norm, c48.model.cross_norm, c48.train.optimizer.lr) == (True, True, 2e-5)
    assert c48.scheduler.predict_flow_v is True  # the file writes the old name `predict_v`
    came8 = load_config("configs/sana_config/1024ms/Sana_1600M_img1024_CAME8bit.yaml").train.optimizer
    assert (came8.type, came8.block_size, came8.min_8bit_size) == ("CAME8BitWrapper", 2048, 16384)
    adamw = load_config("configs/sana_config/1024ms/Sana_1600M_img1024_AdamW.yaml").train.optimizer
    assert (adamw.eps, adamw.betas, adamw.weight_decay) == (1e-8, [0.9, 0.999], 0.01)


def test_packaged_fallback_from_another_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(CFG_1024).model.model == "SanaMS_1600M_P1_D20"
    assert load_config("sana_config/512ms/Sana_600M_img512.yaml").model.image_size == 512
    local = tmp_path / "configs" / "sana_config" / "1024ms"
    local.mkdir(parents=True)
    (local / "Sana_1600M_img1024.yaml").write_text("model:\n  image_size: 2048\n")
    assert load_config(CFG_1024).model.image_size == 2048  # an existing local file wins


# --- defaults -------------------------------------------------------------------------------------------------------


def test_defaults_follow_the_official_dataclasses() -> None:
    cfg = load_config()
    assert cfg == SanaConfig()
    assert cfg.model.class_dropout_prob == 0.0
    assert cfg.text_encoder.y_norm_scale_factor == 1.0
    assert cfg.scheduler.flow_shift == 1.0
    assert cfg.model.pag_applied_layers == [14]
    assert cfg.model.resume_from is not None and cfg.model.resume_from.resume_optimizer is True
    assert cfg.train.optimizer.type == "AdamW" and cfg.train.optimizer.weight_decay == 0.03
    assert cfg.train.auto_lr == {"rule": "sqrt"} and cfg.train.lr_schedule_args == {"num_warmup_steps": 500}
    assert (cfg.train.seed, cfg.train.gradient_clip, cfg.data.image_size) == (43, 1.0, 512)


def test_omitted_and_empty_sections_take_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("vae:\nmodel:\n  model: SanaMS_1600M_P1_D20\n")
    cfg = load_config(path)
    assert cfg.vae == SanaConfig().vae and cfg.scheduler.flow_shift == 1.0
    assert cfg.model.model == "SanaMS_1600M_P1_D20" and cfg.model.class_dropout_prob == 0.0


# --- overrides ------------------------------------------------------------------------------------------------------


def test_seed_override_example() -> None:
    cfg = load_config(CFG_512, SEED_OVERRIDES)
    assert cfg.data.data_dir == ["asset/example_data"]
    assert cfg.data.type == "SanaImgDataset"
    assert cfg.model.multi_scale is False
    assert cfg.train.train_batch_size == 32
    assert cfg.model.model == "SanaMS_600M_P1_D28"  # untouched keys keep the file's values


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("--data.data_dir=[a,b]", "data_dir", ["a", "b"]),
        ("--data.data_dir=['a', \"b c\"]", "data_dir", ["a", "b c"]),
        ("--data.data_dir=[]", "data_dir", []),
        ("--model.multi_scale=False", "multi_scale", False),
        ("--model.multi_scale=yes", "multi_scale", True),
        ("--model.multi_scale=0", "multi_scale", False),
        ("--model.load_from=None", "load_from", None),
        ("--model.load_from=hf://org/repo/x.pth", "load_from", "hf://org/repo/x.pth"),
        ("--model.pag_applied_layers=[1, 2]", "pag_applied_layers", [1, 2]),
        ("--model.mlp_acts=[silu,silu,null]", "mlp_acts", ["silu", "silu", None]),
    ],
)
def test_override_values(override: str, key: str, expected: object) -> None:
    section = override[2:].split(".")[0]
    got = getattr(getattr(load_config(CFG_512, [override]), section), key)
    assert got == expected and type(got) is type(expected)


def test_two_token_form_numbers_nested_dicts_and_mappings() -> None:
    cfg = load_config(CFG_1024, ["--train.optimizer.lr", "2e-5", "--train.lr_schedule_args.num_warmup_steps=10"])
    assert cfg.train.optimizer.lr == 2e-5 and cfg.train.optimizer.type == "CAMEWrapper"
    assert cfg.train.lr_schedule_args == {"num_warmup_steps": 10}
    cfg = load_config(CFG_1024, {"scheduler.flow_shift": 4.5, "name": "run1", "model.resume_from.checkpoint": "x"})
    assert cfg.scheduler.flow_shift == 4.5 and cfg.name == "run1"
    assert cfg.model.resume_from is not None and cfg.model.resume_from.checkpoint == "x"
    assert load_config(CFG_48, ["--scheduler.predict_v=false"]).scheduler.predict_flow_v is False
    assert load_config(None, ["--name=123"]).name == "123"


def test_parse_overrides_splits_cli_argv() -> None:
    argv = ["generate", "a cat", "--steps", "20", "--train.seed=3", "--model.multi_scale", "false", "-o", "out"]
    overrides, rest = parse_overrides([*argv, "--work_dir", "runs/x", "--cfg_scale", "4.5"])
    assert overrides == {"train.seed": 3, "model.multi_scale": False, "work_dir": "runs/x"}
    assert rest == ["generate", "a cat", "--steps", "20", "-o", "out", "--cfg_scale", "4.5"]


# --- errors ---------------------------------------------------------------------------------------------------------


def test_unknown_key_in_override_suggests_close_match() -> None:
    msg = _error(CFG_512, ["--model.multi_scal=false"])
    assert "unknown config key 'model.multi_scal'" in msg and "did you mean 'model.multi_scale'" in msg


def test_unknown_key_in_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("scheduler:\n  flow_shfit: 3.0\n")
    msg = _error(str(path))
    assert "unknown config key 'scheduler.flow_shfit'" in msg and "'scheduler.flow_shift'" in msg
    assert "unknown config key 'trian'" in _error(None, ["--trian.seed=1"])
    assert "unknown config key 'train.optimizer.beta'" in _error(None, {"train.optimizer.beta": 1})


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("--model.mixed_precision=fp8", "model.mixed_precision", "'fp16', 'bf16' or 'fp32'"),
        ("--model.image_size=1000", "model.image_size", "256, 512, 1024, 2048 or 4096"),
        ("--model.image_size=640", "model.image_size", "256, 512, 1024, 2048 or 4096"),
        ("--scheduler.flow_shift=0", "scheduler.flow_shift", "greater than 0"),
        ("--scheduler.vis_sampler=ddim", "scheduler.vis_sampler", "'flow_euler'"),
        ("--model.aspect_ratio_type=ASPECT_RATIO_999", "model.aspect_ratio_type", "'ASPECT_RATIO_1024'"),
        ("--train.train_batch_size=0", "train.train_batch_size", "greater than 0"),
        ("--train.num_epochs=-1", "train.num_epochs", "greater than 0"),
        ("--model.class_dropout_prob=1.5", "model.class_dropout_prob", "less than or equal to 1"),
        ("--model.multi_scale=maybe", "model.multi_scale", "valid boolean"),
        ("--model.pag_applied_layers=[x]", "model.pag_applied_layers[0]", "valid integer"),
        ("--train.optimizer.lr=fast", "train.optimizer.lr", "valid number"),
    ],
)
def test_bad_values_name_the_dotted_key_and_allowed_values(override: str, key: str, allowed: str) -> None:
    msg = _error(CFG_512, [override])
    assert f"config key '{key}'" in msg and allowed in msg
    assert ", got " in msg


def test_bad_value_is_quoted_in_the_message() -> None:
    assert "got 'fp8'" in _error(CFG_512, ["--model.mixed_precision=fp8"])
    assert "got 1000" in _error(CFG_512, ["--model.image_size=1000"])


def test_malformed_overrides() -> None:
    assert "no value" in _error(CFG_512, ["--train.seed"])
    assert "malformed override" in _error(CFG_512, ["train.seed=3"])
    assert "malformed override" in _error(CFG_512, ["--model..image_size=3"])
    assert "not a section" in _error(CFG_512, ["--model.image_size.x=3"])
    assert "empty item" in _error(CFG_512, ["--data.data_dir=[a,,b]"])
    with pytest.raises(ConfigError, match="list of strings"):
        load_config(CFG_512, "--train.seed=3")  # type: ignore[arg-type]


def test_missing_file_and_yaml_syntax_error(tmp_path: Path) -> None:
    assert "config file not found: 'configs/nope.yaml'" in _error("configs/nope.yaml")
    assert "config file not found" in _error(str(tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  image_size: 512\n  mlp_acts: [silu, silu\n")
    msg = _error(str(bad))
    assert "YAML syntax error" in msg and str(bad) in msg and re.search(r"line \d+", msg)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    assert "must hold a mapping" in _error(str(listed))


# --- dumping and immutability ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [CFG_512, CFG_4K, CFG_48])
def test_dump_save_load_round_trip(name: str, tmp_path: Path) -> None:
    cfg = load_config(name, SEED_OVERRIDES)
    assert yaml.safe_load(dump_config(cfg))["train"]["train_batch_size"] == 32
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(out) == cfg
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp file left behind


def test_configs_are_frozen() -> None:
    cfg = load_config(CFG_512)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.model.image_size = 1024  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.train = cfg.train  # type: ignore[misc]


# --- pipeline helpers -----------------------------------------------------------------------------------------------


def test_weight_dtype_and_bucket_table() -> None:
    assert weight_dtype(load_config(CFG_1024)) is torch.float16
    assert weight_dtype(load_config(CFG_4K)) is torch.bfloat16
    assert weight_dtype(load_config(None, ["--model.mixed_precision=fp32"])) is torch.float32
    assert bucket_table_name(load_config(CFG_512)) == "512"
    assert bucket_table_name(load_config(CFG_4K)) == "4096"


def test_dit_config_1600m_1024_is_the_preset() -> None:
    got = dit_config(load_config(CFG_1024))
    assert got == dataclasses.replace(get_preset("sana-1600m"), trained_dtype="float16")
    assert got.pos_embed == "none" and got.pag_layers == (8,)


def test_dit_config_high_res_and_sana_1_5() -> None:
    k4 = dit_config(load_config(CFG_4K))
    assert (k4.pos_embed, k4.pe_base_size, k4.pe_interpolation) == ("sincos", 128, 2.0)
    assert k4 == dataclasses.replace(get_preset("sana-1600m-4k"), trained_dtype="bfloat16")
    k2 = dit_config(load_config("configs/sana_config/2048ms/Sana_1600M_img2048_bf16.yaml"))
    assert k2 == dataclasses.replace(get_preset("sana-1600m-2k"), trained_dtype="bfloat16")
    s600 = dit_config(load_config(CFG_512))
    assert s600 == dataclasses.replace(get_preset("sana-600m"), trained_dtype="float16")
    assert dit_config(load_config(CFG_48)) == dataclasses.replace(
        get_preset("sana-1.5-4800m"), trained_dtype="bfloat16"
    )


def test_dit_config_takes_width_and_depth_in_place_of_the_preset() -> None:
    """`model.hidden_size` / `model.depth` / `model.cross_attention_heads` size a model built from scratch (the
    embedded recipe's `dit_width` / `dit_depth`); unset, the preset of `model.model` decides."""
    shapes = ["--model.model=SanaShapes_P1_D8", "--model.pag_applied_layers=[4]", "--text_encoder.caption_channels=128"]
    base = dit_config(load_config(None, shapes))
    assert (base.hidden_size, base.depth, base.cross_attention_heads) == (192, 8, 6)  # the sana-shapes preset's
    small = dit_config(load_config(None, [*shapes, "--model.hidden_size=128", "--model.depth=6",
                                          "--model.cross_attention_heads=4"]))  # fmt: skip
    assert (small.hidden_size, small.depth, small.cross_attention_heads) == (128, 6, 4)
    assert small == dataclasses.replace(base, hidden_size=128, depth=6, cross_attention_heads=4)
    with pytest.raises(
        ConfigError, match=r"'model\.hidden_size'.*width 100 must be a multiple of model\.linear_head_dim"
    ):
        dit_config(load_config(None, [*shapes, "--model.hidden_size=100"]))
    with pytest.raises(ConfigError, match=r"width 128 .*cross-attention heads \(6\)"):
        dit_config(load_config(None, [*shapes, "--model.hidden_size=128"]))  # the preset's 6 heads: set 4
    # without a width, model.cross_attention_heads stays what it was: the head count of a `load_from` checkpoint,
    # which need not divide the preset's width
    assert dit_config(load_config(None, [*shapes, "--model.cross_attention_heads=5"])) == base


def test_dit_config_rejects_what_linear_dit_cannot_build() -> None:
    with pytest.raises(ConfigError, match="unknown model 'SanaMS_9B'"):
        dit_config(load_config(None, ["--model.model=SanaMS_9B"]))
    with pytest.raises(ConfigError, match=r"model\.attn_type"):
        dit_config(load_config(None, ["--model.attn_type=flash"]))


def test_name_tables() -> None:
    assert TEXT_ENCODER_IDS["gemma-2-2b-it"] == "Efficient-Large-Model/gemma-2-2b-it"
    assert TEXT_ENCODER_IDS["T5"] == "DeepFloyd/t5-v1_1-xxl" and TEXT_ENCODER_IDS["T5-xl"] == "google/t5-v1_1-xl"
    for preset in MODEL_PRESETS.values():
        get_preset(preset)  # every target exists in linear_dit
