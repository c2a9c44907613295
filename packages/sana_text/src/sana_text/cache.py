"""An on-disk embedding cache: safetensors shards plus an append-only index (`index.jsonl`).

Each entry is one prompt's `(L, D_txt)` embeddings and `(L,)` mask, stored in the encoder's dtype, under a key that
hashes the encoder's fingerprint (model id, revision, instruction, max_length, dtype) together with the prompt. A new
model, revision, instruction or length therefore never hits old entries: the cache is invalidated by construction and
one folder can hold several encoders. Writes are atomic: a shard is written to a temporary file and renamed into
place before its index line is appended, so readers (other processes included) never see a partial shard. A shard
whose index line was lost in a crash is found again when the cache is opened.

Used by training's feature precompute (`CachedTextEncoder.warm`) and by repeated inference, where it lets the LLM be
freed: cached prompts no longer need it.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .encoder import TextEmbeddings
from .prompts import check_prompts

try:  # POSIX advisory lock around index appends; elsewhere appends rely on O_APPEND alone.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["CachedTextEncoder", "EmbeddingCache", "cache_key"]

CACHE_FORMAT = 1  # bump when the stored layout or the key recipe changes
INDEX_NAME = "index.jsonl"
SHARD_DIR = "shards"


def cache_key(fingerprint: Mapping[str, str], prompt: str) -> str:
    """SHA-256 over the encoder fingerprint and the (preprocessed) prompt, as 64 hex characters."""
    payload = {"format": CACHE_FORMAT, **fingerprint, "prompt": prompt}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class EmbeddingCache:
    """A folder of cached `(embeddings (L, D_txt), mask (L,))` rows addressed by `cache_key`.

    Args:
        root: the cache folder (created if missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.shard_dir = self.root / SHARD_DIR
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / INDEX_NAME
        self._index: dict[str, str] = {}  # key -> shard file name
        self._index_offset = 0  # bytes of index.jsonl already read
        self.refresh(scan_shards=True)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    # --- reading ----------------------------------------------------------------------------------------------

    def refresh(self, *, scan_shards: bool = False) -> None:
        """Pick up entries written since the last read (by this or another process).

        `scan_shards` also lists the shard folder for shards missing from the index (done when the cache is
        opened; a lookup miss only rereads the index, which stays cheap with many shards).
        """
        if self.index_path.exists():
            with open(self.index_path, "rb") as f:
                f.seek(self._index_offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]  # a torn last line (crash mid-append) is left for later
            self._index_offset += len(complete)
            for line in complete.splitlines():
                self._add_index_line(line)
        if not scan_shards:
            return
        indexed = set(self._index.values())
        for shard in sorted(self.shard_dir.glob("*.safetensors")):
            if shard.name not in indexed:  # the shard landed but its index line did not
                for key in self._shard_keys(shard):
                    self._index.setdefault(key, shard.name)

    def _add_index_line(self, line: bytes) -> None:
        try:
            record = json.loads(line)
            shard, keys = record["shard"], record["keys"]
        except (ValueError, KeyError, TypeError):
            return  # damaged line; its shard is recovered from the shard's own metadata
        for key in keys:
            self._index[key] = shard

    @staticmethod
    def _shard_keys(path: Path) -> list[str]:
        try:
            with safe_open(path, framework="pt") as f:
                return json.loads((f.metadata() or {}).get("keys", "[]"))
        except (OSError, ValueError):  # unreadable shard: ignore it rather than fail every lookup
            return []

    def get(self, keys: Iterable[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The cached rows for those `keys` that are present, as CPU tensors `(embeddings, mask)`."""
        keys = list(dict.fromkeys(keys))
        if any(k not in self._index for k in keys):
            self.refresh()
        by_shard: dict[str, list[str]] = {}
        for key in keys:
            if key in self._index:
                by_shard.setdefault(self._index[key], []).append(key)
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for shard, shard_keys in by_shard.items():
            path = self.shard_dir / shard
            if not path.exists():  # removed behind our back: treat as misses
                continue
            with safe_open(path, framework="pt") as f:
                for key in shard_keys:
                    found[key] = (f.get_tensor(f"{key}.embeddings"), f.get_tensor(f"{key}.mask"))
        return found

    # --- writing ----------------------------------------------------------------------------------------------

    def put(self, rows: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Store rows `key -> (embeddings (L, D_txt), mask (L,))` as one new shard, atomically."""
        if not rows:
            return
        tensors: dict[str, torch.Tensor] = {}
        for key, (embeddings, mask) in rows.items():
            # clone: safetensors refuses tensors that share storage, and rows are views of one batch
            tensors[f"{key}.embeddings"] = embeddings.detach().to("cpu", copy=True).contiguous()
            tensors[f"{key}.mask"] = mask.detach().to("cpu", copy=True).contiguous()
        name = f"{uuid.uuid4().hex}.safetensors"
        tmp = self.shard_dir / f".{name}.tmp"
        save_file(tensors, str(tmp), metadata={"format": str(CACHE_FORMAT), "keys": json.dumps(list(rows))})
        os.replace(tmp, self.shard_dir / name)  # atomic: the shard appears complete or not at all
        self._append_index({"shard": name, "keys": list(rows)})
        for key in rows:
            self._index[key] = name

    def _append_index(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.index_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
        finally:
            os.close(fd)  # closing releases the lock

    def rebuild_index(self) -> None:
        """Rewrite `index.jsonl` from the shards' own metadata (after a crash, or after deleting shards by hand)."""
        records = [{"shard": p.name, "keys": self._shard_keys(p)} for p in sorted(self.shard_dir.glob("*.safetensors"))]
        tmp = self.root / f".{INDEX_NAME}.{uuid.uuid4().hex}.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, self.index_path)
        self._index, self._index_offset = {}, 0
        self.refresh(scan_shards=True)


class CachedTextEncoder:
    """A text encoder that looks prompts up in an `EmbeddingCache` first and encodes only the misses.

    Satisfies the same protocol as the encoder it wraps (`embed_dim`, `max_length`, `encode`), so a pipeline or a
    training loop takes either. Outputs are bit-identical to the wrapped encoder's (stored in its dtype), returned
    on `device`. After `encoder.free()`, cached prompts are still served and only a miss raises.

    Args:
        encoder: a `TextEncoder` (or anything with `encode`, `encode_negative` and `fingerprint(conditional=)`).
        cache: an `EmbeddingCache` or a folder for one.
        device: where returned tensors live.

    Attributes:
        hits, misses: prompt lookups served from disk and encoded fresh, since construction.
    """

    def __init__(self, encoder: Any, cache: EmbeddingCache | str | Path, *, device: torch.device | str = "cpu"):
        self.encoder = encoder
        self.cache = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
        self.device = torch.device(device)
        self.hits = 0
        self.misses = 0

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    def encode(self, prompts: str | Sequence[str]) -> TextEmbeddings:
        """As `TextEncoder.encode`, through the cache."""
        return self._encode(prompts, conditional=True)

    def encode_negative(self, prompts: str | Sequence[str] = "") -> TextEmbeddings:
        """As `TextEncoder.encode_negative`, through the cache."""
        return self._encode(prompts, conditional=False)

    def null_embedding(self) -> TextEmbeddings:
        """As `TextEncoder.null_embedding`, through the cache."""
        return self.encode_negative([""])

    def warm(self, prompts: Sequence[str], *, batch_size: int = 32, conditional: bool = True) -> int:
        """Encode and store every prompt not yet cached, `batch_size` at a time (training's feature precompute).

        Returns:
            how many prompts were encoded (the rest were already cached).
        """
        before = self.misses
        unique = list(dict.fromkeys(check_prompts(prompts, allow_empty=not conditional)))
        for start in range(0, len(unique), batch_size):
            self._lookup(unique[start : start + batch_size], conditional=conditional)
        return self.misses - before

    def _lookup(self, cleaned: list[str], *, conditional: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        fingerprint = self.encoder.fingerprint(conditional=conditional)
        keys = {prompt: cache_key(fingerprint, prompt) for prompt in cleaned}
        rows = self.cache.get(keys.values())
        missing = [prompt for prompt, key in keys.items() if key not in rows]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self.encoder.encode(missing) if conditional else self.encoder.encode_negative(missing)
            new_rows = {keys[p]: (fresh.embeddings[i], fresh.mask[i]) for i, p in enumerate(missing)}
            self.cache.put(new_rows)
            rows.update({k: (e.cpu(), m.cpu()) for k, (e, m) in new_rows.items()})
        return {prompt: rows[key] for prompt, key in keys.items()}

    def _encode(self, prompts: str | Sequence[str], *, conditional: bool) -> TextEmbeddings:
        cleaned = check_prompts(prompts, allow_empty=not conditional)
        rows = self._lookup(list(dict.fromkeys(cleaned)), conditional=conditional)
        embeddings = torch.stack([rows[p][0] for p in cleaned]).to(self.device)  # (B, L, D)
        mask = torch.stack([rows[p][1] for p in cleaned]).to(self.device)  # (B, L)
        return TextEmbeddings(embeddings, mask)
