"""The dispatcher's HTTP front in process, for the route tests: no Kafka behind it (watchers that
are never started, the caller's `publish`), a fixed clock and one API token."""

from __future__ import annotations

from typing import Any

from schemas.topics import Topics
from services.dispatcher.front.api import DispatcherApi
from services.dispatcher.front.feeds import OutcomeWatcher
from tests.unit.builders import T0, H
from windowgate.client import DecisionWatcher
from windowgate.core.rulebook import RuleBook

API_TOKEN = "api-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
NOW = T0 + H


def in_process_front(rules: RuleBook, wait_s: float = 0.3, **kw: Any) -> DispatcherApi:
    """A front on `rules`; `kw` gives the rest (publish, tokens, broadcasts, publish_event...)."""
    kw.setdefault("decisions", DecisionWatcher("unused:9092", Topics("t."), recent=10))
    kw.setdefault("outcomes", OutcomeWatcher("unused:9092", "t.dispatch-log", recent=10))
    kw.setdefault("tokens", None)
    return DispatcherApi(
        rules=rules,
        clock=lambda: NOW,
        api_tokens=(API_TOKEN,),
        wait_s=wait_s,
        outcome_wait_s=wait_s,
        **kw,
    )
