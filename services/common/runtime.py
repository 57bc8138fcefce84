"""The few impure things a service needs from its surroundings: the clock, the rule book and the
garbage collector's settings."""

from __future__ import annotations

import gc
import time
from typing import Final

from services.common.settings import Settings
from windowgate.core.pages import load_pages
from windowgate.core.rulebook import RuleBook, load_rules


def now_ms() -> int:
    """The wall clock, read only at the edges; the core always gets `now` passed in."""
    return time.time_ns() // 1_000_000


def load_rulebook(settings: Settings) -> RuleBook:
    """The packaged (or WINDOWGATE_RULES) rules with the WINDOWGATE_PAGES settings applied.

    It holds no page access token: every service loads the rule book, but only the dispatcher
    needs the tokens (`services.dispatcher.credentials.load_page_tokens`)."""
    pages = load_pages(settings.pages_path) if settings.pages_path else {}
    return load_rules(settings.rules_path, pages)


GC_YOUNG_THRESHOLD: Final = 50_000


def relax_gc() -> None:
    """Tune the cycle collector for a server that allocates many short-lived objects per request.

    With the default threshold (700) the collector runs every few requests and re-scans
    everything alive. Freezing the start-up objects and letting the young generation grow cut the
    CPU per body by about a tenth in bench.ingest; in the dispatcher over HTTP, py-spy --native
    had the collector at a quarter of the process's CPU before."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
