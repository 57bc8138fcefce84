"""Labels (segments, DESIGN.md §4.6): what a label name may be, and the pages file's label rules.

A label rule turns a user's postback or quick-reply payload into a `LabelAdded` (or, with
`remove`, a `LabelRemoved`) event whose source is `rule:<payload>`. The window derives these
events when it folds the user's action and writes them to the events topic, so the log alone
rebuilds every label (I8) and a replay never needs the pages file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from schemas.events import Event, LabelAdded, LabelRemoved, MessageReceived, PostbackReceived

LabelTrigger = Literal["postback", "quick_reply", "any"]
LABEL_TRIGGERS: tuple[LabelTrigger, ...] = ("postback", "quick_reply", "any")

LABEL_MAX = 64
LABEL_CHARSET = "A-Z a-z 0-9 _ . : -"
_LABEL = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def label_problem(label: object) -> str | None:
    """Why `label` is not a label name, or None when it is one. The charset is safe in a URL path
    segment, a log line and a Kafka record alike, so one name means the same everywhere."""
    if not isinstance(label, str):
        return "expected a string"
    if not label:
        return "must not be empty"
    if len(label) > LABEL_MAX:
        return f"is {len(label)} characters long; at most {LABEL_MAX}"
    if _LABEL.fullmatch(label) is None:
        return f"may only contain {LABEL_CHARSET} (got {label!r})"
    return None


@dataclass(frozen=True, slots=True)
class LabelRule:
    """One rule of a page's `label_rules`: when a payload of kind `when` starts with `prefix` (or
    matches `regex` in full), the user gets `label` (or loses it, with `remove`)."""

    label: str
    when: LabelTrigger = "any"
    prefix: str | None = None
    regex: re.Pattern[str] | None = None
    remove: bool = False

    def matches(self, trigger: LabelTrigger, payload: str) -> bool:
        if self.when != "any" and self.when != trigger:
            return False
        if self.regex is not None:
            return self.regex.fullmatch(payload) is not None
        return self.prefix is not None and payload.startswith(self.prefix)


def payload_of(event: Event) -> tuple[LabelTrigger, str] | None:
    """The user's payload in `event` and what carried it, if label rules can apply to it."""
    if type(event) is PostbackReceived and event.payload is not None:
        return "postback", event.payload
    if type(event) is MessageReceived and event.quick_reply_payload is not None:
        return "quick_reply", event.quick_reply_payload
    return None


def label_events(event: Event, rules: Sequence[LabelRule]) -> tuple[LabelAdded | LabelRemoved, ...]:
    """The label events `rules` derive from `event`, in rule order: each carries the event's time
    and a dedup key naming the event and the rule, so a redelivered action derives the same ones."""
    if not rules:
        return ()
    found = payload_of(event)
    if found is None:
        return ()
    trigger, payload = found
    derived: list[LabelAdded | LabelRemoved] = []
    for index, rule in enumerate(rules):
        if not rule.matches(trigger, payload):
            continue
        kind = LabelRemoved if rule.remove else LabelAdded
        derived.append(
            kind(
                page_id=event.page_id,
                user_id=event.user_id,
                timestamp=event.timestamp,
                platform=event.platform,
                dedup_key=f"{kind.KIND}:{event.dedup_key}:rule{index}",
                label=rule.label,
                source=f"rule:{payload}",
            )
        )
    return tuple(derived)
