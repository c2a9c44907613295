"""Key maps between our parameter names and the efficientvit (mit-han-lab) and diffusers `AutoencoderDC` formats.

The map is generated from the config, one row per leaf module, so conversion is exact and strict in both
directions: a missing or unexpected key raises with the offending names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dcae.config import DCAEConfig

CONV = ("weight", "bias")
CONV_NO_BIAS = ("weight",)
NORM_PARAMS = {
    "rms": ("weight", "bias"),
    "batch": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
}


@dataclass(frozen=True)
class Leaf:
    """One leaf module under its three names. `diffusers_kind` marks the two layout changes diffusers makes."""

    ours: str
    efficientvit: str
    diffusers: str
    params: tuple[str, ...]
    diffusers_kind: str = "same"  # "same" | "qkv" (one 1×1 conv → to_q/to_k/to_v linears) | "linear" (1×1 → linear)


def _res_block(ours: str, evit: str, diff: str, norm: str) -> list[Leaf]:
    return [
        Leaf(f"{ours}.conv1", f"{evit}.main.conv1.conv", f"{diff}.conv1", CONV),
        Leaf(f"{ours}.conv2", f"{evit}.main.conv2.conv", f"{diff}.conv2", CONV_NO_BIAS),
        Leaf(f"{ours}.norm", f"{evit}.main.conv2.norm", f"{diff}.norm", NORM_PARAMS[norm]),
    ]


def _evit_block(ours: str, evit: str, diff: str, scales: tuple[int, ...], norm: str) -> list[Leaf]:
    attn, mlp = f"{evit}.context_module.main", f"{evit}.local_module.main"
    leaves = [Leaf(f"{ours}.attn.qkv", f"{attn}.qkv.conv", f"{diff}.attn", CONV_NO_BIAS, "qkv")]
    for s in range(len(scales)):
        agg, dagg = f"{ours}.attn.aggreg.{s}", f"{diff}.attn.to_qkv_multiscale.{s}"
        leaves.append(Leaf(f"{agg}.spatial", f"{attn}.aggreg.{s}.0", f"{dagg}.proj_in", CONV_NO_BIAS))
        leaves.append(Leaf(f"{agg}.grouped", f"{attn}.aggreg.{s}.1", f"{dagg}.proj_out", CONV_NO_BIAS))
    return [
        *leaves,
        Leaf(f"{ours}.attn.proj", f"{attn}.proj.conv", f"{diff}.attn.to_out", CONV_NO_BIAS, "linear"),
        Leaf(f"{ours}.attn.norm", f"{attn}.proj.norm", f"{diff}.attn.norm_out", NORM_PARAMS[norm]),
        Leaf(f"{ours}.mlp.inverted", f"{mlp}.inverted_conv.conv", f"{diff}.conv_out.conv_inverted", CONV),
        Leaf(f"{ours}.mlp.depthwise", f"{mlp}.depth_conv.conv", f"{diff}.conv_out.conv_depth", CONV),
        Leaf(f"{ours}.mlp.point", f"{mlp}.point_conv.conv", f"{diff}.conv_out.conv_point", CONV_NO_BIAS),
        Leaf(f"{ours}.mlp.norm", f"{mlp}.point_conv.norm", f"{diff}.conv_out.norm", NORM_PARAMS["rms"]),
    ]


def _block(kind: str, ours: str, evit: str, diff: str, scales: tuple[int, ...], norm: str) -> list[Leaf]:
    if kind == "res":
        return _res_block(ours, evit, diff, norm)
    return _evit_block(ours, evit, diff, scales, norm)


def _encoder_leaves(cfg: DCAEConfig) -> list[Leaf]:
    # efficientvit wraps a pixel-(un)shuffle conv in one more `.conv` than a plain ConvLayer.
    shuffle_conv = ".conv.conv" if cfg.downsample == "pixel_unshuffle" else ".conv"
    if cfg.encoder_depths[0] > 0:
        leaves = [Leaf("encoder.project_in", "encoder.project_in.conv", "encoder.conv_in", CONV)]
    else:
        leaves = [Leaf("encoder.project_in.conv", f"encoder.project_in{shuffle_conv}", "encoder.conv_in.conv", CONV)]
    n = len(cfg.widths)
    for i, depth in enumerate(cfg.encoder_depths):
        for j in range(depth):
            ours, evit = f"encoder.stages.{i}.blocks.{j}", f"encoder.stages.{i}.op_list.{j}"
            diff = f"encoder.down_blocks.{i}.{j}"
            leaves += _block(cfg.encoder_blocks[i], ours, evit, diff, cfg.encoder_scales[i], "rms")
        if depth > 0 and i < n - 1:
            evit = f"encoder.stages.{i}.op_list.{depth}.main{shuffle_conv}"
            leaves.append(Leaf(f"encoder.stages.{i}.down.conv", evit, f"encoder.down_blocks.{i}.{depth}.conv", CONV))
    leaves.append(Leaf("encoder.project_out", "encoder.project_out.main.op_list.0.conv", "encoder.conv_out", CONV))
    return leaves


def _decoder_leaves(cfg: DCAEConfig) -> list[Leaf]:
    leaves = [Leaf("decoder.project_in", "decoder.project_in.main.conv", "decoder.conv_in", CONV)]
    n = len(cfg.widths)
    for i, depth in enumerate(cfg.decoder_depths):
        has_up = depth > 0 and i < n - 1
        if has_up:
            leaves.append(
                Leaf(f"decoder.stages.{i}.up.conv", f"decoder.stages.{i}.op_list.0.main.conv.conv",
                     f"decoder.up_blocks.{i}.0.conv", CONV)
            )  # fmt: skip
        for j in range(depth):
            op = j + has_up
            ours, evit = f"decoder.stages.{i}.blocks.{j}", f"decoder.stages.{i}.op_list.{op}"
            diff = f"decoder.up_blocks.{i}.{op}"
            leaves += _block(cfg.decoder_blocks[i], ours, evit, diff, cfg.decoder_scales[i], cfg.decoder_norms[i])
    leaves.append(Leaf("decoder.norm_out", "decoder.project_out.op_list.0", "decoder.norm_out", NORM_PARAMS["rms"]))
    if cfg.decoder_depths[0] > 0:
        leaves.append(Leaf("decoder.project_out", "decoder.project_out.op_list.2.conv", "decoder.conv_out", CONV))
    else:
        leaves.append(
            Leaf("decoder.project_out.conv", "decoder.project_out.op_list.2.conv.conv", "decoder.conv_out.conv", CONV)
        )
    return leaves


def leaves(cfg: DCAEConfig) -> list[Leaf]:
    """Every parameterised leaf module of the graph, under its three names."""
    return _encoder_leaves(cfg) + _decoder_leaves(cfg)


# --- state-dict conversion ---


def _check_keys(given: set[str], expected: set[str], source: str) -> None:
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise KeyError(
            f"{source} state dict does not match the config: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}"
        )


def _ours_to_diffusers_leaf(leaf: Leaf, sd: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    if leaf.diffusers_kind == "qkv":
        q, k, v = sd[f"{leaf.ours}.weight"].chunk(3, dim=0)  # each (C, C, 1, 1)
        for name, w in zip(("to_q", "to_k", "to_v"), (q, k, v)):
            out[f"{leaf.diffusers}.{name}.weight"] = w.flatten(1).clone()  # (C, C) linear
    elif leaf.diffusers_kind == "linear":
        out[f"{leaf.diffusers}.weight"] = sd[f"{leaf.ours}.weight"].flatten(1)  # (C_out, C_in) linear
    else:
        for p in leaf.params:
            out[f"{leaf.diffusers}.{p}"] = sd[f"{leaf.ours}.{p}"]


def _diffusers_to_ours_leaf(leaf: Leaf, sd: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    if leaf.diffusers_kind == "qkv":
        parts = [sd[f"{leaf.diffusers}.{name}.weight"] for name in ("to_q", "to_k", "to_v")]
        out[f"{leaf.ours}.weight"] = torch.cat(parts, dim=0)[:, :, None, None]  # (3C, C, 1, 1)
    elif leaf.diffusers_kind == "linear":
        out[f"{leaf.ours}.weight"] = sd[f"{leaf.diffusers}.weight"][:, :, None, None]  # (C_out, C_in, 1, 1)
    else:
        for p in leaf.params:
            out[f"{leaf.ours}.{p}"] = sd[f"{leaf.diffusers}.{p}"]


def _diffusers_keys(leaf: Leaf) -> list[str]:
    if leaf.diffusers_kind == "qkv":
        return [f"{leaf.diffusers}.{name}.weight" for name in ("to_q", "to_k", "to_v")]
    return [f"{leaf.diffusers}.{p}" for p in leaf.params]


def to_format(state_dict: dict[str, torch.Tensor], cfg: DCAEConfig, fmt: str) -> dict[str, torch.Tensor]:
    """Our state dict → `fmt` ("dcae", "efficientvit" or "diffusers"); strict."""
    table = leaves(cfg)
    _check_keys(set(state_dict), {f"{leaf.ours}.{p}" for leaf in table for p in leaf.params}, "dcae")
    out: dict[str, torch.Tensor] = {}
    for leaf in table:
        if fmt == "diffusers":
            _ours_to_diffusers_leaf(leaf, state_dict, out)
        else:
            prefix = _prefix(leaf, fmt)
            for p in leaf.params:
                out[f"{prefix}.{p}"] = state_dict[f"{leaf.ours}.{p}"]
    return out


def from_format(state_dict: dict[str, torch.Tensor], cfg: DCAEConfig, fmt: str) -> dict[str, torch.Tensor]:
    """A `fmt` state dict ("dcae", "efficientvit" or "diffusers") → ours; strict."""
    table = leaves(cfg)
    if fmt == "diffusers":
        _check_keys(set(state_dict), {k for leaf in table for k in _diffusers_keys(leaf)}, fmt)
    else:
        _check_keys(set(state_dict), {f"{_prefix(leaf, fmt)}.{p}" for leaf in table for p in leaf.params}, fmt)
    out: dict[str, torch.Tensor] = {}
    for leaf in table:
        if fmt == "diffusers":
            _diffusers_to_ours_leaf(leaf, state_dict, out)
        else:
            prefix = _prefix(leaf, fmt)
            for p in leaf.params:
                out[f"{leaf.ours}.{p}"] = state_dict[f"{prefix}.{p}"]
    return out


def _prefix(leaf: Leaf, fmt: str) -> str:
    prefixes = {"dcae": leaf.ours, "efficientvit": leaf.efficientvit}
    if fmt not in prefixes:
        raise KeyError(f"unknown checkpoint format {fmt!r}; valid formats: ['dcae', 'diffusers', 'efficientvit']")
    return prefixes[fmt]


def detect_format(keys: set[str]) -> str:
    """Which key convention a state dict uses: "dcae", "efficientvit" or "diffusers"."""
    if any(k.startswith(("encoder.stages.", "decoder.stages.")) and ".op_list." in k for k in keys):
        return "efficientvit"
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.", "encoder.conv_in")) for k in keys):
        return "diffusers"
    if any(k.startswith(("encoder.stages.", "decoder.stages.")) and ".blocks." in k for k in keys):
        return "dcae"
    raise ValueError(f"unrecognised DC-AE checkpoint keys (first few: {sorted(keys)[:5]})")


# --- diffusers config ---

_DIFFUSERS_BLOCKS = {"res": "ResBlock", "evit": "EfficientViTBlock"}
_DIFFUSERS_NORMS = {"rms": "rms_norm", "batch": "batch_norm"}
_DIFFUSERS_DOWN = {"conv": "conv", "pixel_unshuffle": "pixel_unshuffle"}
_DIFFUSERS_UP = {"interpolate": "interpolate", "pixel_shuffle": "pixel_shuffle"}


def config_to_diffusers(cfg: DCAEConfig) -> dict[str, Any]:
    """Our config → the `AutoencoderDC` constructor arguments (the `config.json` of a diffusers folder)."""
    return {
        "in_channels": cfg.in_channels,
        "latent_channels": cfg.latent_channels,
        "attention_head_dim": cfg.head_dim,
        "encoder_block_types": [_DIFFUSERS_BLOCKS[b] for b in cfg.encoder_blocks],
        "decoder_block_types": [_DIFFUSERS_BLOCKS[b] for b in cfg.decoder_blocks],
        "encoder_block_out_channels": list(cfg.widths),
        "decoder_block_out_channels": list(cfg.widths),
        "encoder_layers_per_block": list(cfg.encoder_depths),
        "decoder_layers_per_block": list(cfg.decoder_depths),
        "encoder_qkv_multiscales": [list(s) for s in cfg.encoder_scales],
        "decoder_qkv_multiscales": [list(s) for s in cfg.decoder_scales],
        "upsample_block_type": _DIFFUSERS_UP[cfg.upsample],
        "downsample_block_type": _DIFFUSERS_DOWN[cfg.downsample],
        "decoder_norm_types": [_DIFFUSERS_NORMS[x] for x in cfg.decoder_norms],
        "decoder_act_fns": list(cfg.decoder_acts),
        "encoder_out_shortcut": True,
        "decoder_in_shortcut": True,
        "decoder_conv_act_fn": "relu",
        "scaling_factor": cfg.scaling_factor,
    }


def _per_stage(value: Any, n: int) -> tuple:
    return tuple(value) if isinstance(value, list | tuple) else (value,) * n


def config_from_diffusers(data: dict[str, Any], name: str = "custom") -> DCAEConfig:
    """An `AutoencoderDC` `config.json` → our config (its defaults are the diffusers class defaults)."""
    d = {k: v for k, v in data.items() if not k.startswith("_")}
    widths = tuple(d.get("encoder_block_out_channels", (128, 256, 512, 512, 1024, 1024)))
    n = len(widths)
    if tuple(d.get("decoder_block_out_channels", widths)) != widths:
        raise ValueError("encoder and decoder block_out_channels differ; dcae supports one width list")
    for flag, default in [("encoder_out_shortcut", True), ("decoder_in_shortcut", True)]:
        if d.get(flag, default) is not True:
            raise ValueError(f"{flag}=False is not supported (no released DC-AE uses it)")
    if d.get("decoder_conv_act_fn", "relu") != "relu":
        raise ValueError("only decoder_conv_act_fn='relu' is supported")
    inverse = {v: k for k, v in _DIFFUSERS_BLOCKS.items()} | {"EViTS5_GLU": "evit", "EViT_GLU": "evit"}
    norms = {v: k for k, v in _DIFFUSERS_NORMS.items()}
    default_scales = ((), (), (), (5,), (5,), (5,))
    return DCAEConfig(
        widths=widths,
        encoder_depths=tuple(d.get("encoder_layers_per_block", (2, 2, 2, 3, 3, 3))),
        decoder_depths=tuple(d.get("decoder_layers_per_block", (3, 3, 3, 3, 3, 3))),
        encoder_blocks=tuple(inverse[b] for b in _per_stage(d.get("encoder_block_types", "ResBlock"), n)),
        decoder_blocks=tuple(inverse[b] for b in _per_stage(d.get("decoder_block_types", "ResBlock"), n)),
        encoder_scales=tuple(tuple(s) for s in d.get("encoder_qkv_multiscales", default_scales)),
        decoder_scales=tuple(tuple(s) for s in d.get("decoder_qkv_multiscales", default_scales)),
        decoder_norms=tuple(norms[x] for x in _per_stage(d.get("decoder_norm_types", "rms_norm"), n)),
        decoder_acts=_per_stage(d.get("decoder_act_fns", "silu"), n),
        downsample={v: k for k, v in _DIFFUSERS_DOWN.items()}[d.get("downsample_block_type", "pixel_unshuffle")],
        upsample={v: k for k, v in _DIFFUSERS_UP.items()}[d.get("upsample_block_type", "pixel_shuffle")],
        latent_channels=d.get("latent_channels", 32),
        in_channels=d.get("in_channels", 3),
        head_dim=d.get("attention_head_dim", 32),
        scaling_factor=float(d.get("scaling_factor", 1.0)),
        name=name,
    )
