"""Every step of the window worker as a plain function: decode → pure core → encode.

The worker applies these to each batch (see `partition`), the replay calls `apply_event` (so a
rebuilt table is folded by the very code that folded the live one) and the unit tests drive them
with dict-backed tables. Nothing here awaits: a step reads a user's state, computes and writes it
back in one go; partition ownership, fenced by Kafka, makes the process the only writer of that
user (I1).

Outputs are returned, not produced: the caller hands them to its producer.

Label rules (the pages file's `label_rules`): the worker's event step derives `LabelAdded` /
`LabelRemoved` events from a postback or quick-reply payload, folds them at once and outputs them
to the events topic in the batch's transaction, as it does `RequestDecided`. The replay passes no
rules: it folds those events where they stand in the log, so the labels it rebuilds come from the
log alone, and the worker, reading its own events back, finds them already folded.

Request steps (the single writer also decides):

- a new request is decided against the user's state and the page's state, the decision is folded
  in as `RequestDecided` (reserving the token of an allowed OTN / recurring / marketing decision,
  and remembering the request_id for I3), and two records go out: the `DecisionRecord` for the
  dispatcher and the `RequestDecided` event, so that the events topic alone rebuilds the table
  (I8);
- a repeated request_id (a new record) gets its remembered decision back marked `duplicate`;
- a sender action (typing indicator, read receipt, reaction: `SendRequest.sender_action`) is
  decided like any request but neither folded nor remembered: it is no message, reserves
  nothing and is not a send; only its `DecisionRecord` goes out (the dispatcher dedups by
  request_id, I5, should one come twice);
- a redelivered record (offset `<=` the user's `request_offset`) re-emits the remembered
  decision *as first decided*, not as a duplicate. With transactions the state and the input
  offsets commit together, so this only matters if they ever part (a second line of defence);
  the dispatcher deduplicates by request_id anyway (I5), which makes the re-emission harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiokafka.partitioner import murmur2

from schemas.codec import WIRE_VERSION, SchemaError, loads
from schemas.decision import Decision, DecisionRecord, encode_decision_record
from schemas.events import Event, decode_event, encode_event, event_key
from schemas.request import SendRequest, decode_request
from schemas.state import PageState, UserState
from services.common.deadletter import dead_letter_record
from services.window.store import NO_OFFSET, StoredUser, Tables
from windowgate.core.fold import empty_state, fold_page, is_page_event
from windowgate.core.rulebook import RuleBook
from windowgate.core.transition import apply_event as fold_user
from windowgate.core.transition import apply_event_with_rules, decide_request, decided_event

log = logging.getLogger(__name__)

SERVICE = "window"

OutputTopic = Literal["events", "decisions", "dead_letter"]
Outcome = Literal[
    "folded",
    "unchanged",
    "page",
    "decided",
    "duplicate",
    "replayed",
    "dead_letter",
    "sender_action",
    "command",
]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from: for dead letters, partition checks and replay detection."""

    topic: str
    partition: int
    offset: int

    def describe(self, key: bytes | None) -> dict[str, Any]:
        described: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        }
        if key is not None:
            described["key"] = key.decode(errors="replace")
        return described


@dataclass(frozen=True, slots=True)
class Output:
    topic: OutputTopic
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class Result:
    """What a step did: records to produce, the user's new state if it changed, the outcome."""

    outcome: Outcome
    outputs: tuple[Output, ...] = ()
    changed: UserState | None = None
    problem: str | None = None
    decision: Decision | None = None  # a new decision's, for whoever counts them (broadcasts)


class BadRecord(Exception):
    """A record the worker must not apply; the message says why (it goes to the dead letters)."""


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) gives `key`: where its user lives."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def _check_placement(key: bytes | None, expected: str, source: Source, partitions: int) -> bytes:
    """A record keyed or placed unlike its user would put a second writer on that user (I1)."""
    if key is None:
        raise BadRecord(f"record has no key; expected {expected!r}")
    if key != expected.encode():
        raise BadRecord(
            f"record key {key.decode(errors='replace')!r} does not match its content's key "
            f"{expected!r}"
        )
    if partitions and partition_for(key, partitions) != source.partition:
        raise BadRecord(
            f"record for {expected!r} is in partition {source.partition}, but Kafka's default "
            f"partitioner puts that key in partition {partition_for(key, partitions)} of "
            f"{partitions}: its producer partitions differently"
        )
    return key


