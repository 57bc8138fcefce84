"""The few impure things a service needs from its surroundings: the clock and the rule book."""

from __future__ import annotations

import time

from services.common.settings import Settings
from windowgate.pages import load_pages
from windowgate.rulebook import RuleBook, load_rules


def now_ms() -> int:
    """The wall clock, read only at the edges; the core always gets `now` passed in."""
    return time.time_ns() // 1_000_000


def load_rulebook(settings: Settings) -> RuleBook:
    """The packaged (or WINDOWGATE_RULES) rules with the WINDOWGATE_PAGES settings applied."""
    pages = load_pages(settings.pages_path) if settings.pages_path else {}
    return load_rules(settings.rules_path, pages)
