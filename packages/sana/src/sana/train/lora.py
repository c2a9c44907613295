"""LoRA (through peft) on the Linear DiT's attention projections: add, save diffusers-loadable, load, merge.

    model = add_lora(LinearDiT.from_pretrained(path), rank=4)   # in place; only LoRA parameters train
    v = model(x, t, text, mask, pag=PAG(rows=...))              # still a LinearDiT: config, pag_layers, PAG work
    save_lora(model, "out/lora")                                 # out/lora/pytorch_lora_weights.safetensors
    diffusers.SanaPipeline.from_pretrained(...).load_lora_weights("out/lora")   # reproduces our output
    load_lora(LinearDiT.from_pretrained(path), "out/lora")       # our loader (also of diffusers-trained LoRAs)
    merged = merge_lora(model)                                   # a plain LinearDiT, no peft modules left

The adapters are injected with `peft.inject_adapter_in_model`, not wrapped in a `PeftModel`: the model stays the
same `LinearDiT` object (its `forward(x, t, text, text_mask, pag=...)`, `config`, `pag_layers`, `dtype` and
`grad_checkpointing` unchanged), and only the targeted `nn.Linear`s become peft `lora.Linear` layers.

Targets (module names inside `blocks.{i}.`, as in the official checkpoint): `attn.qkv`, `attn.proj`,
`cross_attn.q_linear`, `cross_attn.kv_linear`, `cross_attn.proj` (all by default). The Mix-FFN 1×1 convolutions
are not targets: `MixFFN.forward` applies their weights with `F.linear` rather than calling the conv modules, so a
peft wrapper on them would be silently bypassed.

File format (`save_lora`): diffusers' Sana LoRA layout, one safetensors file with keys
`transformer.transformer_blocks.{i}.{attn1.to_q|attn1.to_k|attn1.to_v|attn1.to_out.0|attn2.to_q|attn2.to_k|
attn2.to_v|attn2.to_out.0}.lora_{A|B}.weight`, A (r, in) and B (out, r). Our fused projections are split exactly:
a LoRA on the fused `attn.qkv` (A (r, D), B (3D, r)) becomes three LoRAs that share A, with B cut into three
(D, r) row blocks; `cross_attn.kv_linear` likewise into `attn2.to_k`/`attn2.to_v`. The file has no
`lora_adapter_metadata`, so diffusers takes alpha = rank (scale 1): the LoRA scale alpha/rank is baked into B.
`load_lora` re-fuses the pieces (shared A: rank r; different A's, as in diffusers-trained LoRAs, or missing pieces:
the A's stacked and B block-diagonal, exact) and loads with scale 1, so a loaded adapter's B carries the scale.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from linear_dit import LinearDiT

__all__ = (
    "DEFAULT_RANK",
    "DEFAULT_TARGETS",
    "LORA_WEIGHT_NAME",
    "add_lora",
    "has_lora",
    "load_lora",
    "lora_state_dict",
    "merge_lora",
    "save_lora",
)

DEFAULT_RANK = 4  # = the default of the config's `train.lora_rank`
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # the file name diffusers' `load_lora_weights` looks for
ADAPTER = "default"  # the one peft adapter name we use
DIFFUSERS_PREFIX = "transformer."  # diffusers' SanaLoraLoaderMixin loads only keys under its transformer
OURS_METADATA_KEY = "sana_lora"  # our own safetensors metadata entry (diffusers reads only `lora_adapter_metadata`)
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LoraConfig kwargs, written by its own savers

_PIECES = {  # our target (inside blocks.{i}.) -> the diffusers Linears it is split into, in row order
    "attn.qkv": ("attn1.to_q", "attn1.to_k", "attn1.to_v"),
    "attn.proj": ("attn1.to_out.0",),
    "cross_attn.q_linear": ("attn2.to_q",),
    "cross_attn.kv_linear": ("attn2.to_k", "attn2.to_v"),
    "cross_attn.proj": ("attn2.to_out.0",),
}
DEFAULT_TARGETS: tuple[str, ...] = tuple(_PIECES)
_PIECE_OF = {piece: (target, j) for target, pieces in _PIECES.items() for j, piece in enumerate(pieces)}
_LORA_KEY = re.compile(r"^transformer_blocks\.(\d+)\.(.+)\.lora_([AB])\.weight$")
_MODULE_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")

Pair = tuple[Tensor, Tensor]  # (A (r, in), B (out, r))


# --- adding and inspecting adapters ---------------------------------------------------------------------------------


def add_lora(
    model: LinearDiT,
    *,
    rank: int = DEFAULT_RANK,
    alpha: float | None = None,
    targets: Sequence[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
) -> LinearDiT:
    """Inject LoRA adapters (peft) into `targets` of every block, in place; returns the same `LinearDiT`.

    `rank` r of each adapter; `alpha` its scale numerator (output += alpha/r · B A x; None: alpha = r, scale 1);
    `targets` a subset of `DEFAULT_TARGETS`; `dropout` on the adapters' input while training. A (r, in) starts
    Kaiming-uniform and B zero, so the adapted model starts equal to the base. Every base parameter is frozen:
    only the `lora_A`/`lora_B` weights have `requires_grad`.
    """
    from peft import LoraConfig, inject_adapter_in_model

    _check_model(model)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0):
        raise ValueError(f"alpha must be a positive number or None (= rank), got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    chosen = _check_targets(targets)
    config = LoraConfig(
        r=rank,
        lora_alpha=float(rank if alpha is None else alpha),
        lora_dropout=float(dropout),
        target_modules=rf"blocks\.\d+\.({'|'.join(re.escape(t) for t in chosen)})",  # full match on module names
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    _train_only_lora(model)
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether `model` holds peft adapter layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _check_model(model: object) -> None:
    if not isinstance(model, LinearDiT):
        raise TypeError(f"model must be a linear_dit.LinearDiT, got {type(model).__name__}")
    if has_lora(model):
        raise ValueError("model already has LoRA adapters; merge_lora it first or start from a plain LinearDiT")


def _check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    if isinstance(targets, str) or not targets:
        raise ValueError(f"targets must be a non-empty sequence of names from {list(_PIECES)}, got {targets!r}")
    unknown = [t for t in targets if t not in _PIECES]
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; valid targets: {list(_PIECES)}")
    return tuple(t for t in _PIECES if t in targets)  # canonical order, duplicates dropped


def _train_only_lora(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Our module name (`blocks.{i}.{target}`) -> its peft LoRA layer."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


# --- the diffusers file ----------------------------------------------------------------------------------------------


@torch.no_grad()
def lora_state_dict(model: LinearDiT) -> dict[str, Tensor]:
    """The adapters as diffusers' Sana LoRA state dict (keys `transformer.transformer_blocks.{i}.…lora_A.weight`).

    Fused projections are split into the diffusers pieces (shared A, row blocks of B) and the scale alpha/r is
    baked into B, so the dict means "output += B A x" as diffusers assumes without metadata.
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA adapters (add_lora or load_lora first)")
    out: dict[str, Tensor] = {}
    for name, layer in layers.items():
        match = _MODULE_NAME.match(name)
        if not match or match[2] not in _PIECES:
            raise ValueError(f"LoRA on {name!r} has no diffusers counterpart; supported: blocks.{{i}}.{list(_PIECES)}")
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight  # (r, in), (out, r)
        # The scale multiplies in fp32 so a half-precision B is rounded once, to its own dtype.
        b = (b.float() * layer.scaling[ADAPTER]).to(b.dtype)
        pieces = _PIECES[match[2]]
        for piece, b_rows in zip(pieces, b.chunk(len(pieces), dim=0), strict=True):
            stem = f"{DIFFUSERS_PREFIX}transformer_blocks.{match[1]}.{piece}"
            out[f"{stem}.lora_A.weight"] = a.detach().clone()  # one copy each: safetensors refuses shared storage
            out[f"{stem}.lora_B.weight"] = b_rows.detach().contiguous().clone()
    return out


