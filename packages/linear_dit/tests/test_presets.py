from __future__ import annotations

import dataclasses

import pytest
import torch

import linear_dit
from linear_dit import PRESETS, LinearDiT, LinearDiTConfig, get_preset


def _params(config: LinearDiTConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in LinearDiT(config).parameters())


@pytest.mark.parametrize(
    ("name", "count"),
    [("sana-600m", 591_747_872), ("sana-1600m", 1_604_462_752), ("sana-1600m-4k", 1_604_462_752)],
)
def test_parameter_counts_on_meta(name: str, count: int) -> None:
    assert _params(get_preset(name)) == count  # spec §3.1, buffers (null caption) excluded


def test_4800m_is_60_blocks_with_qk_norms() -> None:
    c = get_preset("sana-1.5-4800m")
    assert (c.depth, c.hidden_size, c.qk_norm, c.cross_norm) == (60, 2240, True, True)
    assert _params(c) == 4_721_825_952  # 60 blocks of 15.5C²+66C plus 4C of qk-norm weights, plus the embedders


def test_pe_variants_differ_only_in_positional_embedding() -> None:
    for base in ("sana-600m", "sana-1600m"):
        for suffix, side, interp in (("-2k", 64, 1.0), ("-4k", 128, 2.0)):
            c = PRESETS[base + suffix]
            assert (c.pos_embed, c.pe_base_size, c.pe_interpolation) == ("sincos", side, interp)
            assert dataclasses.replace(c, pos_embed="none", pe_base_size=32, pe_interpolation=1.0) == PRESETS[base]


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="sana-600m"):
        get_preset("sana-900m")


def test_config_rejects_typos_and_bad_values() -> None:
    with pytest.raises(KeyError, match="hiden_size"):
        LinearDiTConfig.from_dict({"hiden_size": 64})
    with pytest.raises(ValueError, match="multiple of linear_head_dim"):
        LinearDiTConfig(hidden_size=100)
    with pytest.raises(ValueError, match="pos_embed"):
        LinearDiTConfig(pos_embed="rope")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        LinearDiTConfig().depth = 3  # type: ignore[misc]


def test_config_round_trips_through_dict() -> None:
    c = PRESETS["sana-1600m-4k"]
    assert LinearDiTConfig.from_dict(c.to_dict()) == c


def test_public_api_is_pinned() -> None:
    assert sorted(linear_dit.__all__) == sorted(
        [
            "LinearDiT",
            "LinearDiTConfig",
            "PAG",
            "PRESETS",
            "PrecisionWarning",
            "get_preset",
            "load_linear_dit",
            "relu_linear_attention",
            "save_linear_dit",
        ]
    )
