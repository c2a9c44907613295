"""`sana convert`: transformer checkpoints and whole pipelines between the official, diffusers and our formats.

Transformer checkpoints (`to=`):

- "sana": the official `.pth` (a torch dict with `state_dict`, spec §3.12), one file;
- "diffusers": a diffusers `SanaTransformer2DModel` folder (`config.json` + `diffusion_pytorch_model.safetensors`);
- "linear_dit": our folder (`config.json` + `model.safetensors`, see `linear_dit.save_linear_dit`).

The source may be any of the three, a pipeline folder (then only its transformer is converted when
`to="sana"`), a `hf://` path or a Hub repo id (see `sana.hub.resolve`).

The null caption `y_embedder.y_embedding` (the text encoder's encoding of "") is not stored in diffusers
checkpoints. Converting a diffusers transformer to "sana" or "linear_dit" stores zeros there; our pipeline
recomputes the null caption from its text encoder, so this does not change its images. A diffusers config
records neither the text length (the null caption's rows; 300, Sana's, is assumed) nor the PAG layers (those of
the Sana preset of the same width, else block 14); pass `config=` to set them. A `.pth` carries no
config: converting to "sana" drops the recorded training precision (`trained_dtype`), and converting from a
`.pth` reads the graph off the shapes (pass `config=` for graphs it cannot infer).

Whole pipelines: a diffusers pipeline folder converts to "linear_dit", our pipeline folder:

    sana_pipeline.json   {"format": "sana_pipeline", "format_version": 1,
                          "parts": {"transformer": "transformer", "vae": "vae", "text_encoder": "text_encoder",
                                    "tokenizer": "tokenizer", "scheduler": "scheduler"},
                          "source": <the location converted from>,
                          "flow_shift": <the scheduler's flow_shift, or null>,
                          "diffusers_model_index": <the source's model_index.json, used when converting back>,
                          "settings": <optional: dotted config overrides the folder was trained with (image size,
                                       CHI, PAG layers, sampler); `SanaPipeline.from_pretrained` applies them>}
    transformer/         linear_dit format (config.json + model.safetensors)
    vae/                 dcae format (config.json + model.safetensors, see `dcae.save_dcae`)
    text_encoder/        copied as is (Hugging Face transformers format)
    tokenizer/           copied as is
    scheduler/           copied as is (diffusers scheduler_config.json)

and our pipeline folder converts back to a diffusers pipeline folder ("diffusers") with a `model_index.json`
as `diffusers.SanaPipeline.save_pretrained` writes it. `dtype=` casts the transformer and autoencoder
weights; the text encoder is copied unchanged (its dtype is chosen when it is loaded).

Writes are atomic: everything goes into a temporary sibling of `dst` that is renamed at the end, so a
failure leaves no partial `dst` (and, with `overwrite=True`, the old `dst` intact).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open

from dcae import load_dcae, save_dcae
from linear_dit import LinearDiTConfig, load_linear_dit, save_linear_dit
from sana.hub import MODEL_INDEX, PIPELINE_MANIFEST, PIPELINE_PARTS, checkpoint_format, pipeline_parts, resolve

__all__ = ("DTYPES", "PIPELINE_FORMAT_VERSION", "TARGETS", "Target", "convert")

Target = Literal["sana", "diffusers", "linear_dit"]
TARGETS = ("sana", "diffusers", "linear_dit")
PIPELINE_FORMAT_TAG = "sana_pipeline"
PIPELINE_FORMAT_VERSION = 1
COPIED_PARTS = ("text_encoder", "tokenizer", "scheduler")
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
DIFFUSERS_PIPELINE_CLASS = "SanaPipeline"
DIFFUSERS_VERSION = "0.32.0"  # the first diffusers with SanaPipeline; 0.42.1 reads what we write
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_TRANSFORMER_KINDS = ("sana_pth", "diffusers_transformer", "linear_dit")

Writer = Callable[[Path, Path], None]  # (resolved source, temporary destination) -> None


def convert(
    src: str | Path,
    dst: str | Path,
    to: Target,
    *,
    config: LinearDiTConfig | None = None,
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert the checkpoint or pipeline at `src` to format `to`, written at `dst` (see the module docstring).

    Args:
        src: a local file or folder, `hf://org/repo/path`, or a Hub repo id.
        dst: the file ("sana") or folder (the other formats) to write.
        to: "sana", "diffusers" or "linear_dit".
        config: the transformer graph, overriding what the checkpoint says (needed for `.pth` files whose
            graph cannot be read off the shapes).
        dtype: cast the transformer and autoencoder weights to this dtype (a torch dtype or "float32", "fp32",
            "bfloat16", "bf16", "float16", "fp16"); None keeps the stored dtype.
        overwrite: replace an existing `dst`.

    Returns:
        `dst`.

    Raises:
        FileNotFoundError: `src` does not exist (`sana.hub.ModelNotFoundError` for a Hub item that cannot be had).
        FileExistsError: `dst` exists and `overwrite` is False.
        ValueError: an unknown `to` or `dtype`, a source already in the requested format, or `dst` == `src`.
    """
    if to not in TARGETS:
        raise ValueError(f"unknown target format to={to!r}; valid: {list(TARGETS)}")
    cast = _parse_dtype(dtype)
    source = resolve(src)
    dst = Path(dst).expanduser()
    if dst.exists() and dst.resolve() == source.resolve():
        raise ValueError(f"dst is the source itself ({dst}); write the converted checkpoint elsewhere")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    writer = _writer(checkpoint_format(source), to, str(src), config, cast)
    with _atomic_destination(dst, overwrite) as tmp:
        writer(source, tmp)
    return dst


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in DTYPES.values()):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"unsupported dtype={dtype!r}; valid: None, {list(DTYPES)} or the matching torch dtypes")


