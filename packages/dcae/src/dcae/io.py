"""Loading and saving DC-AE checkpoints in three formats.

- ours ("dcae"): a folder with `config.json` + `model.safetensors`; the safetensors metadata repeats the
  config, so the weights file alone is self-describing.
- diffusers: an `AutoencoderDC` folder (`config.json` + `diffusion_pytorch_model*.safetensors` or `.bin`),
  or a pipeline folder with such a `vae/` subfolder.
- efficientvit (mit-han-lab): a state dict in a `.safetensors` or `.pth` file, or a hub folder holding
  `model.safetensors`. It carries no config: the graph is matched against the presets by key names and shapes,
  or given with `config=`.

Pickled files are read with `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dcae._convert import config_from_diffusers, config_to_diffusers, detect_format, from_format, to_format
from dcae.config import DCAEConfig
from dcae.model import DCAE
from dcae.presets import PRESETS, get_preset

FORMAT_TAG = "dcae"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
FORMATS = ("dcae", "diffusers", "efficientvit")
# A version whose AutoencoderDC reads every key we write (tested against diffusers 0.42.1).
DIFFUSERS_VERSION = "0.32.0"


def save_dcae(model: DCAE, path: str | Path, fmt: str = "dcae") -> Path:
    """Write `model` in `fmt`: "dcae" or "diffusers" (a folder at `path`), "efficientvit" (a file).

    An efficientvit file ending in `.pth` is a torch dict with a `state_dict` entry (as upstream ships it);
    any other suffix is written as safetensors. Returns the path written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; valid formats: {list(FORMATS)}")
    with _atomic(Path(path)) as tmp:
        _write(model, tmp, fmt)
    return Path(path)


def _write(model: DCAE, path: Path, fmt: str) -> None:
    cfg = model.config
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if fmt == "dcae":
        path.mkdir(parents=True, exist_ok=True)
        config_json = json.dumps({"format": FORMAT_TAG, "format_version": FORMAT_VERSION, "config": cfg.to_dict()})
        (path / CONFIG_FILE).write_text(json.dumps(json.loads(config_json), indent=2) + "\n")
        save_file(state, path / WEIGHTS_FILE, metadata={"format": FORMAT_TAG, "config": config_json})
    elif fmt == "diffusers":
        path.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": "AutoencoderDC", "_diffusers_version": DIFFUSERS_VERSION, **config_to_diffusers(cfg)}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        save_file(to_format(state, cfg, "diffusers"), path / f"{DIFFUSERS_WEIGHTS}.safetensors")
    else:  # "efficientvit"
        converted = to_format(state, cfg, "efficientvit")
        if path.suffix in PICKLE_SUFFIXES:
            torch.save({"state_dict": converted}, path)
        else:
            save_file(converted, path)


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


