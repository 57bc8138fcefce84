"""Per-page limits: calls leave evenly at the rate, and never more than the limit in a window."""

from __future__ import annotations

import pytest

from services.dispatcher.delivery.ratelimit import PageRateLimiter


def schedule(limiter: PageRateLimiter, page: str, count: int, now: float = 0.0) -> list[float]:
    """When each of `count` calls reserved at `now` would leave."""
    return [now + limiter.reserve(page, "text", now) for _ in range(count)]


def test_calls_are_spaced_at_the_rate() -> None:
    limiter = PageRateLimiter({"text": 100.0, "media": 10.0})
    assert schedule(limiter, "p", 5) == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])


def test_the_schedule_never_holds_more_than_the_rate_in_a_second() -> None:
    limiter = PageRateLimiter({"text": 300.0, "media": 10.0})
    times = schedule(limiter, "p", 3000)
    for i in range(len(times) - 300):
        assert times[i + 300] - times[i] >= 1.0 - 1e-9


def test_pages_and_classes_are_independent() -> None:
    limiter = PageRateLimiter({"text": 10.0, "media": 1.0})
    assert limiter.reserve("a", "text", 0.0) == 0.0
    assert limiter.reserve("b", "text", 0.0) == 0.0
    assert limiter.reserve("a", "media", 0.0) == 0.0
    assert limiter.reserve("a", "media", 0.0) == pytest.approx(1.0)
    assert limiter.reserve("a", "text", 0.0) == pytest.approx(0.1)


def test_idle_time_is_not_banked() -> None:
    limiter = PageRateLimiter({"text": 10.0, "media": 1.0})
    schedule(limiter, "p", 3)
    assert schedule(limiter, "p", 3, now=100.0) == pytest.approx([100.0, 100.1, 100.2])


def test_the_cap_holds_even_when_sends_bunch_up() -> None:
    """Late wake-ups arrive together: the window admits the limit and makes the rest wait."""
    limiter = PageRateLimiter({"text": 5.0, "media": 1.0}, window_s=1.0)
    assert [limiter.admit("p", "text", 0.5) for _ in range(5)] == [0.0] * 5
    assert limiter.admit("p", "text", 0.6) == pytest.approx(0.9)  # the first leaves at 1.5
    assert limiter.admit("p", "text", 1.5) == 0.0


def test_share_scales_rate_and_cap_by_owned_partitions() -> None:
    limiter = PageRateLimiter({"text": 300.0, "media": 10.0})
    limiter.set_share(4, 8)
    assert limiter.interval("text") == pytest.approx(1 / 150)
    assert limiter.cap("text") == 150
    limiter.set_share(1, 16)
    assert limiter.cap("media") == 1  # never zero


def test_forget_idle_drops_old_pages() -> None:
    clock = [0.0]
    limiter = PageRateLimiter({"text": 10.0, "media": 1.0}, clock=lambda: clock[0])
    limiter.reserve("p", "text", 0.0)
    limiter.admit("p", "text", 0.0)
    clock[0] = 5.0
    limiter.forget_idle()
    assert limiter._tat == {} and limiter._sent == {}


async def test_acquire_returns_at_once_when_free() -> None:
    limiter = PageRateLimiter({"text": 1000.0, "media": 1.0})
    await limiter.acquire("p", "text")
    assert len(limiter._sent[("p", "text")]) == 1
