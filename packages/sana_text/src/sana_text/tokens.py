"""Tokenization and Sana's token selection (spec §5.3), as pure functions of a tokenizer.

With an instruction (CHI) of `n_chi` tokens, BOS included, `instruction + prompt` is tokenized to exactly
`L_all = n_chi + max_length - 2` tokens, right-padded or truncated at the end. The "2" is BOS plus the instruction's
trailing-space token, which SentencePiece merges into the prompt's first word. After the LLM has run on all `L_all`
positions, Sana keeps position 0 (BOS) and the last `max_length - 1` positions, and slices the mask the same way:
the instruction tokens drop out of the conditioning, but causal attention has already let them shape every prompt
token. Without an instruction, the prompt is tokenized to `max_length` and every position is kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch

__all__ = ["TokenBatch", "instruction_length", "select_index", "select_tokens", "sequence_length", "tokenize"]


class TokenBatch(NamedTuple):
    """Tokenized prompts, before the LLM runs.

    Attributes:
        input_ids: (B, L_all) int64.
        attention_mask: (B, L_all) int64, 1 for BOS and real tokens, 0 for padding.
        dropped: per prompt, how many tokens the length limit cut off the end (0 when the prompt fits).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    dropped: tuple[int, ...]


def select_index(max_length: int) -> list[int]:
    """The positions Sana keeps after a CHI forward: BOS and the last `max_length - 1` (negative indices)."""
    return [0, *range(-max_length + 1, 0)]


def select_tokens(hidden: torch.Tensor, mask: torch.Tensor, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `select_index` to hidden states (B, L_all, D) and their mask (B, L_all) -> (B, L, D), (B, L)."""
    index = select_index(max_length)
    return hidden[:, index], mask[:, index]  # (B, L, D), (B, L)


def sequence_length(n_chi: int, max_length: int) -> int:
    """`L_all`, the tokenized length of `instruction + prompt`; `max_length` when CHI is off (`n_chi == 0`)."""
    return n_chi + max_length - 2 if n_chi else max_length


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def instruction_length(tokenizer: Any, instruction: str, *, prepend_bos: bool = False) -> int:
    """`n_chi`: the token count of the instruction alone, BOS included (Sana measures it with `tokenizer.encode`).

    `prepend_bos` counts the BOS that `tokenize` prepends for tokenizers that do not add one themselves.
    Returns 0 for an empty instruction (CHI off).
    """
    if not instruction:
        return 0
    return len(tokenizer.encode(instruction)) + int(prepend_bos)


@contextmanager
def _truncate_right(tokenizer: Any) -> Iterator[None]:
    # Truncation must cut the end of the prompt, never the instruction at the front; the per-call
    # `truncation_side` argument is ignored by some tokenizer backends, so set the attribute and restore it.
    saved = tokenizer.truncation_side
    tokenizer.truncation_side = "right"
    try:
        yield
    finally:
        tokenizer.truncation_side = saved


def tokenize(tokenizer: Any, texts: Sequence[str], length: int, *, prepend_bos: bool = False) -> TokenBatch:
    """Tokenize to exactly `length` tokens: special tokens added, right padding, truncation at the end.

    Args:
        tokenizer: a Hugging Face tokenizer with a pad token.
        texts: the full texts (instruction + prompt), already preprocessed.
        length: `L_all`.
        prepend_bos: put `tokenizer.bos_token_id` in front of the tokenizer's own output (for tokenizers that do
            not add BOS themselves, such as Qwen's); the text then gets `length - 1` tokens.

    Returns:
        the token batch; `dropped` counts the tokens removed by truncation, per text.
    """
    budget = length - int(prepend_bos)
    with _truncate_right(tokenizer):
        batch = tokenizer(
            list(texts),
            padding="max_length",
            max_length=budget,
            truncation=True,
            add_special_tokens=True,
            padding_side="right",
            return_tensors="pt",
        )
    full_lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    dropped = tuple(max(0, n - budget) for n in full_lengths)
    input_ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, budget)
    if prepend_bos:
        bos = torch.full((input_ids.shape[0], 1), tokenizer.bos_token_id, dtype=input_ids.dtype)
        input_ids = torch.cat([bos, input_ids], dim=1)  # (B, length)
        mask = torch.cat([torch.ones_like(bos), mask], dim=1)  # (B, length)
    return TokenBatch(input_ids, mask, dropped)
