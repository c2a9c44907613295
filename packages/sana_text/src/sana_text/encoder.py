"""The text encoder: a frozen Hugging Face language model plus Sana's CHI token selection (spec §5).

`TextEncoder` wraps an already-built model and tokenizer and does no I/O; `load_text_encoder` (decoder-only LLMs:
Gemma-2 by default, Gemma-3, Qwen2/2.5/3, ...) and `load_t5_encoder` (the PixArt-style alternative) read them from a
local folder or the Hub. Conditional prompts get the instruction and the token selection of spec §5.3; negative
prompts and the null embedding are encoded without the instruction at full length (spec §5.4).
"""

from __future__ import annotations

import gc
import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch

from .chi import COMPLEX_HUMAN_INSTRUCTION, join_instruction
from .prompts import check_prompts
from .tokens import TokenBatch, _adds_bos, instruction_length, select_tokens, sequence_length, tokenize

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "MAX_LENGTH",
    "PromptTruncatedWarning",
    "TextEmbeddings",
    "TextEncoder",
    "encode_for_guidance",
    "load_t5_encoder",
    "load_text_encoder",
]

DEFAULT_MODEL = "Efficient-Large-Model/gemma-2-2b-it"  # the ungated mirror of google/gemma-2-2b-it that Sana uses
MAX_LENGTH = 300  # L, text tokens the DiT sees (text_encoder.model_max_length in every Sana config)
T5_MODEL_TYPES = frozenset({"t5", "mt5", "umt5"})  # bidirectional encoders: no instruction, no BOS


class TextEmbeddings(NamedTuple):
    """Encoded prompts.

    Attributes:
        embeddings: (B, L, D_txt), the LLM's last hidden state (after its final norm), in the model dtype.
        mask: (B, L) torch.int64, 1 for BOS and real tokens, 0 for padding (the tokenizer's attention-mask dtype,
            as in Sana and diffusers).
    """

    embeddings: torch.Tensor
    mask: torch.Tensor


class PromptTruncatedWarning(UserWarning):
    """Some prompts were longer than the token budget and lost tokens at the end."""


def _warn_on_cast_rope(model: Any) -> None:
    # `model.to(torch.bfloat16)` also casts the rotary inverse-frequency buffers, which `from_pretrained(dtype=...)`
    # (the official loading) keeps in fp32; bf16 frequencies shift every position's features.
    cast = [name for name, buf in model.named_buffers() if name.endswith("inv_freq") and buf.dtype != torch.float32]
    if cast:
        warnings.warn(
            f"rotary buffers {cast} are not fp32, so the model was probably cast with .to(dtype) after loading; "
            "features will differ from Sana's. Load with from_pretrained(..., dtype=...) instead",
            UserWarning,
            stacklevel=3,
        )


def _check_skip_layers(skip_layers: object, model: Any) -> int:
    layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "num_layers", None)
    if isinstance(skip_layers, bool) or not isinstance(skip_layers, int) or skip_layers < 0:
        raise ValueError(f"skip_layers must be an int >= 0, got {skip_layers!r}")
    if layers is not None and skip_layers >= layers:
        raise ValueError(
            f"skip_layers={skip_layers} leaves no block of this {layers}-layer model; use 0 to {layers - 1}"
        )
    return skip_layers


def _hidden_size(model: Any) -> int:
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text_config.hidden_size)