def load_dcae(
    source: str | Path,
    *,
    config: DCAEConfig | str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> DCAE:
    """Load a DC-AE from any supported checkpoint.

    Args:
        source: our folder, a diffusers `AutoencoderDC` (or pipeline) folder, an efficientvit `.safetensors`
            / `.pth` file or folder, one of our `model.safetensors` files, or a hub repo id (needs the
            `hub` extra: `pip install dcae[hub]`).
        config: the graph, as a `DCAEConfig` or preset name; overrides the checkpoint's own. Needed only for
            an efficientvit checkpoint whose graph is not one of the presets.
        dtype: compute dtype. float32 or bfloat16 (fp16 decode overflows to black images and warns).
        device: where the weights go.

    Returns:
        The model in eval mode.
    """
    cfg = get_preset(config) if isinstance(config, str) else config
    path = Path(source)
    if not path.exists():
        if _looks_like_hub_id(str(source)):
            path = _snapshot_download(str(source))
        else:
            raise FileNotFoundError(f"no checkpoint at {source}")
    state, fmt, found_cfg = _read(path)
    cfg = cfg or found_cfg or _match_preset(state, fmt)
    state = from_format(state, cfg, fmt)
    with torch.device("meta"):
        model = DCAE(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def _read(path: Path) -> tuple[dict[str, torch.Tensor], str, DCAEConfig | None]:
    """(state dict, its key format, the config it carries if any)."""
    if path.is_dir():
        return _read_folder(path)
    state = read_state_dict(path)
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") == FORMAT_TAG:
            return state, "dcae", DCAEConfig.from_dict(json.loads(meta["config"])["config"])
    return state, detect_format(set(state)), None


def _read_folder(path: Path) -> tuple[dict[str, torch.Tensor], str, DCAEConfig | None]:
    config_path = path / CONFIG_FILE
    data: dict[str, Any] = json.loads(config_path.read_text()) if config_path.exists() else {}
    if data.get("format") == FORMAT_TAG:
        return load_file(path / WEIGHTS_FILE), "dcae", DCAEConfig.from_dict(data["config"])
    if data.get("_class_name") == "AutoencoderDC":
        return _read_diffusers_weights(path), "diffusers", config_from_diffusers(data, name=path.name)
    if (path / "vae" / CONFIG_FILE).exists():  # a diffusers pipeline folder
        return _read_folder(path / "vae")
    candidates = sorted(p for p in path.iterdir() if p.suffix == ".safetensors" or p.suffix in PICKLE_SUFFIXES)
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"{path} is not a dcae or diffusers AutoencoderDC folder and holds {len(candidates)} weight files "
            f"({[p.name for p in candidates]}); point at the file"
        )
    state, fmt, cfg = _read(candidates[0])
    name = data.get("model_name")  # efficientvit's hub folders name their preset
    return state, fmt, cfg or (PRESETS.get(name) if isinstance(name, str) else None)


def _read_diffusers_weights(path: Path) -> dict[str, torch.Tensor]:
    index = path / f"{DIFFUSERS_WEIGHTS}.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(path / shard).items()}
    plain = [path / f"{DIFFUSERS_WEIGHTS}.safetensors", path / f"{DIFFUSERS_WEIGHTS}.bin"]
    files = [p for p in plain if p.exists()] or sorted(path.glob(f"{DIFFUSERS_WEIGHTS}.*.safetensors"))
    if len(files) == 0:
        raise FileNotFoundError(f"no {DIFFUSERS_WEIGHTS}*.safetensors or .bin in {path}")
    if len(files) > 1 and files[0].name not in {p.name for p in plain}:
        raise FileNotFoundError(f"several weight variants in {path}: {[p.name for p in files]}; point at one")
    return read_state_dict(files[0])


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat tensor dict from `.safetensors`, or from a pickle via `torch.load(weights_only=True)`."""
    if path.suffix == ".safetensors":
        return load_file(path)
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"unsupported checkpoint file {path.name}; expected .safetensors or {PICKLE_SUFFIXES}")
    obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "module"):  # trainer checkpoints nest the weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


def _graph_key(cfg: DCAEConfig) -> DCAEConfig:
    """The config with its checkpoint-only properties blanked, so equal graphs compare equal."""
    return DCAEConfig.from_dict({**cfg.to_dict(), "name": "", "scaling_factor": 1.0, "trained_dtype": "bfloat16"})


def _match_preset(state: dict[str, torch.Tensor], fmt: str) -> DCAEConfig:
    """The preset whose graph has exactly `state`'s key names and shapes (efficientvit files carry no config)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    groups: dict[DCAEConfig, list[DCAEConfig]] = {}
    for preset in PRESETS.values():
        groups.setdefault(_graph_key(preset), []).append(preset)
    matches: list[DCAEConfig] = []
    for graph, members in groups.items():
        with torch.device("meta"):
            expected = to_format(DCAE(graph).state_dict(), graph, fmt)
        if {k: tuple(v.shape) for k, v in expected.items()} == shapes:
            matches += members
    if not matches:
        raise ValueError(
            f"this {fmt} checkpoint matches none of the presets {sorted(PRESETS)}; pass config= (a DCAEConfig)"
        )
    if len({m.scaling_factor for m in matches}) != 1:
        raise ValueError(f"ambiguous checkpoint (matches {[m.name for m in matches]}); pass config=")
    return DCAEConfig.from_dict({**matches[0].to_dict(), "name": "|".join(m.name for m in matches)})


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


def _snapshot_download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ImportError(
            f"{repo_id!r} is not a local path; loading from the hub needs the optional extra: pip install 'dcae[hub]'"
        ) from exc
    patterns = [CONFIG_FILE, WEIGHTS_FILE, f"{DIFFUSERS_WEIGHTS}*", "vae/config.json", f"vae/{DIFFUSERS_WEIGHTS}*"]
    return Path(snapshot_download(repo_id, allow_patterns=patterns))
