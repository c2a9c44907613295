"""Loading and saving Linear DiT checkpoints in three formats.

- ours ("linear_dit"): a folder with `config.json` + `model.safetensors` (official Sana key names, the null
  caption included); the safetensors metadata repeats the config, so the weights file alone is self-describing.
- diffusers: a `SanaTransformer2DModel` folder (`config.json` + `diffusion_pytorch_model*.safetensors`, sharded
  or not, any variant), or a pipeline folder with such a `transformer/` subfolder.
- sana: the official `.pth` (a dict with `state_dict`; spec §3.12). It carries no config: the graph is read
  off the shapes and the stored `pos_embed` (see `config_from_sana_state`).

Pickled files are read with `torch.load(weights_only=True)` only; a pickle that carries code is refused.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from linear_dit._convert import (
    DIFFUSERS_CLASS,
    NULL_CAPTION_KEY,
    StateDict,
    config_from_diffusers,
    config_from_sana_state,
    config_to_diffusers,
    from_diffusers_state_dict,
    to_diffusers_state_dict,
    to_sana_checkpoint,
    unwrap_sana_checkpoint,
)
from linear_dit.config import LinearDiTConfig
from linear_dit.model import LinearDiT

Format = Literal["linear_dit", "diffusers", "sana"]
FORMAT_TAG = "linear_dit"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
DIFFUSERS_VERSION = "0.32.0"  # the first diffusers with SanaTransformer2DModel; 0.42.1 reads what we write
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# The checkpoint labels users know ("an fp16-trained checkpoint") for `trained_dtype`.
TRAINED_LABELS = {"fp16-trained": "float16", "bf16-trained": "bfloat16", "fp32-trained": "float32"}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def save_linear_dit(model: LinearDiT, path: str | Path, fmt: Format = "linear_dit") -> Path:
    """Write `model` as `fmt`: "linear_dit" or "diffusers" (a folder at `path`), "sana" (a `.pth` file)."""
    if fmt not in ("linear_dit", "diffusers", "sana"):
        raise ValueError(f"unknown format {fmt!r}; valid formats: linear_dit, diffusers, sana")
    with _atomic(Path(path)) as tmp:
        _write(model, tmp, fmt)
    return Path(path)


def _write(model: LinearDiT, path: Path, fmt: Format) -> None:
    cfg = model.config
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if fmt == "linear_dit":
        path.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"format": FORMAT_TAG, "format_version": FORMAT_VERSION, "config": cfg.to_dict()})
        (path / CONFIG_FILE).write_text(json.dumps(json.loads(meta), indent=2) + "\n")
        save_file(state, path / WEIGHTS_FILE, metadata={"format": FORMAT_TAG, "config": meta})
    elif fmt == "diffusers":
        path.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": DIFFUSERS_CLASS, "_diffusers_version": DIFFUSERS_VERSION, **config_to_diffusers(cfg)}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        save_file(to_diffusers_state_dict(state), path / f"{DIFFUSERS_WEIGHTS}.safetensors")
    else:  # "sana"
        torch.save(to_sana_checkpoint(state, cfg), path)


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write into; on success it replaces `path` by renames only, so a crash
    or a full disk never leaves a half-written file under a real name (the previous checkpoint stays)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / path.name
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            # Into an existing folder: each file is swapped in by one rename (weights before config.json) and
            # files of other kinds that live there are kept.
            for item in sorted(tmp.iterdir(), key=lambda p: p.name == CONFIG_FILE):
                os.replace(item, path / item.name)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def load_linear_dit(
    path: str | Path,
    *,
    dtype: torch.dtype | None = torch.float32,
    device: str | torch.device = "cpu",
    config: LinearDiTConfig | None = None,
    trained_dtype: str | None = None,
    **config_overrides: Any,
) -> LinearDiT:
    """Load a Linear DiT from our folder, a diffusers folder, an official `.pth`, or (with the `hub` extra) a Hub id.

    Args:
        path: folder or file; see the module docstring for the layouts.
        dtype: compute dtype to cast to (None keeps the stored one). float32 is the safe CPU choice; run a
            half-precision checkpoint in its own half precision or in float32 (a mismatch warns).
        device: where the weights go.
        config: the graph, overriding what the files say (needed for `.pth` files of unknown width).
        trained_dtype: "float16" / "bfloat16" / "float32" (or the labels "fp16-trained" / "bf16-trained" /
            "fp32-trained"), overriding the recorded or inferred training precision (inferred from the stored
            weights' dtype for diffusers and `.pth` files). "float16" turns on the self-attention clamp that
            fp16-trained Sana-1.0 weights need in every compute dtype.
        config_overrides: single config fields to override (e.g. `pag_layers=(8,)`).

    Returns:
        The model in eval mode. Missing or unexpected weights raise `KeyError` listing them. diffusers folders
        carry no null caption: `y_embedder.y_embedding` is then zeros (set it from the text encoder's "").
    """
    overrides = dict(config_overrides)
    trained_dtype = TRAINED_LABELS.get(trained_dtype, trained_dtype) if trained_dtype else trained_dtype
    state, cfg = _read_any(_resolve(Path(path) if Path(path).exists() else str(path)), config, overrides)
    if trained_dtype is not None:
        overrides["trained_dtype"] = trained_dtype
    elif cfg.trained_dtype is None:
        overrides["trained_dtype"] = _stored_dtype(state)
    cfg = LinearDiTConfig.from_dict({**cfg.to_dict(), **overrides})
    with torch.device("meta"):
        model = LinearDiT(cfg)
    if NULL_CAPTION_KEY not in state:
        state[NULL_CAPTION_KEY] = torch.zeros(cfg.text_length, cfg.caption_channels)
    _load_strict(model, state)
    dtype = dtype or getattr(torch, _stored_dtype(state))  # None: as stored (mixed files: the dominant dtype)
    model._warn_precision(dtype)
    return model.to(device=device, dtype=dtype).eval()


def _resolve(path: Path | str) -> Path:
    if isinstance(path, Path):
        return path / "transformer" if (path / "transformer" / CONFIG_FILE).exists() else path
    if path.count("/") != 1 or Path(path).suffix in (".safetensors", *PICKLE_SUFFIXES):
        raise FileNotFoundError(f"no such file or folder: {path}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ImportError(
            f"{path!r} is not a local path; loading from the Hub needs `pip install linear_dit[hub]`"
        ) from exc
    return _resolve(Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "transformer/*"])))


def _read_any(
    path: Path, config: LinearDiTConfig | None, overrides: dict[str, Any]
) -> tuple[StateDict, LinearDiTConfig]:
    if path.is_dir():
        meta = json.loads((path / CONFIG_FILE).read_text())
        if meta.get("format") == FORMAT_TAG:
            return load_file(path / WEIGHTS_FILE), config or LinearDiTConfig.from_dict(meta["config"])
        if meta.get("_class_name") == DIFFUSERS_CLASS:
            return from_diffusers_state_dict(_read_diffusers_weights(path)), config or config_from_diffusers(meta)
        raise ValueError(f"{path / CONFIG_FILE} is neither a linear_dit nor a {DIFFUSERS_CLASS} config")
    if path.suffix == ".safetensors":
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") == FORMAT_TAG:
            return load_file(path), config or LinearDiTConfig.from_dict(json.loads(meta["config"])["config"])
        state, pos_embed = unwrap_sana_checkpoint(load_file(path))
    elif path.suffix in PICKLE_SUFFIXES:
        state, pos_embed = unwrap_sana_checkpoint(_torch_load(path))
    else:
        raise ValueError(f"unrecognised checkpoint {path}: expected a folder, .safetensors or {PICKLE_SUFFIXES}")
    return state, config or config_from_sana_state(state, pos_embed, **overrides)


def _read_diffusers_weights(folder: Path) -> StateDict:
    """The `diffusion_pytorch_model` weights of one variant (plain preferred), following a shard index if any."""
    indexes = sorted(folder.glob(f"{DIFFUSERS_WEIGHTS}*.index*.json"))
    if indexes:
        files = [folder / s for s in sorted(set(json.loads(_pick(indexes).read_text())["weight_map"].values()))]
    else:
        files = [_pick(sorted(folder.glob(f"{DIFFUSERS_WEIGHTS}*{ext}"))) for ext in (".safetensors", ".bin")]
        files = [f for f in files if f is not None][:1]
    if not files:
        raise FileNotFoundError(f"no {DIFFUSERS_WEIGHTS}*.safetensors or .bin in {folder}")
    state: StateDict = {}
    for f in files:
        state.update(load_file(f) if f.suffix == ".safetensors" else _torch_load(f))
    return state


def _pick(candidates: list[Path]) -> Path | None:
    """One file among variants: the plain one (`name.ext`, `name.ext.index.json`), or the only one."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    plain = [c for c in candidates if c.name.count(".") == 1 or c.name.endswith(".safetensors.index.json")]
    if len(plain) == 1:
        return plain[0]
    raise ValueError(f"several weight variants: {[c.name for c in candidates]}; keep one")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"refusing to load {path}: it is a pickle that needs code to unpickle (only tensors, dicts and "
            f"plain values are accepted; torch.load(weights_only=True) said: {str(exc).splitlines()[0]})"
        ) from exc


def _stored_dtype(state: StateDict) -> str:
    """The floating dtype most weights are stored in (Sana ships fp16-trained weights as fp16, bf16 as bf16)."""
    counts: dict[torch.dtype, int] = {}
    for v in state.values():
        if v.is_floating_point():
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    return _DTYPE_NAMES.get(max(counts, key=counts.__getitem__), "float32")


def _load_strict(model: LinearDiT, state: StateDict) -> None:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"checkpoint does not match the config: missing {missing}, unexpected {unexpected}")
    shapes = model.state_dict()
    wrong = {k: (tuple(v.shape), tuple(shapes[k].shape)) for k, v in state.items() if v.shape != shapes[k].shape}
    if wrong:
        raise ValueError(f"checkpoint shapes (stored, expected) differ from the config: {wrong}")
    model.load_state_dict(state, assign=True)  # the meta-device model takes the loaded tensors as they are
