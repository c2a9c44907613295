# ruff: noqa: E501  (the instruction lines are verbatim and must not be wrapped)
"""The Complex Human Instruction (CHI) prepended to every conditional prompt (Sana paper §3.1, spec §5.2).

The lines are verbatim from the Sana training configs (`text_encoder.chi_prompt`), double-quoted "Enhanced prompt"
included: diffusers' default list writes 'Enhanced prompt' with single quotes, which tokenizes differently from
what the released checkpoints were trained with. The prompt is appended directly after the last line, whose trailing
space is part of the instruction.
"""

from __future__ import annotations

from collections.abc import Sequence

COMPLEX_HUMAN_INSTRUCTION_LINES: tuple[str, ...] = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:',
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
)

# The eight lines joined with "\n": the exact prefix the official code puts in front of each prompt.
COMPLEX_HUMAN_INSTRUCTION: str = "\n".join(COMPLEX_HUMAN_INSTRUCTION_LINES)


def join_instruction(chi: str | Sequence[str] | None) -> str:
    """Normalise an instruction given as a string, as config-style lines (joined with "\n"), or None/"" (CHI off).

    Returns "" when CHI is off. Raises TypeError for anything that is not a string or a sequence of strings.
    """
    if chi is None:
        return ""
    if isinstance(chi, str):
        return chi
    if isinstance(chi, Sequence) and all(isinstance(line, str) for line in chi):
        return "\n".join(chi)
    raise TypeError(f"chi must be a string, a sequence of strings or None, got {type(chi).__name__}")
