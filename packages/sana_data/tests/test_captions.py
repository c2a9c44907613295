"""Caption rules match their formulas (spec §6.2) and draws follow them on fixed seeds."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from sana_data import PowerRule, ProportionRule, SoftmaxRule, caption_probabilities, select_caption

CAPTIONS = {"prompt": "p", "vila": "v", "internvl": "i", "blip": "b"}
SCORES = {"prompt": 24.0, "vila": 30.0, "internvl": 27.5, "blip": 33.0, "not_a_caption": 99.0}


def test_power_rule_is_score_to_the_ten_over_scores_above_25() -> None:
    probs = caption_probabilities(CAPTIONS, SCORES, PowerRule())
    candidates = {"vila": 30.0, "internvl": 27.5, "blip": 33.0}  # prompt (24 < 25) and unknown types drop out
    total = sum(s**10 for s in candidates.values())
    assert probs == pytest.approx({t: s**10 / total for t, s in candidates.items()}, rel=1e-12)


def test_power_rule_tau_is_clamped_at_001() -> None:
    probs = caption_probabilities(CAPTIONS, SCORES, PowerRule(tau=0.001))
    total = sum(s**100 for s in (30.0, 27.5, 33.0))
    assert probs["blip"] == pytest.approx(33.0**100 / total)


def test_power_rule_fallbacks() -> None:
    low = {"prompt": 20.0, "vila": 22.0, "blip": 21.0}
    assert caption_probabilities(CAPTIONS, low, PowerRule()) == {"vila": 1.0}  # none passes: the best one
    choice = select_caption(CAPTIONS, low, PowerRule(), random.Random(0))
    assert choice == ("vila", "v", 22.0)
    assert caption_probabilities(CAPTIONS, {}, PowerRule()) == {"prompt": 1.0}  # no scores at all: "prompt"
    assert select_caption(CAPTIONS, {}, PowerRule(), random.Random(0)) == ("prompt", "p", 0.0)


def test_softmax_rule_is_the_papers_formula() -> None:
    probs = caption_probabilities(CAPTIONS, SCORES, SoftmaxRule(tau=2.0))
    scored = {t: s for t, s in SCORES.items() if t in CAPTIONS}
    z = sum(math.exp(s / 2.0) for s in scored.values())
    assert probs == pytest.approx({t: math.exp(s / 2.0) / z for t, s in scored.items()}, rel=1e-12)
    assert set(caption_probabilities(CAPTIONS, SCORES, SoftmaxRule(threshold=25.0))) == {"vila", "internvl", "blip"}


def test_proportion_rule_falls_back_to_prompt_for_missing_types() -> None:
    rule = ProportionRule({"prompt": 1.0, "vila": 2.0, "missing": 1.0})
    assert caption_probabilities(CAPTIONS, {}, rule) == pytest.approx({"prompt": 0.5, "vila": 0.5})


@pytest.mark.parametrize("rule", [PowerRule(tau=0.5), SoftmaxRule(tau=3.0), ProportionRule({"vila": 1, "blip": 3})])
def test_draws_follow_the_probabilities(rule) -> None:
    rng, n = random.Random(1234), 20000
    counts = Counter(select_caption(CAPTIONS, SCORES, rule, rng).caption_type for _ in range(n))
    for caption_type, p in caption_probabilities(CAPTIONS, SCORES, rule).items():
        assert abs(counts[caption_type] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9, caption_type
    assert set(counts) <= set(caption_probabilities(CAPTIONS, SCORES, rule))


def test_fixed_seed_gives_fixed_choice_and_raw_score() -> None:
    a = [select_caption(CAPTIONS, SCORES, PowerRule(), random.Random(s)) for s in range(50)]
    b = [select_caption(CAPTIONS, SCORES, PowerRule(), random.Random(s)) for s in range(50)]
    assert a == b
    assert all(c.clip_score == SCORES[c.caption_type] and c.caption == CAPTIONS[c.caption_type] for c in a)