def _writer(
    kind: str, to: Target, source_name: str, config: LinearDiTConfig | None, dtype: torch.dtype | None
) -> Writer:
    """The conversion for a source of kind `kind` to format `to`; ValueError for a pair that is not a conversion."""
    if kind in _TRANSFORMER_KINDS or to == "sana":  # a pipeline to "sana": its transformer only
        return lambda src, tmp: _convert_transformer(src, tmp, to, config, dtype)
    if kind == "diffusers_pipeline" and to == "linear_dit":
        return lambda src, tmp: _diffusers_pipeline_to_ours(src, tmp, source_name, config, dtype)
    if kind == "sana_pipeline" and to == "diffusers":
        return lambda src, tmp: _ours_to_diffusers_pipeline(src, tmp, config, dtype)
    raise ValueError(
        f"{source_name} is already a {kind} folder, nothing to convert to {to!r}; pipelines convert "
        "diffusers <-> linear_dit, or to 'sana' (the transformer only)"
    )


# --- transformer and autoencoder ----------------------------------------------------------------------------------


def _convert_transformer(
    src: Path, dst: Path, to: Target, config: LinearDiTConfig | None, dtype: torch.dtype | None
) -> None:
    model = load_linear_dit(src, dtype=dtype, config=config)  # dtype None keeps the stored dtype
    save_linear_dit(model, dst, fmt=to)


def _convert_vae(src: Path, dst: Path, fmt: Literal["dcae", "diffusers"], dtype: torch.dtype | None) -> None:
    model = load_dcae(src, dtype=dtype or _stored_dtype(src))
    save_dcae(model, dst, fmt=fmt)


def _stored_dtype(folder: Path) -> torch.dtype:
    """The floating dtype most weights in the folder's `.safetensors` files use (float32 if none are readable)."""
    counts: dict[torch.dtype, int] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                tensor_slice = f.get_slice(key)
                dtype = _SAFETENSORS_DTYPES.get(tensor_slice.get_dtype())
                if dtype is not None:
                    counts[dtype] = counts.get(dtype, 0) + max(1, int(torch.Size(tensor_slice.get_shape()).numel()))
    return max(counts, key=counts.__getitem__) if counts else torch.float32


# --- whole pipelines ----------------------------------------------------------------------------------------------