def save_lora(model: LinearDiT, path: str | Path) -> Path:
    """Write the adapters to folder `path` as `pytorch_lora_weights.safetensors` (diffusers' Sana LoRA format).

    `diffusers.SanaPipeline.load_lora_weights(path)` loads it; so does `load_lora`. The write is atomic (temp
    file in the folder, then rename). Returns the file's path.
    """
    state = lora_state_dict(model)
    layers = _lora_layers(model)
    info = {
        "rank": sorted({int(m.r[ADAPTER]) for m in layers.values()}),
        "alpha": sorted({float(m.lora_alpha[ADAPTER]) for m in layers.values()}),
        "targets": sorted({_MODULE_NAME.match(n)[2] for n in layers}),  # type: ignore[index]
        "depth": model.config.depth,
        "hidden_size": model.config.hidden_size,
        "scale_baked_into_B": True,
    }
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"path must be a folder (the LoRA file goes inside it), got the file {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / LORA_WEIGHT_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{LORA_WEIGHT_NAME}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt", OURS_METADATA_KEY: json.dumps(info)})
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _read_lora_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str], Path]:
    file = Path(path)
    if file.is_dir():
        file = file / LORA_WEIGHT_NAME
    if not file.is_file():
        raise FileNotFoundError(f"no LoRA file at {file} (expected a folder holding {LORA_WEIGHT_NAME}, or the file)")
    with safe_open(str(file), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}, file  # noqa: SIM118 (not a dict)


