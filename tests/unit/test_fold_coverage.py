"""Every event type is folded or declared inert with a reason: none can silently do nothing."""

from __future__ import annotations

from schemas.events import EVENT_TYPES
from windowgate.core import fold


def test_every_event_type_is_folded_or_declared_inert() -> None:
    handled = set(fold._USER_HANDLERS) | set(fold._PAGE_HANDLERS)
    inert = set(fold.INERT_EVENTS)
    missing = [t.__name__ for t in EVENT_TYPES if t not in handled and t not in inert]
    assert not missing, f"no fold handler and not in fold.INERT_EVENTS: {missing}"


def test_an_inert_event_type_has_no_handler_and_a_reason() -> None:
    handled = set(fold._USER_HANDLERS) | set(fold._PAGE_HANDLERS)
    for kind, why in fold.INERT_EVENTS.items():
        assert kind in EVENT_TYPES, f"{kind.__name__} is not an event type"
        assert kind not in handled, f"{kind.__name__} is folded and declared inert"
        assert why.strip(), f"{kind.__name__} is inert without a reason"


def test_the_handler_tables_name_only_event_types() -> None:
    for kind in (*fold._USER_HANDLERS, *fold._PAGE_HANDLERS):
        assert kind in EVENT_TYPES, f"{kind.__name__} is folded but not in EVENT_TYPES"
