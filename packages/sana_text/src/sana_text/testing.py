"""Test helpers for this package and for downstream packages' tests. Nothing here downloads anything.

- `FakeTextEncoder`: the text-encoder protocol without a model or tokenizer files. Each whitespace-separated word
  gets a fixed random vector seeded by its SHA-256, so outputs are deterministic, batch-invariant and differ between
  prompts.
- `tiny_tokenizer`, `tiny_gemma2`, `tiny_decoder`, `tiny_t5`, `tiny_text_encoder`, `save_tiny_llm`: a real BPE
  tokenizer trained in memory with the `tokenizers` library and 1-layer random Hugging Face models, for exercising the
  real loading and encoding code paths offline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from .chi import COMPLEX_HUMAN_INSTRUCTION, COMPLEX_HUMAN_INSTRUCTION_LINES
from .encoder import TextEmbeddings, TextEncoder
from .prompts import check_prompts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "TINY_CORPUS",
    "FakeTextEncoder",
    "save_tiny_llm",
    "tiny_decoder",
    "tiny_gemma2",
    "tiny_t5",
    "tiny_text_encoder",
    "tiny_tokenizer",
]


# --- the fake encoder ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _token_vector(token: str, dim: int) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "little")
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))  # (D,) fp32


class FakeTextEncoder:
    """A deterministic stand-in for `TextEncoder` with the same protocol and shapes; no model, no tokenizer files.

    Tokens are `<bos>` followed by the prompt's whitespace-separated words, truncated to `max_length` and padded
    with `<pad>`. Each token's feature vector is a standard normal draw seeded by the SHA-256 of the token (the
    conditional branch salts the words, mimicking the instruction's influence), so equal words give equal vectors.

    Args:
        embed_dim: D_txt.
        max_length: L.
        dtype: dtype of the embeddings.
        device: where outputs live.
    """

    def __init__(
        self,
        embed_dim: int = 32,
        max_length: int = 16,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if embed_dim < 1 or max_length < 2:
            raise ValueError(f"need embed_dim >= 1 and max_length >= 2, got {embed_dim}, {max_length}")
        self.embed_dim = embed_dim
        self.max_length = max_length
        self.dtype = dtype
        self.device = torch.device(device)

    def _encode(self, prompts: list[str], salt: str) -> TextEmbeddings:
        rows, masks = [], []
        for prompt in prompts:
            tokens = ["<bos>", *(salt + word for word in prompt.split())][: self.max_length]
            tokens += ["<pad>"] * (self.max_length - len(tokens))
            rows.append(torch.stack([_token_vector(t, self.embed_dim) for t in tokens]))  # (L, D)
            masks.append(torch.tensor([t != "<pad>" for t in tokens], dtype=torch.int64))  # (L,)
        embeddings = torch.stack(rows).to(self.device, self.dtype)  # (B, L, D)
        return TextEmbeddings(embeddings, torch.stack(masks).to(self.device))

    def encode(self, prompts: str | Sequence[str]) -> TextEmbeddings:
        """(B, L, D_txt) embeddings and (B, L) int64 mask for non-empty prompts."""
        return self._encode(check_prompts(prompts, allow_empty=False), salt="chi:")

    def encode_negative(self, prompts: str | Sequence[str] = "") -> TextEmbeddings:
        """As `encode`, without the conditional salt; `""` gives mask [1, 0, ..., 0]."""
        return self._encode(check_prompts(prompts, allow_empty=True), salt="")

    def null_embedding(self) -> TextEmbeddings:
        """The encoding of `""`: (1, L, D_txt) and (1, L)."""
        return self.encode_negative([""])

    def fingerprint(self, *, conditional: bool = True) -> dict[str, str]:
        """Cache identity, as `TextEncoder.fingerprint`."""
        return {
            "model_id": f"fake-{self.embed_dim}",
            "revision": "",
            "instruction": "chi:" if conditional else "",
            "max_length": str(self.max_length),
            "dtype": str(self.dtype).removeprefix("torch."),
        }


# --- a real tokenizer, trained in memory --------------------------------------------------------------------------

TINY_CORPUS: tuple[str, ...] = (
    *COMPLEX_HUMAN_INSTRUCTION_LINES,
    COMPLEX_HUMAN_INSTRUCTION,
    "a cat sleeping on a warm sunny windowsill",
    "a busy city street at dusk with glowing street lamps",
    "a photo of an astronaut riding a horse on the moon",
    "a red car parked next to a blue house, digital art",
    "portrait of an old man with a long white beard, oil painting",
    "a bowl of fruit on a wooden table, soft light",
)


def tiny_tokenizer(
    *,
    vocab_size: int = 600,
    bos_token: str | None = "<bos>",
    pad_token: str | None = "<pad>",
    eos_token: str = "<eos>",
    add_bos: bool = True,
    append_eos: bool = False,
) -> PreTrainedTokenizerFast:
    """A Gemma-style BPE tokenizer trained on `TINY_CORPUS`: byte fallback (any Unicode, no unknowns), spaces as
    "▁", no pre-tokenization, specials `<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3.

    Args:
        vocab_size: BPE vocabulary size, specials and the 256 byte tokens included.
        bos_token, pad_token: None leaves the tokenizer without one (to test the errors).
        eos_token: the EOS token.
        add_bos: prepend BOS, as Gemma does (False mimics Qwen).
        append_eos: append EOS, as T5 does.
    """
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=specials, show_progress=False)
    trained.train_from_iterator(TINY_CORPUS, trainer)
    # The 256 byte tokens are ordinary vocabulary entries (as in Gemma), so byte fallback covers any Unicode text.
    bpe = json.loads(trained.to_str())["model"]
    vocab = {**bpe["vocab"], **{f"<0x{i:02X}>": len(bpe["vocab"]) + i for i in range(256)}}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.add_special_tokens(specials)
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    bos = bos_token if add_bos and bos_token else None
    eos = eos_token if append_eos else None
    single = " ".join(t for t in (bos, "$A", eos) if t)
    ids = [(t, tokenizer.token_to_id(t)) for t in (bos, eos) if t]
    tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=f"{single} $B", special_tokens=ids)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token, unk_token="<unk>"
    )


# --- tiny random models -------------------------------------------------------------------------------------------

_TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
_IDS = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}


def _build(config: Any, seed: int, dtype: torch.dtype) -> PreTrainedModel:
    # from_config(dtype=) keeps rotary buffers in fp32 as from_pretrained(dtype=) does; `.to(dtype)` would cast them.
    from transformers import AutoModelForCausalLM, T5EncoderModel

    torch.manual_seed(seed)
    if config.model_type == "t5":  # no rotary buffers
        return T5EncoderModel(config).to(dtype).eval()
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def tiny_gemma2(
    *,
    vocab_size: int = 600,
    hidden_size: int = 32,
    num_layers: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """A random `Gemma2ForCausalLM` (1 layer by default); `.get_decoder()` is the `Gemma2Model` Sana uses."""
    from transformers import Gemma2Config

    config = Gemma2Config(
        vocab_size=vocab_size,
        **{**_TINY, "hidden_size": hidden_size, "num_hidden_layers": num_layers},
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        **_IDS,
    )
    return _build(config, seed, dtype)


def tiny_decoder(
    family: Literal["gemma2", "gemma3", "qwen2"],
    *,
    vocab_size: int = 600,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """A 1-layer random causal LM (`*ForCausalLM`) of one of several families, for the `AutoModel` loading path."""
    from transformers import Gemma3TextConfig, Qwen2Config

    if family == "gemma2":
        return tiny_gemma2(vocab_size=vocab_size, seed=seed, dtype=dtype)
    common = {**_TINY, "vocab_size": vocab_size, "num_key_value_heads": 1, "max_position_embeddings": 1024, **_IDS}
    if family == "gemma3":
        return _build(Gemma3TextConfig(**common, head_dim=16), seed, dtype)
    if family == "qwen2":
        return _build(Qwen2Config(**common), seed, dtype)
    raise ValueError(f"unknown family {family!r}; expected 'gemma2', 'gemma3' or 'qwen2'")


def tiny_t5(*, vocab_size: int = 600, seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A 1-layer random `T5EncoderModel`."""
    from transformers import T5Config

    config = T5Config(
        vocab_size=vocab_size, d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1
    )
    return _build(config, seed, dtype)


def tiny_text_encoder(
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    chi: str | Sequence[str] | None = COMPLEX_HUMAN_INSTRUCTION,
    **kwargs: Any,
) -> TextEncoder:
    """A `TextEncoder` over a tiny random `Gemma2Model` and `tiny_tokenizer()`, built in memory (no files).

    `kwargs` go to `TextEncoder` (e.g. `max_length`, `on_truncate`).
    """
    tokenizer = tiny_tokenizer()
    model = tiny_gemma2(vocab_size=len(tokenizer), seed=seed, dtype=dtype).get_decoder()
    return TextEncoder(model, tokenizer, chi=chi, model_id=f"tiny-gemma2-seed{seed}", **kwargs)


def save_tiny_llm(
    path: str | Path,
    family: Literal["gemma2", "gemma3", "qwen2", "t5"] = "gemma2",
    *,
    seed: int = 0,
    **tokenizer_kwargs: Any,
) -> Path:
    """Save a tiny random model of `family` and a matching `tiny_tokenizer` to `path`, as a Hub folder would hold
    them; load it back with `load_text_encoder(path)` (or `load_t5_encoder` for "t5"). Returns `path`."""
    path = Path(path)
    defaults: dict[str, Any] = {"add_bos": False} if family == "qwen2" else {}
    if family == "t5":
        defaults = {"bos_token": None, "add_bos": False, "append_eos": True}
    tokenizer = tiny_tokenizer(**{**defaults, **tokenizer_kwargs})
    vocab_size = len(tokenizer)
    model = (
        tiny_t5(vocab_size=vocab_size, seed=seed)
        if family == "t5"
        else tiny_decoder(family, vocab_size=vocab_size, seed=seed)
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
