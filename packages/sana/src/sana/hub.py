"""Model locations: local paths, `hf://` paths and Hub repo ids, and what kind of checkpoint a path holds.

`resolve` turns any model location into a local path:

- an existing local file or folder (`~` expanded) is returned as is;
- `hf://org/repo/path/inside/repo` is one file, fetched with `huggingface_hub.hf_hub_download`;
- `hf://org/repo` and a bare repo id `org/repo` (that is not a local path) are a snapshot of the repo, fetched
  with `huggingface_hub.snapshot_download`.

Hub files go through huggingface_hub's own cache. The cache folder and offline mode are read from the
environment at call time (`HF_HUB_CACHE`, else `HF_HOME/hub`; `HF_HUB_OFFLINE=1`), falling back to
`huggingface_hub.constants`, so setting them after `huggingface_hub` was imported still takes effect. Offline,
nothing touches the network (`local_files_only=True`); an item missing from the cache raises
`ModelNotFoundError` saying how to fetch it.

Checkpoint kinds (`checkpoint_format`):

- `sana_pth`: the official Sana transformer file (a `.pth` dict with `state_dict`, spec §3.12), or a bare
  Sana state dict in `.pt` / `.bin` / `.ckpt` / `.safetensors`;
- `diffusers_transformer`: a diffusers `SanaTransformer2DModel` folder (`config.json` + `diffusion_pytorch_model*`);
- `linear_dit`: our transformer folder (`config.json` + `model.safetensors`), or that `model.safetensors` alone;
- `diffusers_pipeline`: a diffusers pipeline folder (`model_index.json` + transformer/ vae/ text_encoder/
  tokenizer/ scheduler/);
- `sana_pipeline`: our pipeline folder (`sana_pipeline.json`; the layout is documented in `sana.convert`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from safetensors import safe_open

__all__ = (
    "PIPELINE_MANIFEST",
    "PIPELINE_PARTS",
    "CheckpointFormat",
    "ModelNotFoundError",
    "checkpoint_format",
    "is_diffusers_pipeline",
    "pipeline_parts",
    "resolve",
)

CheckpointFormat = Literal["sana_pth", "diffusers_transformer", "linear_dit", "diffusers_pipeline", "sana_pipeline"]

HF_SCHEME = "hf://"
MODEL_INDEX = "model_index.json"
PIPELINE_MANIFEST = "sana_pipeline.json"  # marks our pipeline folder (written by `sana.convert`)
PIPELINE_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
CHECKPOINT_SUFFIXES = (*PICKLE_SUFFIXES, ".safetensors")
DIFFUSERS_TRANSFORMER_CLASS = "SanaTransformer2DModel"
LINEAR_DIT_TAG = "linear_dit"  # the `format` field of linear_dit's config.json and safetensors metadata
_TRUE = ("1", "true", "yes", "on")
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # the Hub's repo id characters; `./x`, `~/x`, `a b/c` are not


class ModelNotFoundError(FileNotFoundError):
    """A Hub repo or file that is neither in the local cache nor reachable (or does not exist on the Hub)."""


# --- resolving locations ----------------------------------------------------------------------------------------


def resolve(location: str | Path, *, revision: str | None = None, allow_patterns: Sequence[str] | None = None) -> Path:
    """A local path for any model location (see the module docstring for the accepted forms).

    Args:
        location: a local file or folder, `hf://org/repo[/path/in/repo]`, or a Hub repo id `org/repo`.
        revision: Hub branch, tag or commit (default: the repo's main branch). Ignored for local paths.
        allow_patterns: for snapshots only: glob patterns of the repo files to fetch (default: all).

    Returns:
        The local file or folder (inside the Hugging Face cache for Hub locations).

    Raises:
        FileNotFoundError: a local-looking path that does not exist.
        ModelNotFoundError: a Hub item missing from the cache while offline, or absent from the Hub.
        ValueError: a malformed `hf://` location.
        TypeError: `location` is neither a str nor a Path.
    """
    if isinstance(location, Path) and not str(location).startswith("hf:/"):
        return _existing(location.expanduser())
    if isinstance(location, Path):  # Path("hf://org/repo") collapsed the double slash
        location = HF_SCHEME + str(location).removeprefix("hf:/")
    if not isinstance(location, str):
        raise TypeError(f"location must be a str or Path, got {type(location).__name__}")
    if location.startswith(HF_SCHEME):
        repo_id, filename = _parse_hf_url(location)
        if filename:
            return _download_file(repo_id, filename, revision)
        return _download_snapshot(repo_id, revision, allow_patterns)
    local = Path(location).expanduser()
    if local.exists() or not _looks_like_repo_id(location):
        return _existing(local)
    try:
        return _download_snapshot(location, revision, allow_patterns)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc} (There is no local file or folder {location!r} either.)") from exc.__cause__


def _existing(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    return path


def _parse_hf_url(location: str) -> tuple[str, str]:
    """`hf://org/repo/path/in/repo` -> ("org/repo", "path/in/repo"); the path may be empty."""
    parts = location.removeprefix(HF_SCHEME).strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise ValueError(
            f"malformed Hub location {location!r}: expected hf://<org>/<repo> or hf://<org>/<repo>/<path in repo>"
        )
    return "/".join(parts[:2]), "/".join(parts[2:])


def _looks_like_repo_id(location: str) -> bool:
    """`org/repo` in the Hub's characters (so not `./x`, `/x`, `~/x` or `a/b/c`), not a checkpoint file name."""
    return REPO_ID.fullmatch(location) is not None and not location.endswith(CHECKPOINT_SUFFIXES)


def _hub_settings() -> tuple[str, bool]:
    """(cache folder, offline?) from the environment now, else huggingface_hub's import-time constants."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        cache_dir = os.path.expanduser(os.environ["HF_HUB_CACHE"])
    elif os.environ.get("HF_HOME"):
        cache_dir = os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    else:
        cache_dir = constants.HF_HUB_CACHE
    env_offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    offline = env_offline.strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)
    return cache_dir, offline


def _download_file(repo_id: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    cache_dir, offline = _hub_settings()
    with _hub_errors(repo_id, filename, cache_dir, offline):
        path = hf_hub_download(
            repo_id=repo_id, filename=filename, revision=revision, cache_dir=cache_dir, local_files_only=offline
        )
    return Path(path)


def _download_snapshot(repo_id: str, revision: str | None, allow_patterns: Sequence[str] | None) -> Path:
    from huggingface_hub import snapshot_download

    cache_dir, offline = _hub_settings()
    patterns = list(allow_patterns) if allow_patterns is not None else None
    with _hub_errors(repo_id, "", cache_dir, offline):
        path = snapshot_download(
            repo_id=repo_id,
            revision=revision,
            allow_patterns=patterns,
            cache_dir=cache_dir,
            local_files_only=offline,
        )
    return Path(path)


@contextmanager
def _hub_errors(repo_id: str, filename: str, cache_dir: str, offline: bool) -> Iterator[None]:
    """Turns huggingface_hub's not-found and offline errors into `ModelNotFoundError` with a fix."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    item = f"hf://{repo_id}/{filename}" if filename else f"the Hub repo {repo_id!r}"
    fetch = f"hf download {repo_id}" + (f" {filename}" if filename else "")
    fix = (
        f"Fix: on a machine with network run `{fetch}` (or `huggingface-cli download ...` with older "
        "huggingface_hub) and copy its Hugging Face cache here (HF_HOME / HF_HUB_CACHE), or point the config "
        "field / --model_path at a local file or folder."
    )
    try:
        yield
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub is unreachable"
        raise ModelNotFoundError(f"{item} is not in the local cache ({cache_dir}) and {why}. {fix}") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise ModelNotFoundError(
            f"{item} was not found on the Hub (wrong name or revision, or a private/gated repo without a token: "
            f"{type(exc).__name__}). {fix}"
        ) from exc


# --- what a path holds --------------------------------------------------------------------------------------------


def is_diffusers_pipeline(path: Path) -> bool:
    """Whether `path` is a folder holding a diffusers `model_index.json`."""
    return Path(path).is_dir() and (Path(path) / MODEL_INDEX).is_file()


def pipeline_parts(path: Path) -> dict[str, Path]:
    """The part folders of a diffusers pipeline folder (from `model_index.json`) or of our pipeline folder.

    Returns:
        {"transformer", "vae", "text_encoder", "tokenizer", "scheduler"} -> existing subfolders.

    Raises:
        FileNotFoundError: `path` is not a pipeline folder, or lists (or lacks) parts; the message names them.
    """
    path = Path(path)
    if (path / PIPELINE_MANIFEST).is_file():
        manifest = json.loads((path / PIPELINE_MANIFEST).read_text())
        listed = {name: path / sub for name, sub in manifest.get("parts", {}).items()}
    elif is_diffusers_pipeline(path):
        index = json.loads((path / MODEL_INDEX).read_text())
        listed = {name: path / name for name, entry in index.items() if _is_component(entry)}
    else:
        raise FileNotFoundError(f"{path} is not a pipeline folder: it has no {MODEL_INDEX} or {PIPELINE_MANIFEST}")
    missing = [name for name in PIPELINE_PARTS if name not in listed or not listed[name].is_dir()]
    if missing:
        raise FileNotFoundError(
            f"pipeline folder {path} lacks the part(s) {missing} (needs subfolders {list(PIPELINE_PARTS)}; "
            f"found {sorted(p.name for p in path.iterdir() if p.is_dir())})"
        )
    return {name: listed[name] for name in PIPELINE_PARTS}


def _is_component(entry: object) -> bool:
    """A model_index.json component entry is `[library, class]`; `null` marks an absent optional part."""
    return isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)


