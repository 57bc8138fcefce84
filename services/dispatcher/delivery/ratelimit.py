"""Per-page send rate limits (M-RATE: 300 calls/s for text, 10/s for audio/video), per instance.

Two rules per (page, rate class), both needed:

- spacing (GCRA, "virtual scheduling"): each caller reserves the next free slot at once and sleeps
  until it, so calls leave evenly, in reservation order, at the rate;
- a hard cap at the moment of sending: never more than the limit within any window of
  `window_s` (a little over one second, for the jitter between our clock and Meta's). Sleeps wake
  late and bunch up; the cap makes sure a late wake-up never turns into a burst over the limit.

The arithmetic (`reserve`, `admit`) is pure: the clock is passed in.

Several dispatcher instances share a page's budget by the share of the partitions they own: a
page's users spread evenly over the partitions, so an instance owning k of n partitions gets k/n
of the rate (`set_share`), and the budget follows every rebalance.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping

from windowgate.meta.send_api import RateClass

Key = tuple[str, RateClass]


class PageRateLimiter:
    def __init__(
        self,
        rates: Mapping[RateClass, float],
        window_s: float = 1.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rates = dict(rates)
        self.window_s = window_s
        self.clock = clock
        self.share = 1.0
        self._tat: dict[Key, float] = {}
        self._sent: dict[Key, deque[float]] = {}

    def set_share(self, owned: int, total: int) -> None:
        """This instance owns `owned` of `total` partitions: scale every page's rate by that."""
        self.share = max(owned, 1) / max(total, 1)

    def rate(self, rate_class: RateClass) -> float:
        return self.rates[rate_class] * self.share

    def interval(self, rate_class: RateClass) -> float:
        return 1.0 / self.rate(rate_class)

    def cap(self, rate_class: RateClass) -> int:
        """Calls allowed within one window: the rate, rounded down, at least one."""
        return max(1, math.floor(self.rate(rate_class) + 1e-9))

    def reserve(self, page_id: str, rate_class: RateClass, now: float) -> float:
        """Claim the next evenly spaced slot; return the seconds to wait for it."""
        key = (page_id, rate_class)
        tat = max(self._tat.get(key, now), now)
        self._tat[key] = tat + self.interval(rate_class)
        return tat - now

    def admit(self, page_id: str, rate_class: RateClass, now: float) -> float:
        """Record a send at `now` if the window has room (→ 0.0); else the seconds to wait."""
        sent = self._sent.setdefault((page_id, rate_class), deque())
        while sent and sent[0] <= now - self.window_s:
            sent.popleft()
        if len(sent) < self.cap(rate_class):
            sent.append(now)
            return 0.0
        return sent[0] + self.window_s - now

    async def pace(self, page_id: str, rate_class: RateClass) -> None:
        """Wait for this call's evenly spaced slot."""
        delay = self.reserve(page_id, rate_class, self.clock())
        if delay > 0:
            await asyncio.sleep(delay)

    async def admit_now(self, page_id: str, rate_class: RateClass) -> None:
        """Wait until the window has room, and take it: call right before sending."""
        while True:  # the window's oldest send leaves it at a known time: no event to await
            wait = self.admit(page_id, rate_class, self.clock())
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def acquire(self, page_id: str, rate_class: RateClass) -> None:
        await self.pace(page_id, rate_class)
        await self.admit_now(page_id, rate_class)

    def forget_idle(self) -> None:
        """Drop pages idle for a window (bounded memory over many pages)."""
        now = self.clock()
        for key in [k for k, tat in self._tat.items() if tat < now - self.window_s]:
            del self._tat[key]
            sent = self._sent.get(key)
            if not sent or sent[-1] <= now - self.window_s:
                self._sent.pop(key, None)