class TextEncoder:
    """A frozen LLM that turns prompts into Sana conditioning: (B, L, D_txt) embeddings and a (B, L) mask.

    The model is put in `eval()` with gradients off; encoding runs under `torch.no_grad()` (not inference mode, so the
    outputs can feed a training graph). Satisfies the umbrella's text-encoder protocol: `embed_dim`, `max_length`,
    `encode(prompts)`.

    Args:
        model: the decoder stack (e.g. `Gemma2Model`, or `Gemma2ForCausalLM.get_decoder()`), or a T5 encoder.
            Its output index 0 must be the final-norm hidden state.
        tokenizer: its tokenizer. Needs a pad token; decoder-only models also need a BOS token (prepended by us when
            the tokenizer does not add it itself).
        chi: the instruction prepended to conditional prompts: the official CHI by default, any string or list of
            lines (joined with "\\n"), or None / "" to switch CHI off. Must be off for T5 encoders.
        max_length: L, the number of token positions returned (300 in Sana).
        model_id: identity of the weights, used by the embedding cache (defaults to the config's `_name_or_path`).
        revision: the weights' revision (commit hash or any version string), also part of the cache key.
        expected_dim: if given, the D_txt the caller needs (the DiT's `caption_channels`); a different hidden size
            raises ValueError here rather than a shape error deep inside the DiT.
        on_truncate: what to do when prompts exceed the budget: "warn" (PromptTruncatedWarning with the counts),
            "error" (ValueError) or "ignore".
        skip_layers: which hidden state to return. 0 (Sana, and diffusers' `SanaPipeline`): the model's output, after
            its final norm. k >= 1: the residual stream before the last k blocks, without the final norm, as
            `clip_skip` / `hidden_state_skip_layer` elsewhere (Lumina uses 1, HunyuanVideo 2). A small LLM's last
            layers keep mostly what predicts the next token; earlier ones keep more of each token's own word.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        chi: str | Sequence[str] | None = COMPLEX_HUMAN_INSTRUCTION,
        max_length: int = MAX_LENGTH,
        model_id: str | None = None,
        revision: str | None = None,
        expected_dim: int | None = None,
        on_truncate: Literal["warn", "error", "ignore"] = "warn",
        skip_layers: int = 0,
    ) -> None:
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 (BOS plus at least one token), got {max_length!r}")
        if on_truncate not in ("warn", "error", "ignore"):
            raise ValueError(f"on_truncate must be 'warn', 'error' or 'ignore', got {on_truncate!r}")
        self.instruction = join_instruction(chi)
        self.is_t5 = getattr(model.config, "model_type", None) in T5_MODEL_TYPES
        self._check_tokenizer(tokenizer)
        self.embed_dim = _hidden_size(model)
        if expected_dim is not None and expected_dim != self.embed_dim:
            raise ValueError(
                f"the text model's hidden size is {self.embed_dim} but the caller expects D_txt = {expected_dim} "
                "(e.g. the DiT's caption_channels); load the matching LLM or build the DiT for this width"
            )
        self.max_length = max_length
        self.on_truncate = on_truncate
        self.skip_layers = _check_skip_layers(skip_layers, model)
        self.model_id = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.revision = revision
        _warn_on_cast_rope(model)
        self._model: Any = model.eval().requires_grad_(False)
        self._tokenizer: Any = tokenizer
        self._dtype: torch.dtype = next(model.parameters()).dtype
        # Tokenizers that do not add BOS themselves (Qwen's) get it prepended, so position 0 is always BOS.
        self.prepend_bos = not self.is_t5 and not _adds_bos(tokenizer)
        self.n_chi = instruction_length(tokenizer, self.instruction, prepend_bos=self.prepend_bos)

    def _check_tokenizer(self, tokenizer: Any) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; Sana right-pads every prompt to a fixed length. "
                "Set one first, e.g. tokenizer.pad_token = tokenizer.eos_token"
            )
        if self.is_t5:
            if self.instruction:
                raise ValueError("CHI needs a causal decoder-only LLM; pass chi=None for a T5 encoder")
            return
        if tokenizer.bos_token_id is None:
            raise ValueError(
                "the tokenizer has no BOS token; Sana's token selection keeps position 0 as BOS. "
                "Set tokenizer.bos_token first (for Qwen, e.g. '<|endoftext|>')"
            )

    # --- properties -------------------------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        if self._model is None:
            raise RuntimeError("this TextEncoder was freed with free(); load a new one to encode again")
        return self._model

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError("this TextEncoder was freed with free(); load a new one to encode again")
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The LLM's weight dtype (remembered after `free()`, so cache keys can still be computed)."""
        if self._model is not None:
            self._dtype = next(self._model.parameters()).dtype
        return self._dtype

    @property
    def sequence_length(self) -> int:
        """L_all: the number of tokens the LLM runs on for a conditional prompt."""
        return sequence_length(self.n_chi, self.max_length)

    # --- tokenization and encoding ----------------------------------------------------------------------------

    def tokenize(self, prompts: str | Sequence[str], *, conditional: bool = True) -> TokenBatch:
        """Tokenize prompts as `encode` (conditional) or `encode_negative` would, without running the model."""
        cleaned = check_prompts(prompts, allow_empty=not conditional)
        if conditional and self.instruction:
            texts = [self.instruction + p for p in cleaned]
            return tokenize(self.tokenizer, texts, self.sequence_length, prepend_bos=self.prepend_bos)
        return tokenize(self.tokenizer, cleaned, self.max_length, prepend_bos=self.prepend_bos)

    def encode(self, prompts: str | Sequence[str]) -> TextEmbeddings:
        """Encode conditional prompts: instruction prepended, BOS + last `L - 1` positions kept (spec §5.3).

        Args:
            prompts: B non-empty prompts (a single string counts as a batch of one). Only `strip()` is applied.

        Returns:
            embeddings (B, L, D_txt) in the model dtype on the model device, and mask (B, L) int64.
        """
        tokens = self.tokenize(prompts, conditional=True)
        self._report_truncation(tokens.dropped)
        hidden, mask = self._forward(tokens)  # (B, L_all, D), (B, L_all)
        if self.instruction:
            hidden, mask = select_tokens(hidden, mask, self.max_length)  # (B, L, D), (B, L)
        return TextEmbeddings(hidden, mask)

    def encode_negative(self, prompts: str | Sequence[str] = "") -> TextEmbeddings:
        """Encode negative prompts without the instruction, all `L` positions kept (spec §5.4). `""` is allowed."""
        tokens = self.tokenize(prompts, conditional=False)
        self._report_truncation(tokens.dropped)
        return TextEmbeddings(*self._forward(tokens))

    def null_embedding(self) -> TextEmbeddings:
        """The encoding of `""`: (1, L, D_txt) features and mask [1, 0, ..., 0].

        This is what the DiT stores in its `y_embedding` buffer (`.embeddings[0]`, shape (L, D_txt)) and swaps in for
        CFG dropout during training (spec §3.6); set it explicitly before training from scratch.
        """
        return self.encode_negative([""])

    @torch.no_grad()
    def _forward(self, tokens: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.device
        mask = tokens.attention_mask.to(device)
        kwargs: dict[str, Any] = {} if self.is_t5 else {"use_cache": False}
        if self.skip_layers:
            kwargs["output_hidden_states"] = True
        out = self.model(input_ids=tokens.input_ids.to(device), attention_mask=mask, **kwargs)
        # hidden_states[i]: the residual stream after i blocks (0: the embeddings), so -1 - k is k blocks earlier
        hidden = out.hidden_states[-1 - self.skip_layers] if self.skip_layers else out[0]  # (B, L_all, D)
        if hidden.shape[-1] != self.embed_dim:
            raise ValueError(f"the model returned width {hidden.shape[-1]}, its config says {self.embed_dim}")
        return hidden, mask

    def _report_truncation(self, dropped: tuple[int, ...]) -> None:
        cut = {i: n for i, n in enumerate(dropped) if n}
        if not cut or self.on_truncate == "ignore":
            return
        message = (
            f"{len(cut)} of {len(dropped)} prompt(s) exceed the {self.max_length}-token limit and were truncated; "
            f"tokens dropped per prompt index: {cut}"
        )
        if self.on_truncate == "error":
            raise ValueError(message)
        warnings.warn(message, PromptTruncatedWarning, stacklevel=3)

    # --- cache identity ---------------------------------------------------------------------------------------

    def fingerprint(self, *, conditional: bool = True) -> dict[str, str]:
        """What the embeddings depend on besides the prompt; the embedding cache hashes it into every key."""
        return {
            "model_id": self.model_id,
            "revision": self.revision or "",
            "instruction": self.instruction if conditional else "",
            "max_length": str(self.max_length),
            "dtype": str(self.dtype).removeprefix("torch."),
            "bos": "prepended" if self.prepend_bos else "tokenizer",
            **({"skip_layers": str(self.skip_layers)} if self.skip_layers else {}),  # 0 keeps older caches' keys
        }

    # --- memory -----------------------------------------------------------------------------------------------

    def to(self, device: torch.device | str) -> TextEncoder:
        """Move the LLM to `device` (e.g. onto the GPU just before encoding); returns self."""
        self.model.to(device)
        return self

    def offload(self) -> TextEncoder:
        """Move the LLM to the CPU and release the accelerator's cached blocks. The LLM is most of inference memory
        (Gemma-2-2B is about 5.2 GB in bf16); offload it once prompts are encoded. Returns self."""
        self.model.to("cpu")
        _empty_device_cache()
        return self

    def free(self) -> None:
        """Drop the LLM and tokenizer entirely (CPU and accelerator memory). Encoding afterwards raises
        RuntimeError; a `CachedTextEncoder` over this encoder still serves cached prompts."""
        self._model = None
        self._tokenizer = None
        gc.collect()
        _empty_device_cache()


def _empty_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def encode_for_guidance(
    encoder: Any,
    prompts: str | Sequence[str],
    negative_prompt: str = "",
    *,
    uncond_mask: Literal["conditional", "own"] = "conditional",
) -> tuple[TextEmbeddings, TextEmbeddings]:
    """Encode the conditional and unconditional branches for classifier-free guidance.

    The unconditional branch is `negative_prompt` encoded without the instruction at full length and repeated to the
    batch. Its mask follows Sana's native inference by default: the null features are attended through the
    *conditional* mask (`uncond_mask="conditional"`, spec §3.6 and §11.3), which is also how training applies CFG
    dropout. diffusers pairs them with the negative prompt's own mask instead (`uncond_mask="own"`).

    Returns:
        (cond, uncond), each TextEmbeddings of shapes (B, L, D_txt) and (B, L).
    """
    if uncond_mask not in ("conditional", "own"):
        raise ValueError(f"uncond_mask must be 'conditional' or 'own', got {uncond_mask!r}")
    cond = encoder.encode(prompts)
    neg = encoder.encode_negative([negative_prompt])  # (1, L, D), (1, L)
    batch = cond.embeddings.shape[0]
    neg_embeddings = neg.embeddings.to(cond.embeddings.device).expand(batch, -1, -1)  # (B, L, D)
    mask = cond.mask if uncond_mask == "conditional" else neg.mask.to(cond.mask.device).expand(batch, -1)  # (B, L)
    return cond, TextEmbeddings(neg_embeddings, mask)


# --- loading ------------------------------------------------------------------------------------------------------


def _local_revision(path: Path) -> str:
    """A cheap identity for a local model folder: names, sizes and mtimes of its files (no weight hashing)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return "local-" + digest.hexdigest()[:16]


def _revision_of(name_or_path: str | Path, revision: str | None, config: Any) -> str:
    if revision:
        return revision
    if Path(name_or_path).is_dir():
        return _local_revision(Path(name_or_path))
    return getattr(config, "_commit_hash", None) or "main"


def load_text_encoder(
    name_or_path: str | Path = DEFAULT_MODEL,
    *,
    chi: str | Sequence[str] | None = COMPLEX_HUMAN_INSTRUCTION,
    max_length: int = MAX_LENGTH,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    revision: str | None = None,
    expected_dim: int | None = None,
    on_truncate: Literal["warn", "error", "ignore"] = "warn",
    skip_layers: int = 0,
    **model_kwargs: Any,
) -> TextEncoder:
    """Load a decoder-only LLM as a Sana text encoder (only the decoder stack, via `AutoModel`; no LM head).

    Works for Gemma-2 (the default, Sana's `gemma-2-2b-it` mirror), Gemma-3, Qwen2/2.5/3 and other `AutoModel`
    decoders. bf16 is the default and the right dtype for Gemma: its activations overflow fp16. A local folder is
    used as-is; Hub names need network access (set `HF_HUB_OFFLINE=1` to forbid it).

    Args:
        name_or_path: Hub id or local folder with the model and its tokenizer.
        chi: the instruction, as in `TextEncoder`.
        max_length: L, as in `TextEncoder`.
        dtype: weight dtype.
        device: where the LLM lives.
        revision: Hub revision; for local folders, a version string for the cache (default: derived from the files).
        expected_dim: the D_txt the caller needs, as in `TextEncoder`.
        on_truncate: "warn", "error" or "ignore", as in `TextEncoder`.
        skip_layers: which hidden state, as in `TextEncoder` (0: the final one, Sana's).
        **model_kwargs: passed to `AutoModel.from_pretrained` (e.g. `attn_implementation="sdpa"`).
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    if getattr(config, "model_type", None) in T5_MODEL_TYPES or getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{name_or_path} is an encoder-decoder model ({config.model_type}); use load_t5_encoder")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    model = AutoModel.from_pretrained(name_or_path, revision=revision, dtype=dtype, **model_kwargs).to(device)
    return TextEncoder(
        model,
        tokenizer,
        chi=chi,
        max_length=max_length,
        model_id=str(name_or_path),
        revision=_revision_of(name_or_path, revision, config),
        expected_dim=expected_dim,
        on_truncate=on_truncate,
        skip_layers=skip_layers,
    )


def load_t5_encoder(
    name_or_path: str | Path,
    *,
    max_length: int = MAX_LENGTH,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    revision: str | None = None,
    expected_dim: int | None = None,
    on_truncate: Literal["warn", "error", "ignore"] = "warn",
) -> TextEncoder:
    """Load a T5-family encoder (T5, mT5, UMT5; PixArt-style conditioning): no instruction, all L positions kept."""
    from transformers import AutoConfig, AutoTokenizer, MT5EncoderModel, T5EncoderModel, UMT5EncoderModel

    config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    encoder_class = {"t5": T5EncoderModel, "mt5": MT5EncoderModel, "umt5": UMT5EncoderModel}.get(config.model_type)
    if encoder_class is None:
        raise ValueError(f"{name_or_path} is a {config.model_type} model, not T5-family; use load_text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    model = encoder_class.from_pretrained(name_or_path, revision=revision, dtype=dtype).to(device)
    return TextEncoder(
        model,
        tokenizer,
        chi=None,
        max_length=max_length,
        model_id=str(name_or_path),
        revision=_revision_of(name_or_path, revision, config),
        expected_dim=expected_dim,
        on_truncate=on_truncate,
    )
