from __future__ import annotations

import pytest

from gateway.routing.tokens import TokenRatio


def test_the_default_until_a_worker_answers() -> None:
    ratio = TokenRatio(default_chars_per_token=4.0)
    assert ratio.chars_per_token("svc") == 4.0
    assert ratio.tokens("svc", 4000) == 1000


def test_learned_from_usage_per_service() -> None:
    ratio = TokenRatio(weight=0.5)
    ratio.observe("svc", 3000, 1000)
    assert ratio.chars_per_token("svc") == pytest.approx(3.0)
    ratio.observe("svc", 1000, 500)  # sums weighted: (3000 * .5 + 1000 * .5) / (1000 * .5 + 500 * .5)
    assert ratio.chars_per_token("svc") == pytest.approx(4000 / 1500)
    assert ratio.chars_per_token("other") == 4.0
    assert ratio.tokens("svc", 800) == 300


def test_bounded_and_ignores_empty_answers() -> None:
    ratio = TokenRatio(lowest=1.0, highest=12.0)
    ratio.observe("svc", 10_000, 12)  # a fake worker's constant usage
    assert ratio.chars_per_token("svc") == 12.0
    ratio.observe("other", 0, 10)
    ratio.observe("other", 10, 0)
    assert ratio.chars_per_token("other") == 4.0
