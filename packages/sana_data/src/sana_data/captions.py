"""Choosing one caption per image among several (spec §6.2).

Three rules, each a small frozen dataclass:

- `PowerRule` — the official code's `weighted_sample_clipscore` (the default): candidates are the caption types
  with a clip score ≥ `threshold` (25); weights are `s_i ** (1 / max(tau, 0.01))` (τ = 0.1 gives `s_i ** 10`),
  normalised. No candidate: the highest-scoring type. No clip score at all: `"prompt"` with score 0.
- `SoftmaxRule` — the paper's formula `P(c_i) = exp(s_i / τ) / Σ_j exp(s_j / τ)` over every scored caption
  (optionally thresholded like the power rule), with the same fallbacks.
- `ProportionRule` — fixed weights per caption type (`caption_proportion` in the official configs); a drawn
  type the sample lacks falls back to `"prompt"`.

`caption_probabilities` gives the exact distribution a rule induces; `select_caption` draws from it with an
explicit `random.Random` (only its `random()` method, whose sequence Python guarantees across versions).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from .records import DEFAULT_CAPTION

MIN_TAU = 0.01  # the official code clamps the temperature from below with max(tau, 0.01)


@dataclass(frozen=True)
class PowerRule:
    """Official clip-score rule: weights `s ** (1 / max(tau, 0.01))` over scores ≥ threshold."""

    tau: float = 0.1
    threshold: float = 25.0


@dataclass(frozen=True)
class SoftmaxRule:
    """Paper rule: weights `exp(s / tau)`; `threshold=None` keeps every scored caption."""

    tau: float = 0.1
    threshold: float | None = None


@dataclass(frozen=True)
class ProportionRule:
    """Fixed proportions per caption type, e.g. `{"prompt": 0.5, "vlm": 0.5}`."""

    weights: Mapping[str, float] = field(default_factory=lambda: {DEFAULT_CAPTION: 1.0})


CaptionRule = PowerRule | SoftmaxRule | ProportionRule


class CaptionChoice(NamedTuple):
    caption_type: str
    caption: str
    clip_score: float  # the chosen caption's raw score (0.0 when none is known, as the official code)


def _scored(captions: Mapping[str, str], scores: Mapping[str, float]) -> dict[str, float]:
    """Clip scores restricted to caption types the sample has (official step 1)."""
    return {t: float(s) for t, s in scores.items() if t in captions}


def _normalise(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def caption_probabilities(
    captions: Mapping[str, str], scores: Mapping[str, float], rule: CaptionRule
) -> dict[str, float]:
    """The probability of each caption type under `rule` (types with probability 0 are left out)."""
    if isinstance(rule, ProportionRule):
        probs: dict[str, float] = {}
        for t, p in _normalise(dict(rule.weights)).items():
            chosen = t if t in captions else DEFAULT_CAPTION  # official: a missing type falls back to "prompt"
            probs[chosen] = probs.get(chosen, 0.0) + p
        return probs
    scored = _scored(captions, scores)
    if not scored:
        return {DEFAULT_CAPTION: 1.0}
    threshold = rule.threshold if rule.threshold is not None else -math.inf
    candidates = {t: s for t, s in scored.items() if s >= threshold}
    if not candidates:
        return {max(scored, key=lambda t: scored[t]): 1.0}  # first maximum wins ties, as the official `>`
    if isinstance(rule, PowerRule):
        power = 1.0 / max(rule.tau, MIN_TAU)
        return _normalise({t: s**power for t, s in candidates.items()})
    tau = max(rule.tau, MIN_TAU)
    top = max(candidates.values())  # subtract the max before exp for stability; the softmax is unchanged
    return _normalise({t: math.exp((s - top) / tau) for t, s in candidates.items()})


def select_caption(
    captions: Mapping[str, str], scores: Mapping[str, float], rule: CaptionRule, rng: random.Random
) -> CaptionChoice:
    """Draw one caption type under `rule`; returns (type, caption, its raw clip score or 0.0)."""
    probs = caption_probabilities(captions, scores, rule)
    u, acc, chosen = rng.random(), 0.0, next(iter(probs))
    for caption_type, p in probs.items():
        chosen = caption_type
        acc += p
        if u < acc:
            break
    if chosen not in captions:
        chosen = DEFAULT_CAPTION
    return CaptionChoice(chosen, captions[chosen], float(scores.get(chosen, 0.0)))