def checkpoint_format(path: Path) -> CheckpointFormat:
    """What `path` holds (kinds in the module docstring).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: anything else; the message lists what is recognised.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    found = _folder_format(path) if path.is_dir() else _file_format(path)
    if found is None:
        raise ValueError(
            f"unrecognised checkpoint {path}: expected an official Sana .pth (or .pt/.bin/.ckpt/.safetensors state "
            f"dict), a diffusers {DIFFUSERS_TRANSFORMER_CLASS} folder, a linear_dit folder (config.json + "
            f"model.safetensors), a diffusers pipeline folder ({MODEL_INDEX}) or a sana pipeline folder "
            f"({PIPELINE_MANIFEST})"
        )
    return found


def _folder_format(path: Path) -> CheckpointFormat | None:
    if (path / PIPELINE_MANIFEST).is_file():
        return "sana_pipeline"
    if (path / MODEL_INDEX).is_file():
        return "diffusers_pipeline"
    config_path = path / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    if not isinstance(config, dict):
        return None
    if config.get("format") == LINEAR_DIT_TAG:
        return "linear_dit"
    if config.get("_class_name") == DIFFUSERS_TRANSFORMER_CLASS:
        return "diffusers_transformer"
    return None


def _file_format(path: Path) -> CheckpointFormat | None:
    if path.suffix in PICKLE_SUFFIXES:
        return "sana_pth"
    if path.suffix != ".safetensors":
        return None
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("format") == LINEAR_DIT_TAG:
            return "linear_dit"
        keys = list(f.keys())
    sana_key = "attn.qkv.weight"  # every Sana block has it; diffusers calls it attn1.to_q/k/v
    return "sana_pth" if any(k.endswith(sana_key) for k in keys) else None
