"""Train a small Sana text encoder from scratch: a Gemma-style tokenizer and a Gemma-2 causal LM on captions.

`train_tokenizer` fits a BPE vocabulary shaped like Gemma's (byte fallback, "▁" for spaces, specials `<pad>`=0,
`<eos>`=1, `<bos>`=2, `<unk>`=3, BOS added, right padding). `pretrain_causal_lm` trains a `Gemma2ForCausalLM` of a
few hundred thousand parameters on next-token prediction over the captions and saves it with its tokenizer as an
ordinary Hugging Face folder, so `load_text_encoder(folder)` loads the decoder stack through `AutoModel` like any
other LLM. Training is deterministic and resumable: the batch of a step is a pure function of `(seed, step)`, there
is no dropout, and a checkpoint holds the weights, the AdamW state and the losses so far, written atomically.

    from sana_text.pretrain import PretrainConfig, pretrain_causal_lm
    report = pretrain_causal_lm(captions, "text-encoder", PretrainConfig(steps=2000), progress=True)
    encoder = load_text_encoder("text-encoder", chi=None, max_length=64, dtype=torch.float32)
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .tokens import _adds_bos

if TYPE_CHECKING:
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = ("PretrainConfig", "PretrainReport", "gemma2_config", "pretrain_causal_lm", "train_tokenizer")

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # Gemma's ids 0, 1, 2, 3
BOS_ID = SPECIAL_TOKENS.index("<bos>")
NUM_BYTE_TOKENS = 256
SPACE = "▁"  # SentencePiece's visible space, as in Gemma's vocabulary
IGNORE_INDEX = -100  # label value the Hugging Face loss skips (padding)
CHECKPOINTS = "checkpoints"
LOG_FILE = "pretrain_log.csv"
REPORT_FILE = "pretrain_report.json"
ADAM_BETAS = (0.9, 0.95)
MIN_LR_RATIO = 0.1  # the cosine schedule ends at lr * MIN_LR_RATIO
GRAD_CLIP = 1.0
LENGTH_WINDOW = 16  # batches per length-sorting window: long enough to group lengths, short enough to mix
EPOCH_SEED_STRIDE = 1_000_003  # epoch e of seed s draws from generator seed s * stride + e
PROGRESS_LINES = 20  # progress=True prints about this many lines per run
_Progress = Callable[[int, float], None]


# --- the tokenizer ------------------------------------------------------------------------------------------------


def _corpus(texts: Iterable[str], argument: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{argument} must be an iterable of strings, not a single string")
    corpus = list(texts)
    bad = [type(t).__name__ for t in corpus if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{argument} must contain only strings, got {bad[0]}")
    if not any(t.strip() for t in corpus):
        raise ValueError(f"{argument} is empty: need at least one non-blank text")
    return corpus


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 1024, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a Gemma-style BPE tokenizer on `texts` (deterministic: the same texts give the same tokenizer).

    Like Gemma's: spaces become "▁" and there is no pre-tokenizer at encode time, the 256 `<0xNN>` byte tokens make
    any Unicode text encodable (no `<unk>`), specials `<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3, BOS is added to
    every text and padding is on the right. Merges are learned within words only (as SentencePiece's
    `split_by_whitespace`), so every word starts a new token and a colour word is never fused with its noun.

    Args:
        texts: the training corpus, e.g. captions; at least one non-blank text.
        vocab_size: the most tokens the vocabulary may hold, specials and byte tokens included; fewer when the
            corpus runs out of merges seen `min_frequency` times.
        min_frequency: how often a pair must occur to be merged.

    Raises:
        ValueError: empty corpus, or `vocab_size` too small for the specials, the byte tokens and the corpus's
            distinct characters.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    corpus = _corpus(texts, "texts")
    alphabet = {c for text in corpus for c in text.replace(" ", SPACE)}
    needed = len(SPECIAL_TOKENS) + NUM_BYTE_TOKENS + len(alphabet)
    if not isinstance(vocab_size, int) or vocab_size < needed:
        raise ValueError(
            f"vocab_size must be an int >= {needed} for this corpus ({len(SPECIAL_TOKENS)} special tokens, "
            f"{NUM_BYTE_TOKENS} byte tokens and {len(alphabet)} distinct characters), got {vocab_size!r}"
        )
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - NUM_BYTE_TOKENS,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.normalizer = normalizers.Replace(" ", SPACE)
    # Training only: split before each "▁" so merges stay inside words. Encoding needs no split, because no learned
    # merge can join across a word start.
    learner.pre_tokenizer = pre_tokenizers.Split(SPACE, behavior="merged_with_next")
    learner.train_from_iterator(corpus, trainer)
    return _gemma_style(json.loads(learner.to_str())["model"])


def _gemma_style(bpe: dict[str, Any]) -> PreTrainedTokenizerFast:
    """Assemble the encode-time tokenizer from a trained BPE model: byte tokens appended, BOS template, decoder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    # The byte tokens are ordinary vocabulary entries (as in Gemma), so byte fallback covers any Unicode text.
    vocab = {**bpe["vocab"], **{f"<0x{i:02X}>": len(bpe["vocab"]) + i for i in range(NUM_BYTE_TOKENS)}}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
    )
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
    )


