"""Key maps and config translation between our state dict and the upstream formats.

Our parameter names are the official Sana `.pth` names (spec §3.12), so "sana" needs only unwrapping and the
`pos_embed` buffer; diffusers' `SanaTransformer2DModel` renames everything and splits the fused projections
(`attn.qkv` → `to_q/to_k/to_v`, `cross_attn.kv_linear` → `to_k/to_v`).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor

from linear_dit.config import LinearDiTConfig
from linear_dit.embeddings import sincos_pos_embed
from linear_dit.presets import PRESETS

StateDict = dict[str, Tensor]
DIFFUSERS_CLASS = "SanaTransformer2DModel"
NULL_CAPTION_KEY = "y_embedder.y_embedding"  # a buffer diffusers drops; it is the encoding of "" (spec §3.6)

_TOP = {  # ours -> diffusers, non-block parameters
    "x_embedder.proj.weight": "patch_embed.proj.weight",
    "x_embedder.proj.bias": "patch_embed.proj.bias",
    "t_embedder.mlp.0.weight": "time_embed.emb.timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "time_embed.emb.timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "time_embed.emb.timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "time_embed.emb.timestep_embedder.linear_2.bias",
    "t_block.1.weight": "time_embed.linear.weight",
    "t_block.1.bias": "time_embed.linear.bias",
    "y_embedder.y_proj.fc1.weight": "caption_projection.linear_1.weight",
    "y_embedder.y_proj.fc1.bias": "caption_projection.linear_1.bias",
    "y_embedder.y_proj.fc2.weight": "caption_projection.linear_2.weight",
    "y_embedder.y_proj.fc2.bias": "caption_projection.linear_2.bias",
    "attention_y_norm.weight": "caption_norm.weight",
    "final_layer.linear.weight": "proj_out.weight",
    "final_layer.linear.bias": "proj_out.bias",
    "final_layer.scale_shift_table": "scale_shift_table",
}
_BLOCK = {  # ours -> diffusers, inside `blocks.{i}.` / `transformer_blocks.{i}.`
    "scale_shift_table": "scale_shift_table",
    "attn.proj.weight": "attn1.to_out.0.weight",
    "attn.proj.bias": "attn1.to_out.0.bias",
    "attn.q_norm.weight": "attn1.norm_q.weight",
    "attn.k_norm.weight": "attn1.norm_k.weight",
    "cross_attn.q_linear.weight": "attn2.to_q.weight",
    "cross_attn.q_linear.bias": "attn2.to_q.bias",
    "cross_attn.proj.weight": "attn2.to_out.0.weight",
    "cross_attn.proj.bias": "attn2.to_out.0.bias",
    "cross_attn.q_norm.weight": "attn2.norm_q.weight",
    "cross_attn.k_norm.weight": "attn2.norm_k.weight",
    "mlp.inverted_conv.conv.weight": "ff.conv_inverted.weight",
    "mlp.inverted_conv.conv.bias": "ff.conv_inverted.bias",
    "mlp.depth_conv.conv.weight": "ff.conv_depth.weight",
    "mlp.depth_conv.conv.bias": "ff.conv_depth.bias",
    "mlp.point_conv.conv.weight": "ff.conv_point.weight",
}
_FUSED = {  # ours -> the diffusers pieces it is split into (concatenated along dim 0)
    "attn.qkv.weight": ("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight"),
    "cross_attn.kv_linear.weight": ("attn2.to_k.weight", "attn2.to_v.weight"),
    "cross_attn.kv_linear.bias": ("attn2.to_k.bias", "attn2.to_v.bias"),
}
_BLOCK_KEY = re.compile(r"^(blocks|transformer_blocks)\.(\d+)\.(.+)$")


def to_diffusers_state_dict(state: StateDict) -> StateDict:
    """Our (= official Sana) keys → diffusers `SanaTransformer2DModel` keys. The null caption is dropped."""
    out: StateDict = {}
    unknown = []
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if key == NULL_CAPTION_KEY:
            continue
        if key in _TOP:
            out[_TOP[key]] = value
        elif match and match[1] == "blocks" and match[3] in _BLOCK:
            out[f"transformer_blocks.{match[2]}.{_BLOCK[match[3]]}"] = value
        elif match and match[1] == "blocks" and match[3] in _FUSED:
            parts = _FUSED[match[3]]
            for name, piece in zip(parts, value.chunk(len(parts), dim=0)):
                out[f"transformer_blocks.{match[2]}.{name}"] = piece.contiguous()
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"keys with no diffusers counterpart: {sorted(unknown)}")
    return out


def from_diffusers_state_dict(state: StateDict) -> StateDict:
    """diffusers `SanaTransformer2DModel` keys → ours. diffusers stores no null caption, so none is returned."""
    top = {v: k for k, v in _TOP.items()}
    block = {v: k for k, v in _BLOCK.items()}
    piece_of = {p: (fused, i) for fused, parts in _FUSED.items() for i, p in enumerate(parts)}
    out: StateDict = {}
    pieces: dict[tuple[str, str], dict[int, Tensor]] = {}
    unknown = []
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if key in top:
            out[top[key]] = value
        elif match and match[1] == "transformer_blocks" and match[3] in block:
            out[f"blocks.{match[2]}.{block[match[3]]}"] = value
        elif match and match[1] == "transformer_blocks" and match[3] in piece_of:
            fused, i = piece_of[match[3]]
            pieces.setdefault((match[2], fused), {})[i] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"unexpected keys in the diffusers state dict: {sorted(unknown)}")
    for (index, fused), parts in pieces.items():
        missing = [_FUSED[fused][i] for i in range(len(_FUSED[fused])) if i not in parts]
        if missing:
            raise KeyError(f"block {index}: missing {missing} to rebuild {fused}")
        out[f"blocks.{index}.{fused}"] = torch.cat([parts[i] for i in range(len(parts))], dim=0)
    return out


def unwrap_sana_checkpoint(obj: Any) -> tuple[StateDict, Tensor | None]:
    """An official Sana `.pth` payload → (our state dict, the stored `pos_embed` buffer or None).

    Accepts the training-checkpoint dict (`state_dict`, plus optimizer/scheduler entries that are ignored) or
    a bare state dict; strips DDP's `module.` and ComfyUI's `model.diffusion_model.` prefixes.
    """
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError("not a Sana checkpoint: expected a dict of tensors, or a dict with a 'state_dict' entry")
    clean = {}
    for key, value in state.items():
        for prefix in ("module.", "model.diffusion_model."):
            key = key.removeprefix(prefix)
        clean[key] = value
    return clean, clean.pop("pos_embed", None)


def to_sana_checkpoint(state: StateDict, config: LinearDiTConfig) -> dict[str, StateDict]:
    """Our state dict → the official `.pth` payload, with the `pos_embed` buffer Sana registers (zeros for NoPE)."""
    side = config.pe_base_size
    if config.pos_embed == "sincos":
        pe = sincos_pos_embed(config.hidden_size, side, side, side, config.pe_interpolation)[None].clone()
    else:
        pe = torch.zeros(1, side * side, config.hidden_size)
    return {"state_dict": {**state, "pos_embed": pe.to(next(iter(state.values())).dtype)}}


def config_to_diffusers(config: LinearDiTConfig) -> dict[str, Any]:
    """Our config → `SanaTransformer2DModel` config kwargs (diffusers cannot express every config)."""
    c = config
    if c.qk_norm != c.cross_norm:
        raise ValueError("diffusers applies qk-norm to both attentions: qk_norm and cross_norm must agree")
    return {
        "in_channels": c.in_channels,
        "out_channels": c.in_channels,
        "num_attention_heads": c.linear_heads,
        "attention_head_dim": c.linear_head_dim,
        "num_layers": c.depth,
        "num_cross_attention_heads": c.cross_attention_heads,
        "cross_attention_head_dim": c.hidden_size // c.cross_attention_heads,
        "cross_attention_dim": c.hidden_size,
        "caption_channels": c.caption_channels,
        "mlp_ratio": c.mlp_ratio,
        "dropout": 0.0,
        "attention_bias": False,
        "sample_size": c.pe_base_size * c.patch_size,
        "patch_size": c.patch_size,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "interpolation_scale": c.pe_interpolation if c.pos_embed == "sincos" else None,
        "guidance_embeds": False,
        "qk_norm": "rms_norm_across_heads" if c.qk_norm else None,
    }


_DIFFUSERS_FIXED = {  # settings we implement; anything else is refused rather than silently mis-loaded
    "dropout": 0.0,
    "attention_bias": False,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "guidance_embeds": False,
    "timestep_scale": 1.0,
}


def config_from_diffusers(cfg: dict[str, Any], **overrides: Any) -> LinearDiTConfig:
    """`SanaTransformer2DModel` config.json → our config. Sana-Sprint (guidance embeds, timestep scale) is refused."""
    unsupported = {k: cfg[k] for k, v in _DIFFUSERS_FIXED.items() if k in cfg and cfg[k] != v}
    if unsupported:
        raise ValueError(f"unsupported SanaTransformer2DModel settings {unsupported}; supported: {_DIFFUSERS_FIXED}")
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    cross = cfg["num_cross_attention_heads"]
    if cfg.get("out_channels") not in (None, cfg["in_channels"]) or cfg["cross_attention_dim"] != dim:
        raise ValueError("out_channels must equal in_channels and cross_attention_dim the model width")
    if cfg["cross_attention_head_dim"] * cross != dim or cfg.get("qk_norm") not in (None, "rms_norm_across_heads"):
        raise ValueError(f"unsupported cross-attention heads or qk_norm in {cfg}")
    patch, interp = cfg["patch_size"], cfg.get("interpolation_scale")
    fields = dict(
        in_channels=cfg["in_channels"],
        patch_size=patch,
        hidden_size=dim,
        depth=cfg["num_layers"],
        linear_head_dim=cfg["attention_head_dim"],
        cross_attention_heads=cross,
        mlp_ratio=cfg["mlp_ratio"],
        caption_channels=cfg["caption_channels"],
        pos_embed="none" if interp is None else "sincos",
        pe_base_size=cfg["sample_size"] // patch,
        pe_interpolation=1.0 if interp is None else float(interp),
        qk_norm=cfg.get("qk_norm") is not None,
        cross_norm=cfg.get("qk_norm") is not None,
        pag_layers=_preset_like(dim, cfg["num_layers"]).get("pag_layers", (14,)),
    )
    return LinearDiTConfig(**{**fields, **overrides})


def config_from_sana_state(state: StateDict, pos_table: Tensor | None, /, **overrides: Any) -> LinearDiTConfig:
    """Infer the graph of an official `.pth` from its shapes (the file carries no config).

    The cross-attention head count is not visible in any shape: it comes from the Sana preset of the same width
    (16 for 1152, 20 for 2240) or must be given as an override. The positional embedding is read off the
    stored `pos_embed` buffer (zeros: NoPE; otherwise the sin-cos table whose interpolation reproduces it).
    """
    dim, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    depth = 1 + max(int(m[2]) for k in state if (m := _BLOCK_KEY.match(k)))
    hidden = state["blocks.0.mlp.point_conv.conv.weight"].shape[1]
    fields: dict[str, Any] = dict(
        in_channels=in_channels,
        patch_size=patch,
        hidden_size=dim,
        depth=depth,
        mlp_ratio=hidden / dim,
        caption_channels=state["y_embedder.y_proj.fc1.weight"].shape[1],
        qk_norm="blocks.0.attn.q_norm.weight" in state,
        cross_norm="blocks.0.cross_attn.q_norm.weight" in state,
        **_pe_fields(pos_table, dim),
        **_preset_like(dim, depth),
    )
    if NULL_CAPTION_KEY in state:
        fields["text_length"] = state[NULL_CAPTION_KEY].shape[0]
    fields.update(overrides)  # e.g. the PE of a YAML: the buffer is dropped from some official checkpoints
    if "cross_attention_heads" not in fields:
        raise ValueError(f"cannot tell the cross-attention heads of a width-{dim} model; pass a config")
    return LinearDiTConfig(**fields)


def _preset_like(dim: int, depth: int) -> dict[str, Any]:
    """Settings a state dict cannot show, taken from a Sana preset of the same width (and depth if possible)."""
    same_width = [c for c in PRESETS.values() if c.hidden_size == dim]
    if not same_width:
        return {}
    best = next((c for c in same_width if c.depth == depth), same_width[0])
    return {"cross_attention_heads": best.cross_attention_heads, "pag_layers": best.pag_layers}


def _pe_fields(pos_embed: Tensor | None, dim: int) -> dict[str, Any]:
    if pos_embed is None or not bool(pos_embed.any()):
        return {"pos_embed": "none"}
    n = pos_embed.shape[-2]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"pos_embed with {n} positions is not a square grid; pass a config")
    stored = pos_embed.reshape(n, dim).float()
    for interpolation in (1.0, 2.0, 0.5, 4.0, 3.0, 1.5):
        if torch.allclose(sincos_pos_embed(dim, side, side, side, interpolation), stored, atol=2e-2):
            return {"pos_embed": "sincos", "pe_base_size": side, "pe_interpolation": interpolation}
    raise ValueError("the stored pos_embed matches no sin-cos table; pass a config")
