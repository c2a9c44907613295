"""Preprocessing is strip-only (user-needs #15) and aspect-ratio flags are parsed out as the official scripts do."""

from __future__ import annotations

import pytest

from sana_text import ParsedPrompt, check_prompts, parse_prompt, preprocess_prompt


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  A Cat On A Mat \n", "A Cat On A Mat"),  # case kept: no lowercasing
        ("一只可爱的猫 🐱", "一只可爱的猫 🐱"),  # CJK and emoji kept: no caption cleaning
        ("a  b\tc", "a  b\tc"),  # inner whitespace kept
        ("visit https://example.com <b>now</b>", "visit https://example.com <b>now</b>"),  # no URL/HTML stripping
    ],
)
def test_preprocess_is_strip_only(raw: str, clean: str) -> None:
    assert preprocess_prompt(raw) == clean


def test_check_prompts_wraps_a_single_string() -> None:
    assert check_prompts(" a cat ", allow_empty=False) == ["a cat"]
    assert check_prompts(("a", "b"), allow_empty=False) == ["a", "b"]


@pytest.mark.parametrize("bad", [None, 3, b"a cat", [b"a cat"], ["ok", None], {"a cat"}])
def test_check_prompts_rejects_non_strings(bad) -> None:
    with pytest.raises(TypeError):
        check_prompts(bad, allow_empty=False)


def test_check_prompts_rejects_empty() -> None:
    with pytest.raises(ValueError, match="empty sequence"):
        check_prompts([], allow_empty=True)
    with pytest.raises(ValueError, match=r"index \[1\] are empty"):
        check_prompts(["a", "   "], allow_empty=False)
    assert check_prompts(["", " "], allow_empty=True) == ["", ""]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a cat", ParsedPrompt("a cat", None, None)),
        ("a cat --ar 16:9", ParsedPrompt("a cat", 16 / 9, None)),
        ("a cat --aspect_ratio 1:2", ParsedPrompt("a cat", 0.5, None)),
        ("a cat --hw 768:1344", ParsedPrompt("a cat", None, (768, 1344))),
        ("a cat --ar 3:4 --hw 600:800", ParsedPrompt("a cat", 0.75, (600, 800))),
        ("a cat --hw 600:800 trailing words --ar 3:4", ParsedPrompt("a cat", 0.75, (600, 800))),
        ("a cat --ar 1:2 --aspect_ratio 2:1", ParsedPrompt("a cat", 2.0, None)),  # --aspect_ratio wins
        ("a cat --ar 1:2 --ar 2:1", ParsedPrompt("a cat", 0.5, None)),  # first occurrence counts
        ("  spaced   --ar 1:1  ", ParsedPrompt("spaced", 1.0, None)),
        ("trending on --artstation, 4k", ParsedPrompt("trending on --artstation, 4k", None, None)),
    ],
)
def test_parse_prompt(raw: str, expected: ParsedPrompt) -> None:
    assert parse_prompt(raw) == expected


@pytest.mark.parametrize("raw", ["a cat --ar", "a cat --ar wide", "a cat --hw 1.5:1", "a cat --ar 16/9", "x --hw 0:5"])
def test_parse_prompt_rejects_malformed_flags(raw: str) -> None:
    with pytest.raises(ValueError, match="--"):
        parse_prompt(raw)


def test_parse_prompt_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        parse_prompt(None)  # type: ignore[arg-type]