def _diffusers_pipeline_to_ours(
    src: Path, dst: Path, source_name: str, config: LinearDiTConfig | None, dtype: torch.dtype | None
) -> None:
    parts = pipeline_parts(src)
    dst.mkdir(parents=True)
    _convert_transformer(parts["transformer"], dst / "transformer", "linear_dit", config, dtype)
    _convert_vae(parts["vae"], dst / "vae", "dcae", dtype)
    for name in COPIED_PARTS:
        shutil.copytree(parts[name], dst / name)  # follows the HF cache's symlinks into real files
    scheduler = _read_json(dst / SCHEDULER_CONFIG) if (dst / SCHEDULER_CONFIG).is_file() else {}
    manifest = {
        "format": PIPELINE_FORMAT_TAG,
        "format_version": PIPELINE_FORMAT_VERSION,
        "parts": {name: name for name in PIPELINE_PARTS},
        "source": source_name,
        "flow_shift": scheduler.get("flow_shift"),
        "diffusers_model_index": _read_json(src / MODEL_INDEX),
    }
    _write_json(dst / PIPELINE_MANIFEST, manifest)


def _ours_to_diffusers_pipeline(
    src: Path, dst: Path, config: LinearDiTConfig | None, dtype: torch.dtype | None
) -> None:
    parts = pipeline_parts(src)
    manifest = _read_json(src / PIPELINE_MANIFEST)
    if manifest.get("format_version", 0) > PIPELINE_FORMAT_VERSION:
        raise ValueError(
            f"{src / PIPELINE_MANIFEST} has format_version {manifest['format_version']}; this sana reads up to "
            f"{PIPELINE_FORMAT_VERSION} (upgrade sana)"
        )
    skip = int((manifest.get("settings") or {}).get("text_encoder.skip_layers", 0))
    if skip:
        warnings.warn(
            f"{src} encodes captions with text_encoder.skip_layers={skip} (the hidden state {skip} blocks before the "
            "LLM's last); diffusers' SanaPipeline always uses the last, so the converted folder generates other "
            "images unless you pass it prompt_embeds computed that way",
            UserWarning,
            stacklevel=3,
        )
    dst.mkdir(parents=True)
    _convert_transformer(parts["transformer"], dst / "transformer", "diffusers", config, dtype)
    _convert_vae(parts["vae"], dst / "vae", "diffusers", dtype)
    for name in COPIED_PARTS:
        shutil.copytree(parts[name], dst / name)
    _write_json(dst / MODEL_INDEX, _model_index(dst, manifest.get("diffusers_model_index") or {}))


def _model_index(folder: Path, stored: dict[str, Any]) -> dict[str, Any]:
    """model_index.json as `SanaPipeline.save_pretrained` writes it: read off the parts, the source's entries kept."""
    text_config = _read_json(folder / "text_encoder" / "config.json")
    tokenizer_config = _read_json(folder / "tokenizer" / "tokenizer_config.json")
    derived: dict[str, Any] = {
        "_class_name": DIFFUSERS_PIPELINE_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", _read_json(folder / SCHEDULER_CONFIG)["_class_name"]],
        "text_encoder": ["transformers", (text_config.get("architectures") or ["Gemma2Model"])[0]],
        "tokenizer": ["transformers", tokenizer_config.get("tokenizer_class", "GemmaTokenizerFast")],
        "transformer": ["diffusers", "SanaTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderDC"],
    }
    kept = ("_class_name", "_diffusers_version", "scheduler", "text_encoder", "tokenizer")
    return {**derived, **{key: stored[key] for key in kept if key in stored}}


# --- files --------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def _atomic_destination(dst: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path next to `dst`; on success it replaces `dst`, on failure it is removed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    tmp, old = dst.with_name(f".{dst.name}.tmp-{token}"), dst.with_name(f".{dst.name}.old-{token}")
    try:
        yield tmp
        if dst.exists() or dst.is_symlink():
            if not overwrite:  # created while we were converting
                raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
            os.replace(dst, old)
        try:
            os.replace(tmp, dst)
        except OSError:
            if old.exists():
                os.replace(old, dst)  # put the previous dst back
            raise
        _remove(old)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