def _diffusers_alpha(metadata: dict[str, str], file: Path) -> float | None:
    """alpha from diffusers' own `lora_adapter_metadata` (None: absent, alpha = rank); only a uniform alpha."""
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return None
    kwargs = {k.removeprefix(DIFFUSERS_PREFIX): v for k, v in json.loads(raw).items()}
    unsupported = {k: kwargs[k] for k in ("alpha_pattern", "use_rslora", "use_dora", "lora_bias") if kwargs.get(k)}
    if unsupported:
        raise ValueError(f"{file}: LoRA settings {unsupported} are not supported by load_lora (uniform alpha only)")
    return None if kwargs.get("lora_alpha") is None else float(kwargs["lora_alpha"])


def _parse_pieces(state: dict[str, Tensor], file: Path) -> dict[tuple[int, str], dict[int, Pair]]:
    """{(block, our target): {piece index: (A, B)}} from diffusers keys (with or without the `transformer.` prefix)."""
    halves: dict[tuple[int, str, int], dict[str, Tensor]] = {}
    unknown = []
    for key, value in state.items():
        match = _LORA_KEY.match(key.removeprefix(DIFFUSERS_PREFIX))
        if not match or match[2] not in _PIECE_OF or value.ndim != 2:
            unknown.append(key)
            continue
        target, j = _PIECE_OF[match[2]]
        halves.setdefault((int(match[1]), target, j), {})[match[3]] = value
    if unknown or not halves:
        raise KeyError(
            f"{file}: unsupported LoRA keys {sorted(unknown)[:8]} ({len(unknown)} in all, {len(state)} keys); "
            f"expected 2-D tensors under transformer.transformer_blocks.{{i}}.{{{','.join(_PIECE_OF)}}}"
            ".lora_{A,B}.weight"
        )
    out: dict[tuple[int, str], dict[int, Pair]] = {}
    for (block, target, j), ab in halves.items():
        if set(ab) != {"A", "B"}:
            piece = _PIECES[target][j]
            raise KeyError(f"{file}: transformer_blocks.{block}.{piece} has lora_{''.join(ab)} but not both A and B")
        if ab["A"].shape[0] != ab["B"].shape[1]:
            raise ValueError(
                f"{file}: transformer_blocks.{block}.{_PIECES[target][j]}: lora_A {tuple(ab['A'].shape)} and "
                f"lora_B {tuple(ab['B'].shape)} disagree on the rank"
            )
        out.setdefault((block, target), {})[j] = (ab["A"], ab["B"])
    return out


def _fuse(pieces: dict[int, Pair], n: int, out_features: int) -> Pair:
    """One (A, B) on our fused Linear from its diffusers pieces, exactly (see the module docstring)."""
    rows = out_features // n
    present = [pieces[j] for j in range(n) if j in pieces]
    if len(present) == n and all(torch.equal(a, present[0][0]) for a, _ in present):
        return present[0][0], torch.cat([b for _, b in present], dim=0)  # shared A (what save_lora writes)
    a_all = torch.cat([a for a, _ in present], dim=0)  # (Σ r_j, in)
    b_all = a_all.new_zeros(out_features, a_all.shape[0])  # block-diagonal; absent pieces contribute zero rows
    col = 0
    for j in range(n):
        if j in pieces:
            b = pieces[j][1]
            b_all[j * rows : (j + 1) * rows, col : col + b.shape[1]] = b
            col += b.shape[1]
    return a_all, b_all