def _dead_letter(
    reason: str, key: bytes | None, value: bytes | None, source: Source, now: int
) -> Result:
    record = dead_letter_record(SERVICE, reason, value or b"", now, source.describe(key))
    return Result("dead_letter", (Output("dead_letter", key, record),), problem=reason)


def guarded(
    step: Callable[[], Result], key: bytes | None, value: bytes | None, source: Source, now: int
) -> Result:
    """Run a step; any failure becomes a dead letter (a worker never stops on one record)."""
    try:
        return step()
    except BadRecord as exc:
        return _dead_letter(str(exc), key, value, source, now)
    except SchemaError as exc:
        return _dead_letter(f"malformed record: {exc}", key, value, source, now)
    except Exception as exc:  # a bug or a bad rules file: keep the record, keep going
        log.exception("window step failed", extra={"source": source.describe(key)})
        return _dead_letter(
            f"could not process: {type(exc).__name__}: {exc}", key, value, source, now
        )


# ---- events --------------------------------------------------------------------------------------


def apply_event(tables: Tables, event: Event) -> UserState | None:
    """Fold one event into its user's (or its page's) stored state: the worker's and the replay's
    only fold step. Returns the user's new state when it changed; an event that changes nothing
    writes nothing (no changelog record for reads and deliveries)."""
    return _apply_event(tables, event, None)[0]


def _apply_event(
    tables: Tables, event: Event, rules: RuleBook | None
) -> tuple[UserState | None, tuple[Event, ...]]:
    """`apply_event`, plus (with `rules`) the label events the page's label rules derive from
    the user's action, folded in too and returned for the events topic."""
    key = event.key.encode()
    if is_page_event(event):
        page = tables.get_page(key) or PageState(page_id=event.page_id)
        folded_page = fold_page(page, event)
        if folded_page != page:
            tables.put_page(key, folded_page)
        return None, ()
    stored = tables.get_user(key)
    state = stored.state if stored is not None else empty_state(event)
    derived: tuple[Event, ...] = ()
    if rules is None:
        folded = fold_user(state, event)
    else:
        applied = apply_event_with_rules(state, event, rules)
        folded, derived = applied.state, applied.derived
    if folded is state or folded == state:
        return None, derived
    offset = stored.request_offset if stored is not None else NO_OFFSET
    tables.put_user(key, StoredUser(folded, offset))
    return folded, derived


def process_event_record(
    tables: Tables,
    key: bytes | None,
    value: bytes | None,
    source: Source,
    now: int,
    partitions: int = 0,
    rules: RuleBook | None = None,
) -> Result:
    """One record of `<prefix>events`: decode, check its placement, fold. `partitions` (the topic's
    partition count) enables the placement check; 0 skips it. With `rules` (the worker), the
    pages' label rules add label events, folded now and output to the events topic in the same
    transaction; without (the replay), those events are folded where they are in the log."""

    def step() -> Result:
        if value is None:
            raise BadRecord("record has no value")
        event = decode_event(value)
        user_key = _check_placement(key, event.key, source, partitions)
        if is_page_event(event):
            apply_event(tables, event)
            return Result("page")
        changed, derived = _apply_event(tables, event, rules)
        outputs = tuple(Output("events", user_key, encode_event(e)) for e in derived)
        if changed is None:
            return Result("unchanged", outputs)
        return Result("folded", outputs, changed=changed)

    return guarded(step, key, value, source, now)


# ---- send requests -------------------------------------------------------------------------------


_RECORD_HEAD = orjson.dumps({"v": WIRE_VERSION})[:-1] + b","


def encode_decision_fast(
    decision: Decision,
    message: dict[str, Any] | None,
    graph_fields: dict[str, Any] | None = None,
) -> bytes:
    """`encode_decision_record(DecisionRecord(decision, message))`, byte for byte, by orjson's
    own dataclass serialisation (same fields, same order): the generic `to_wire` walk cost ~70 us
    per decision, the largest share of a broadcast recipient's cost. Checked equal in the tests."""
    raw = _RECORD_HEAD + orjson.dumps(decision)[1:]
    if message is not None:
        raw = raw[:-1] + b',"message":' + orjson.dumps(message) + b"}"
    if graph_fields:
        raw = raw[:-1] + b',"graph_fields":' + orjson.dumps(graph_fields) + b"}"
    return raw


