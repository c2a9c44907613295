"""sana_text: Sana's text encoder, a frozen decoder-only LLM (Gemma-2-2B-IT by default) with Complex Human Instructions.

Prompts become conditioning for the DiT: `embeddings (B, L, D_txt)` in the LLM's dtype and `mask (B, L)` int64
(1 = BOS or real token, 0 = padding), with L = 300 and D_txt = 2304 for Gemma-2-2B. Conditional prompts are
encoded with the official instruction prepended and Sana's token selection (BOS + the last L - 1 positions, spec §5.3);
negative prompts and the null embedding without it (spec §5.4). Preprocessing is `strip()` only, as in Sana.

    from sana_text import load_text_encoder
    encoder = load_text_encoder()                   # Efficient-Large-Model/gemma-2-2b-it, bf16
    y, mask = encoder.encode(["a cat on a windowsill"])
    encoder.offload()                               # the LLM is most of inference memory

Shape glossary (shared by every package): B batch, C pixel channels (3), H, W pixel height and width, C_z latent
channels (32), h, w latent height and width, f autoencoder compression (32), p DiT patch size, N image tokens,
D model width, L text tokens (300), D_txt text-encoder width (2304 for Gemma-2-2B), nh/hd attention heads and head
width, K timesteps in a schedule.
"""

from .cache import CachedTextEncoder, EmbeddingCache, cache_key
from .chi import COMPLEX_HUMAN_INSTRUCTION, COMPLEX_HUMAN_INSTRUCTION_LINES, join_instruction
from .encoder import (
    DEFAULT_MODEL,
    MAX_LENGTH,
    PromptTruncatedWarning,
    TextEmbeddings,
    TextEncoder,
    encode_for_guidance,
    load_t5_encoder,
    load_text_encoder,
)
from .prompts import ParsedPrompt, check_prompts, parse_prompt, preprocess_prompt
from .tokens import TokenBatch, instruction_length, select_index, select_tokens, sequence_length, tokenize

__version__ = "0.1.0"

__all__ = (
    # encoding
    "TextEncoder",
    "TextEmbeddings",
    "load_text_encoder",
    "load_t5_encoder",
    "encode_for_guidance",
    "PromptTruncatedWarning",
    "DEFAULT_MODEL",
    "MAX_LENGTH",
    # the instruction
    "COMPLEX_HUMAN_INSTRUCTION",
    "COMPLEX_HUMAN_INSTRUCTION_LINES",
    "join_instruction",
    # prompts
    "ParsedPrompt",
    "parse_prompt",
    "preprocess_prompt",
    "check_prompts",
    # tokens
    "TokenBatch",
    "tokenize",
    "instruction_length",
    "sequence_length",
    "select_index",
    "select_tokens",
    # cache
    "EmbeddingCache",
    "CachedTextEncoder",
    "cache_key",
)
