"""Prompt preprocessing as the official Sana code does it (spec §5.6, §8.4).

Sana strips whitespace and nothing else: no lowercasing and no caption cleaning, so Chinese, emoji and case survive
(diffusers lowercases, and with `clean_caption=True` it strips CJK ranges, which breaks the MultiLing checkpoints).
Aspect-ratio flags typed into a prompt (`--ar 16:9`, `--aspect_ratio 9:16`, `--hw 768:1344`) are parsed out before
encoding; choosing the bucket for a ratio is the caller's business.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["ParsedPrompt", "check_prompts", "parse_prompt", "preprocess_prompt"]

# A flag is one of the three names as a whole word; its value is the next whitespace-delimited item.
_FLAG = re.compile(r"--(aspect_ratio|ar|hw)(?![\w-])(?:\s+(\S+))?")
_VALUE = re.compile(r"(\d+):(\d+)")


class ParsedPrompt(NamedTuple):
    """A prompt with its aspect-ratio flags parsed out.

    Attributes:
        prompt: the text before the first flag, stripped.
        aspect_ratio: height / width from `--aspect_ratio H:W` or `--ar H:W` (`--aspect_ratio` wins, as in Sana);
            None when neither flag is present.
        hw: the custom `(height, width)` from `--hw H:W`, or None.
    """

    prompt: str
    aspect_ratio: float | None
    hw: tuple[int, int] | None


def preprocess_prompt(prompt: object) -> str:
    """Sana's text preprocessing: `prompt.strip()` and nothing else. Raises TypeError for a non-string."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a str, got {type(prompt).__name__}: {prompt!r:.80}")
    return prompt.strip()


def check_prompts(prompts: str | Sequence[str], *, allow_empty: bool) -> list[str]:
    """Validate and preprocess a batch of prompts; a single string counts as a batch of one.

    Args:
        prompts: the prompts.
        allow_empty: whether an empty (or all-whitespace) prompt is legal. It is for negative prompts, where `""` is
            the null prompt; a conditional prompt that is empty is almost always a data bug.

    Returns:
        the stripped prompts, as a new list.

    Raises:
        TypeError: `prompts` is not a string or a sequence of strings (bytes and None included).
        ValueError: the batch is empty, or a prompt is empty while `allow_empty` is False.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a str or a sequence of str, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts is an empty sequence; pass at least one prompt")
    cleaned = [preprocess_prompt(p) for p in prompts]
    empty = [i for i, p in enumerate(cleaned) if not p]
    if empty and not allow_empty:
        raise ValueError(
            f"prompt(s) at index {empty} are empty after strip(); encode the unconditional branch with "
            "encode_negative() / null_embedding() instead"
        )
    return cleaned


def _ratio_value(flag: str, value: str | None) -> tuple[int, int]:
    match = _VALUE.fullmatch(value or "")
    if match is None:
        raise ValueError(f"--{flag} needs a value of the form H:W with positive integers, got {value!r}")
    h, w = int(match[1]), int(match[2])
    if h == 0 or w == 0:
        raise ValueError(f"--{flag} {value}: height and width must be positive")
    return h, w


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Split the aspect-ratio flags off a prompt (Sana's `prepare_prompt_ar`, without the bucket lookup).

    Everything from the first flag onwards is cut off the prompt, as in the official scripts. Flags are recognised
    as whole words only, so `--artstation` in a prompt is text, not a truncated `--ar` (the official code would cut
    the prompt there). The first occurrence of each flag counts.

    Raises:
        TypeError: `prompt` is not a string.
        ValueError: a flag has no `H:W` value, or a zero side.
    """
    prompt = preprocess_prompt(prompt)
    flags = list(_FLAG.finditer(prompt))
    if not flags:
        return ParsedPrompt(prompt, None, None)
    values: dict[str, tuple[int, int]] = {}
    for match in flags:
        values.setdefault(match[1], _ratio_value(match[1], match[2]))
    ratio = values.get("aspect_ratio") or values.get("ar")
    aspect_ratio = ratio[0] / ratio[1] if ratio else None
    return ParsedPrompt(prompt[: flags[0].start()].strip(), aspect_ratio, values.get("hw"))