def _check_shapes(model: LinearDiT, parsed: dict[tuple[int, str], dict[int, Pair]], info: dict, file: Path) -> None:
    depth = model.config.depth
    if "depth" in info and info["depth"] != depth:
        raise ValueError(f"{file}: this LoRA was saved from a {info['depth']}-block model; the model has {depth}")
    too_deep = sorted({block for block, _ in parsed if block >= depth})
    if too_deep:
        raise ValueError(f"{file}: LoRA for blocks {too_deep}, but the model has {depth} blocks (0..{depth - 1})")
    for (block, target), pieces in sorted(parsed.items()):
        linear = model.blocks[block].get_submodule(target)
        n = len(_PIECES[target])
        for j, (a, b) in sorted(pieces.items()):
            want_a, want_b = (a.shape[0], linear.in_features), (linear.out_features // n, a.shape[0])
            if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
                raise ValueError(
                    f"{file}: transformer_blocks.{block}.{_PIECES[target][j]} has lora_A {tuple(a.shape)}, "
                    f"lora_B {tuple(b.shape)}; this model needs {want_a} and {want_b} (r, in) / (out, r)"
                )


@torch.no_grad()
def load_lora(model: LinearDiT, path: str | Path) -> LinearDiT:
    """Load a diffusers-format Sana LoRA (a folder holding `pytorch_lora_weights.safetensors`, or the file) into
    `model` as peft adapters, in place; returns the same `LinearDiT`, with only the LoRA parameters trainable.

    Reads what `save_lora` writes and diffusers-trained Sana LoRAs on the attention projections. Pieces of a fused
    projection are re-fused exactly; the adapters get scale 1 (alpha = rank), the file's scale being in B (a
    diffusers `lora_adapter_metadata` alpha is baked in on loading). Raises KeyError for keys of modules we cannot
    adapt and ValueError for shapes or a depth that do not fit `model`.
    """
    from peft import LoraConfig, inject_adapter_in_model

    _check_model(model)
    state, metadata, file = _read_lora_file(path)
    info = json.loads(metadata.get(OURS_METADATA_KEY, "{}"))
    alpha = _diffusers_alpha(metadata, file)
    parsed = _parse_pieces(state, file)
    _check_shapes(model, parsed, info, file)
    fused: dict[str, Pair] = {}
    for (block, target), pieces in sorted(parsed.items()):
        if alpha is not None:  # diffusers metadata: bake alpha / r (r = each piece's own rank) into B
            pieces = {j: (a, b * (alpha / a.shape[0])) for j, (a, b) in pieces.items()}
        linear = model.blocks[block].get_submodule(target)
        fused[f"blocks.{block}.{target}"] = _fuse(pieces, len(_PIECES[target]), linear.out_features)
    ranks = {name: a.shape[0] for name, (a, _) in fused.items()}
    base_rank = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {re.escape(name): r for name, r in ranks.items() if r != base_rank}
    config = LoraConfig(
        r=base_rank,
        lora_alpha=base_rank,  # scale 1: B already carries the scale
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        target_modules=sorted(fused),
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    layers = _lora_layers(model)
    for name, (a, b) in fused.items():
        layer = layers[name]
        lora_a, lora_b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        lora_a.copy_(a.to(lora_a.dtype))  # cast to the adapter's (= base layer's) dtype
        lora_b.copy_(b.to(lora_b.dtype))
    _train_only_lora(model)
    return model


# --- merging ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def merge_lora(model: LinearDiT) -> LinearDiT:
    """Add each adapter's scale·B·A into its base weight and put the plain `nn.Linear` back, in place.

    Returns the same `LinearDiT`, now with no peft modules, whose outputs equal the adapted model's (up to
    rounding); every parameter is trainable again, as in a freshly built model. Raises ValueError if a merged
    weight would be non-finite (the model is then left unchanged).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not isinstance(model, LinearDiT):
        raise TypeError(f"model must be a linear_dit.LinearDiT, got {type(model).__name__}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ValueError("model has no LoRA adapters to merge")
    merged = {}
    for name, layer in layers:
        base = layer.get_base_layer()
        weight = base.weight + layer.get_delta_weight(ADAPTER).to(base.weight.dtype)  # keep the base dtype
        if not torch.isfinite(weight).all():
            raise ValueError(f"merging the LoRA of {name} gives non-finite weights; the model is left unchanged")
        merged[name] = weight
    for name, layer in layers:
        base = layer.get_base_layer()
        base.weight.copy_(merged[name])
        parent_name, _, child = name.rpartition(".")
        model.get_submodule(parent_name).register_module(child, base)  # put the plain Linear back in its slot
    if "peft_config" in vars(model):  # the adapter configs peft's injection records on the model
        del model.peft_config
    for p in model.parameters():
        p.requires_grad_(True)
    return model