def _decision_outputs(
    key: bytes, decision: Decision, request: SendRequest, platform: Any
) -> tuple[Output, ...]:
    record = encode_decision_fast(decision, request.message, request.graph_fields)
    if decision.duplicate or request.sender_action is not None:
        return (Output("decisions", key, record),)
    return (
        Output("decisions", key, record),
        Output("events", key, encode_event(decided_event(decision, platform))),
    )


def process_request_record(
    tables: Tables,
    key: bytes | None,
    value: bytes | None,
    source: Source,
    now: int,
    rules: RuleBook,
    partitions: int = 0,
) -> Result:
    """One record of `<prefix>send-requests`: decide it against the user's state, record the
    decision in that state and emit it (see the module docstring for duplicates and replays)."""

    def step() -> Result:
        if value is None:
            raise BadRecord("record has no value")
        try:
            request = decode_request(value)
        except SchemaError as exc:
            refused = _refuse_malformed(key, value, exc, source, now, rules)
            if refused is None:
                raise
            return refused
        user_key = _check_placement(key, request.key, source, partitions)
        stored = tables.get_user(user_key)
        replayed = stored is not None and source.offset <= stored.request_offset
        if replayed and stored is not None and request.sender_action is None:
            return _replayed(stored.state, request, user_key, source)
        return _decide(tables, user_key, stored, request, now, rules, source.offset)

    return guarded(step, key, value, source, now)


def _decide(
    tables: Tables,
    user_key: bytes,
    stored: StoredUser | None,
    request: SendRequest,
    now: int,
    rules: RuleBook,
    offset: int,
) -> Result:
    """Decide `request` against the user's and the page's state, fold the decision in (stored with
    `offset` as the user's request offset) and emit it."""
    page = tables.get_page(event_key(request.page_id, "").encode())
    state = stored.state if stored is not None else None
    decided = decide_request(state, request, now, rules, page)
    outputs = _decision_outputs(user_key, decided.decision, request, decided.state.platform)
    if decided.event is None:  # a duplicate, or a sender action: decided, never remembered
        return Result("sender_action" if request.sender_action else "duplicate", outputs)
    tables.put_user(user_key, StoredUser(decided.state, offset))
    return Result("decided", outputs, changed=decided.state, decision=decided.decision)


def decide_own_request(
    tables: Tables, user_key: bytes, request: SendRequest, now: int, rules: RuleBook
) -> Result:
    """A request the window makes itself (a broadcast's recipient), decided exactly like one read
    from `send-requests`; no input record carried it, so the user's request offset stays."""
    stored = tables.get_user(user_key)
    offset = stored.request_offset if stored is not None else NO_OFFSET
    return _decide(tables, user_key, stored, request, now, rules, offset)


def _refuse_malformed(
    key: bytes | None, value: bytes, error: SchemaError, source: Source, now: int, rules: RuleBook
) -> Result | None:
    """A request that names who it is for but does not decode (an unknown or misspelt field, a
    bad value) gets a refusal saying why, so its caller is answered instead of waiting; nothing
    is remembered, so the corrected request may reuse the request_id. None: not even that."""
    try:
        data = loads(value, "send request")
    except SchemaError:
        return None
    ids = [data.get(name) if isinstance(data, dict) else None for name in _IDS]
    if not all(isinstance(i, str) and i for i in ids) or key is None:
        return None
    request_id, page_id, user_id = (str(i) for i in ids)
    detail = f"the request is malformed, nothing was decided: {error}"
    decision = Decision(
        request_id=request_id,
        page_id=page_id,
        user_id=user_id,
        decided_at=now,
        allowed=False,
        reason="invalid_request",
        detail=detail,
        rules_version=rules.version,
    )
    record = encode_decision_record(DecisionRecord(decision, None))
    dead = _dead_letter(f"malformed record: {error}", key, value, source, now)
    return Result(
        "dead_letter", (Output("decisions", key, record), *dead.outputs), problem=dead.problem
    )


_IDS = ("request_id", "page_id", "user_id")


def _replayed(state: UserState, request: SendRequest, key: bytes, source: Source) -> Result:
    """A redelivered record: its decision is in the state; send it out again as first decided."""
    for past in state.decisions:
        if past.request_id == request.request_id:
            return Result("replayed", _decision_outputs(key, past, request, state.platform))
    raise BadRecord(
        f"redelivered request {request.request_id!r} (offset {source.offset}) was applied "
        "before, but its decision is no longer remembered; not decided again"
    )
