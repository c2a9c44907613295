"""The instruction text must be byte-exact: it conditions every prompt the released checkpoints were trained on."""

from __future__ import annotations

import hashlib
import inspect

import pytest

from sana_text import COMPLEX_HUMAN_INSTRUCTION, COMPLEX_HUMAN_INSTRUCTION_LINES, join_instruction

# SHA-256 of the eight lines of spec §5.2 joined with "\n" (double-quoted "Enhanced prompt", trailing space).
CHI_SHA256 = "62b9ab89eebb0ac5ee4d264bf96bf19d2b81f504bc3852500efeaf5a34d638b1"


def test_instruction_is_byte_exact() -> None:
    assert hashlib.sha256(COMPLEX_HUMAN_INSTRUCTION.encode()).hexdigest() == CHI_SHA256
    assert len(COMPLEX_HUMAN_INSTRUCTION_LINES) == 8
    assert "\n".join(COMPLEX_HUMAN_INSTRUCTION_LINES) == COMPLEX_HUMAN_INSTRUCTION


def test_instruction_shape_details() -> None:
    assert COMPLEX_HUMAN_INSTRUCTION.startswith('Given a user prompt, generate an "Enhanced prompt" that')
    assert COMPLEX_HUMAN_INSTRUCTION.endswith("\nUser Prompt: ")  # the prompt follows the trailing space directly
    assert "'" not in COMPLEX_HUMAN_INSTRUCTION


def test_differs_from_diffusers_default_only_by_quotes() -> None:
    """diffusers' default list writes 'Enhanced prompt' with single quotes; everything else is identical."""
    from diffusers import SanaPipeline

    default = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    ours = [line.replace('"Enhanced prompt"', "'Enhanced prompt'") for line in COMPLEX_HUMAN_INSTRUCTION_LINES]
    assert list(default) == ours
    assert list(default) != list(COMPLEX_HUMAN_INSTRUCTION_LINES)


@pytest.mark.parametrize(
    ("chi", "expected"),
    [(None, ""), ("", ""), ("abc", "abc"), (["a", "b "], "a\nb "), (("x",), "x"), ([], "")],
)
def test_join_instruction(chi, expected) -> None:
    assert join_instruction(chi) == expected


@pytest.mark.parametrize("bad", [3, b"bytes", ["ok", 3], {"a": 1}])
def test_join_instruction_rejects_non_strings(bad) -> None:
    with pytest.raises(TypeError, match="chi must be"):
        join_instruction(bad)