# --- the configuration and the model ------------------------------------------------------------------------------


_INT_FIELDS = {  # PretrainConfig's integer fields and their smallest allowed values
    **dict.fromkeys(("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"), 1),
    **dict.fromkeys(("intermediate_size", "max_length", "context_length", "steps", "batch_size", "save_every"), 1),
    "warmup_steps": 0,
    "seed": 0,
}


@dataclass(frozen=True)
class PretrainConfig:
    """Model size and optimisation of `pretrain_causal_lm`. Defaults: the embedded default model's encoder.

    The default model has 4 layers of width 128 and about 0.6 M parameters (2.6 MB in fp32, with a 1024-token
    vocabulary): it learns the shapes world's caption language in a few thousand steps on a CPU.
    """

    vocab_size: int = 1024  # tokenizer budget when no tokenizer is given (specials and 256 byte tokens included)
    hidden_size: int = 128  # D_txt of the resulting text encoder
    num_layers: int = 4  # Gemma-2 alternates sliding-window and global layers
    num_heads: int = 4  # query heads
    num_kv_heads: int = 2  # key/value heads (grouped-query attention, as Gemma-2-2B's 8/4)
    head_dim: int = 32  # per-head width; attention scores are scaled by head_dim ** -0.5
    intermediate_size: int = 256  # gated-GELU MLP width
    max_length: int = 64  # training tokens per text, BOS and EOS included; longer texts are cut at the end
    context_length: int = 1024  # max_position_embeddings and sliding_window: no layer ever truncates attention
    steps: int = 2000  # optimizer steps
    batch_size: int = 64  # texts per step
    lr: float = 2e-3  # peak AdamW learning rate (linear warmup, then cosine to MIN_LR_RATIO * lr)
    warmup_steps: int = 100
    weight_decay: float = 0.01  # on matrices and embeddings, not on norm gains
    seed: int = 0  # weights and batch order
    save_every: int = 250  # checkpoint period in steps (a checkpoint is also written at the end)
    heldout_fraction: float = 0.05  # distinct texts kept out of training for the perplexity; 0 disables it

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            minimum = _INT_FIELDS.get(name)
            if minimum is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
                raise ValueError(f"PretrainConfig.{name} must be an int >= {minimum}, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"PretrainConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads")
        if self.max_length < 3 or self.context_length < self.max_length:
            raise ValueError(f"PretrainConfig needs 3 <= max_length <= context_length, got {self.max_length}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"PretrainConfig.heldout_fraction must be in [0, 1), got {self.heldout_fraction!r}")
        if not self.lr > 0.0 or not self.weight_decay >= 0.0:
            raise ValueError(f"PretrainConfig needs lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")


def gemma2_config(config: PretrainConfig, tokenizer: PreTrainedTokenizerBase) -> Gemma2Config:
    """The `Gemma2Config` of `config` for `tokenizer` (its length and its pad, BOS and EOS ids)."""
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        # Gemma-2 scales queries by query_pre_attn_scalar ** -0.5, default 256 (the 2B's head_dim); at another
        # head_dim that default would flatten every attention pattern.
        query_pre_attn_scalar=config.head_dim,
        max_position_embeddings=config.context_length,
        # Sliding-window layers see the last `sliding_window` tokens; with the whole context inside the window they
        # behave exactly like the global ones for every sequence this model is used on (CHI included).
        sliding_window=config.context_length,
        # Gemma-2's tanh soft caps (50 on attention logits, 30 on output logits) are kept: they are inactive at this
        # scale's logit magnitudes but part of the architecture the loaders expect.
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        tie_word_embeddings=True,  # as Gemma; the saved folder holds the embedding matrix once
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def _build_model(config: PretrainConfig, tokenizer: PreTrainedTokenizerBase) -> Gemma2ForCausalLM:
    from transformers import Gemma2ForCausalLM

    torch.manual_seed(config.seed)
    # Gemma-2 supports only eager attention with its soft caps; fp32 because this CPU emulates bf16.
    model = Gemma2ForCausalLM._from_config(
        gemma2_config(config, tokenizer), attn_implementation="eager", dtype=torch.float32
    )
    return model.train()


# --- data ---------------------------------------------------------------------------------------------------------


def _split(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Hold out the distinct texts with the lowest hashes (a function of the set of texts, not of their order)."""
    if fraction == 0.0:
        return texts, []
    distinct = sorted(set(texts), key=lambda t: (hashlib.sha256(b"heldout:" + t.encode()).digest(), t))
    if len(distinct) < 2:
        raise ValueError("texts needs at least 2 distinct texts for a held-out split (or heldout_fraction=0)")
    held = set(distinct[: max(1, round(fraction * len(distinct)))])
    return [t for t in texts if t not in held], sorted(held)


def _encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids with BOS first and a final EOS (the end of a caption is learned too), cut to `max_length`.

    BOS is prepended for tokenizers that do not add it, as `TextEncoder` does, so training matches encoding.
    """
    bos = [] if _adds_bos(tokenizer) else [tokenizer.bos_token_id]
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [[*bos, *row, tokenizer.eos_token_id][:max_length] for row in ids]


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row -> input_ids, attention_mask and labels (padding = IGNORE_INDEX), (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask, ids.masked_fill(mask == 0, IGNORE_INDEX)


class _Batches:
    """Batch `step` is a pure function of `(seed, step)`, so a resumed run sees the batches an uninterrupted one does.

    Each epoch is a seeded permutation cut into batches of texts of similar length (sorted within windows of
    `LENGTH_WINDOW` batches, then the batches shuffled), which avoids padding short prompts to long captions.
    """

    def __init__(self, rows: list[list[int]], batch_size: int, seed: int) -> None:
        self.rows, self.size, self.seed = rows, min(batch_size, len(rows)), seed
        self.per_epoch = len(rows) // self.size  # the permutation's last len(rows) % size texts wait for the next
        self._epoch: tuple[int, list[list[int]]] = (-1, [])

    def _batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
        order = torch.randperm(len(self.rows), generator=generator).tolist()[: self.per_epoch * self.size]
        window, batches = self.size * LENGTH_WINDOW, []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: len(self.rows[i]))  # stable: deterministic
            batches += [chunk[i : i + self.size] for i in range(0, len(chunk), self.size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __call__(self, step: int) -> list[list[int]]:
        epoch, index = divmod(step, self.per_epoch)
        if self._epoch[0] != epoch:
            self._epoch = (epoch, self._batches(epoch))
        return [self.rows[i] for i in self._epoch[1][index]]


# --- training -----------------------------------------------------------------------------------------------------


def _lr(config: PretrainConfig, step: int) -> float:
    """Learning rate of 0-based `step`: linear warmup, then cosine decay to `MIN_LR_RATIO * lr`."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]  # RMSNorm gains: decaying them would pull them to 0
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=ADAM_BETAS)


def _train_step(model: Any, optimizer: torch.optim.Optimizer, rows: list[list[int]], lr: float) -> float:
    """One AdamW step of next-token prediction on `rows`; returns the mean loss over non-padding targets."""
    ids, mask, labels = _pad(rows, model.config.pad_token_id)  # (B, T) each
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return loss.item()


@torch.no_grad()
def _perplexity(model: Any, rows: list[list[int]], batch_size: int) -> float:
    """exp(mean negative log-likelihood per predicted token) over `rows`; NaN when there are none."""
    if not rows:
        return float("nan")
    model.eval()
    rows, total, count = sorted(rows, key=len), 0.0, 0  # similar lengths per batch: less padding
    for start in range(0, len(rows), batch_size):
        ids, mask, labels = _pad(rows[start : start + batch_size], model.config.pad_token_id)  # (B, T)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
        targets = labels[:, 1:]  # (B, T - 1): token t predicts token t + 1
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="sum")
        total, count = total + nll.item(), count + int((targets != IGNORE_INDEX).sum())
    model.train()
    return math.exp(total / count)


# --- checkpoints --------------------------------------------------------------------------------------------------


def _checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a crash mid-save leaves only a `.tmp-*` folder, never a `step_*`)."""
    root = out_dir / CHECKPOINTS
    found = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def _save_checkpoint(out_dir: Path, model: Any, optimizer: Any, tokenizer: Any, state: dict[str, Any]) -> Path:
    """Write weights, optimizer, tokenizer and `state` to a temporary folder, rename it into place, drop older ones."""
    root = out_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp / "state.pt")
    tokenizer.save_pretrained(tmp / "tokenizer")
    (tmp / "state.json").write_text(json.dumps(state))
    final = root / f"step_{state['step']:07d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _checkpoints(out_dir)[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fingerprint(config: PretrainConfig, texts: list[str]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed exactly (`save_every` may change between runs)."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "save_every"}
    return {"config": settings, "texts_sha256": hashlib.sha256(json.dumps(texts).encode()).hexdigest()}


def _read_state(checkpoint: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    state = json.loads((checkpoint / "state.json").read_text())
    saved = state["fingerprint"]
    if saved["texts_sha256"] != fingerprint["texts_sha256"]:
        raise ValueError(f"texts differ from those of the checkpoint {checkpoint}; pass resume=False to start over")
    changed = sorted(k for k, v in fingerprint["config"].items() if saved["config"].get(k) != v)
    if changed:
        raise ValueError(
            f"config fields {changed} differ from the checkpoint {checkpoint} "
            f"(saved: {[saved['config'].get(k) for k in changed]}); pass resume=False to start over"
        )
    return state


def _resolve_tokenizer(tokenizer: Any, checkpoint: Path | None, texts: list[str], config: PretrainConfig) -> Any:
    """The checkpoint's tokenizer when resuming (a given one must equal it), else the given one, else a new one."""
    if checkpoint is not None:
        from transformers import PreTrainedTokenizerFast

        saved = PreTrainedTokenizerFast.from_pretrained(checkpoint / "tokenizer")
        if tokenizer is not None and tokenizer.backend_tokenizer.to_str() != saved.backend_tokenizer.to_str():
            raise ValueError(f"tokenizer differs from the one saved in {checkpoint}; pass resume=False to start over")
        return saved
    if tokenizer is None:
        return train_tokenizer(texts, vocab_size=config.vocab_size)
    ids = {"pad": tokenizer.pad_token_id, "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id}
    missing = [name for name, token_id in ids.items() if token_id is None]
    if missing:
        raise ValueError(f"tokenizer has no {' or '.join(missing)} token; train_tokenizer() makes all three")
    return tokenizer


# --- the recipe ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainReport:
    """What `pretrain_causal_lm` did; also saved as `pretrain_report.json` (without `losses`, `out_dir`)."""

    out_dir: Path  # the Hugging Face folder: model, tokenizer, pretrain_log.csv, pretrain_report.json
    steps: int  # optimizer steps done in all runs together
    losses: tuple[float, ...]  # training loss of each step, first step first
    heldout_perplexity: float  # exp(mean NLL per token) on the held-out texts; NaN with heldout_fraction=0
    uniform_perplexity: float  # the vocabulary size: the perplexity of a model that has learned nothing
    vocab_size: int
    num_parameters: int  # the tied output matrix counted once
    weight_bytes: int  # of the saved fp32 weights
    num_train_texts: int
    num_heldout_texts: int
    resumed_from: int  # the step this call started at (0: from scratch)
    seconds: float  # wall time of this call's training steps

    @property
    def final_loss(self) -> float:
        """Mean loss over the last `min(50, steps)` steps (single-batch losses are noisy)."""
        tail = self.losses[-50:]
        return sum(tail) / len(tail) if tail else float("nan")


def _progress_printer(progress: bool | _Progress, start: int, steps: int) -> _Progress:
    if callable(progress):
        return progress
    every = max(1, steps // PROGRESS_LINES)
    started = time.perf_counter()

    def show(step: int, loss: float) -> None:
        if progress and (step % every == 0 or step == steps):
            per_step = (time.perf_counter() - started) / (step - start)
            print(f"pretrain step {step}/{steps}  loss {loss:.4f}  {per_step:.3f} s/step", file=sys.stderr)

    return show


def _save_final(out_dir: Path, model: Any, tokenizer: Any, log: list[list[float]], report: PretrainReport) -> None:
    """save_pretrained the model and tokenizer plus the log and report, each file renamed into `out_dir` whole."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".tmp-final-*"):  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-final-", dir=out_dir))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([["step", "loss", "lr", "elapsed_s"], *log])
        (tmp / LOG_FILE).write_text(buffer.getvalue())
        summary = {k: v for k, v in dataclasses.asdict(report).items() if k not in ("losses", "out_dir")}
        (tmp / REPORT_FILE).write_text(json.dumps({**summary, "final_loss": report.final_loss}, indent=2) + "\n")
        for file in sorted(tmp.iterdir(), key=lambda f: f.name == REPORT_FILE):  # the report last: it marks done
            os.replace(file, out_dir / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pretrain_causal_lm(
    texts: Sequence[str],
    out_dir: str | Path,
    config: PretrainConfig | None = None,
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    resume: bool = True,
    progress: bool | _Progress = False,
) -> PretrainReport:
    """Pretrain a small `Gemma2ForCausalLM` on `texts` by next-token prediction and save it as a model folder.

    `out_dir` ends up an ordinary Hugging Face folder (`save_pretrained` of the whole causal LM and of its tokenizer)
    plus `pretrain_log.csv` (step, loss, lr, elapsed_s) and `pretrain_report.json`; `load_text_encoder(out_dir)`
    loads its decoder stack as a Sana text encoder. `out_dir/checkpoints/` keeps the last checkpoint (weights,
    AdamW state, tokenizer, log), needed only to resume; leave it out when shipping the model.

    Args:
        texts: the training captions (held-out texts are taken from them, see `PretrainConfig.heldout_fraction`).
        out_dir: where the model, the log and the checkpoints go.
        config: model size and optimisation (`PretrainConfig()` by default).
        tokenizer: a tokenizer with pad, BOS and EOS tokens that adds BOS; default `train_tokenizer` on the
            training texts with `config.vocab_size`.
        resume: continue from the last checkpoint in `out_dir` if there is one (texts and config must match it;
            the result equals an uninterrupted run's); False deletes the checkpoints and starts over.
        progress: True prints a line every 5% of the steps on stderr; a callable is called as `progress(step,
            loss)` after every step (and its checkpoint, if any).

    Raises:
        ValueError: empty texts, fewer than 2 distinct texts with a held-out split, or a checkpoint that does not
            match `texts`, `config` or `tokenizer`.
    """
    config = PretrainConfig() if config is None else config
    if not isinstance(config, PretrainConfig):
        raise TypeError(f"config must be a PretrainConfig, got {type(config).__name__}")
    corpus, out_dir = _corpus(texts, "texts"), Path(out_dir)
    # Stage: where to start
    if not resume:
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    checkpoint = _checkpoints(out_dir)[-1] if _checkpoints(out_dir) else None
    fingerprint = _fingerprint(config, corpus)
    state = _read_state(checkpoint, fingerprint) if checkpoint else {"step": 0, "log": [], "fingerprint": fingerprint}
    train_texts, heldout = _split(corpus, config.heldout_fraction)
    tokenizer = _resolve_tokenizer(tokenizer, checkpoint, train_texts, config)
    # Stage: model and optimizer
    model = _build_model(config, tokenizer)
    optimizer = _optimizer(model, config)
    if checkpoint is not None:
        saved = torch.load(checkpoint / "state.pt", weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    # Stage: train (the log's elapsed_s continues from the runs this one resumes)
    resumed_from, before, started = state["step"], (state["log"][-1][3] if state["log"] else 0.0), time.perf_counter()
    batches = _Batches(_encode_texts(tokenizer, train_texts, config.max_length), config.batch_size, config.seed)
    show = _progress_printer(progress, resumed_from, config.steps)
    for step in range(resumed_from, config.steps):
        loss = _train_step(model, optimizer, batches(step), lr := _lr(config, step))
        state["step"] = step + 1
        state["log"].append([step + 1, loss, lr, round(before + time.perf_counter() - started, 3)])
        if state["step"] % config.save_every == 0 or state["step"] == config.steps:
            _save_checkpoint(out_dir, model, optimizer, tokenizer, state)
        show(step + 1, loss)
    seconds = time.perf_counter() - started
    # Stage: evaluate and save
    heldout_rows = _encode_texts(tokenizer, heldout, config.max_length)
    report = PretrainReport(
        out_dir=out_dir,
        steps=state["step"],
        losses=tuple(row[1] for row in state["log"]),
        heldout_perplexity=_perplexity(model, heldout_rows, config.batch_size),
        uniform_perplexity=float(len(tokenizer)),
        vocab_size=len(tokenizer),
        num_parameters=sum(p.numel() for p in model.parameters()),
        weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),  # the tied copy skipped
        num_train_texts=len(train_texts),
        num_heldout_texts=len(heldout),
        resumed_from=resumed_from,
        seconds=seconds,
    )
    _save_final(out_dir, model.eval(), tokenizer, state["log"], report)
    return report
