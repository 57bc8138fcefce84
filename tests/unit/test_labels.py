"""Labels (DESIGN.md §4.6): names, the pages file's label rules, the events they derive, the fold,
the window's event step (which records the derived events) and the replay (which must not derive
them a second time and still rebuilds the same labels from the log alone)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from schemas.events import (
    Event,
    LabelAdded,
    LabelRemoved,
    PostbackReceived,
    decode_event,
    encode_event,
)
from schemas.state import UserState
from services.window.processing import Source, process_event_record
from services.window.queries import user_view
from services.window.store import NO_OFFSET, MemoryTables, StoredUser
from tests.fixtures_path import fixtures_dir
from tests.unit.builders import PAGE, T0, USER, H, empty, message
from windowgate.core.fold import fold
from windowgate.core.labels import LabelRule, label_events, label_problem
from windowgate.core.pages import PagesError, parse_pages
from windowgate.core.rulebook import RuleBook, load_rules
from windowgate.core.transition import apply_event_with_rules
from windowgate.meta.normalise import normalise
from windowgate.offline import OfflineGateway

KEY = f"{PAGE}:{USER}".encode()


def pages_with(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"pages": {PAGE: {"label_rules": rules}}}


WINE_RULES: list[dict[str, Any]] = [
    {"when": "postback", "prefix": "WINE_", "label": "wine"},
    {"when": "quick_reply", "regex": r"SIZE_(S|M|L)", "label": "sized"},
    {"prefix": "STOP_WINE", "label": "wine", "remove": True},
    {"when": "any", "prefix": "DEVELOPER_DEFINED_PAYLOAD_FOR_PICKING_", "label": "picked"},
]


def book(rules: list[dict[str, Any]] = WINE_RULES) -> RuleBook:
    return load_rules(None, parse_pages(pages_with(rules)))


BOOK = book()


def postback(ts: int, payload: str | None, mid: str = "pb1", **kw: Any) -> PostbackReceived:
    return PostbackReceived(
        page_id=kw.pop("page_id", PAGE),
        user_id=USER,
        timestamp=ts,
        payload=payload,
        mid=mid,
        dedup_key=f"pb:{mid}",
        **kw,
    )


def quick_reply(ts: int, payload: str, mid: str = "qr1") -> Event:
    return message(ts, mid, quick_reply_payload=payload)


def added(label: str, ts: int = T0, source: str = "api") -> LabelAdded:
    return LabelAdded(
        page_id=PAGE, user_id=USER, timestamp=ts, label=label, source=source, dedup_key=f"a{ts}"
    )


def removed(label: str, ts: int = T0) -> LabelRemoved:
    return LabelRemoved(page_id=PAGE, user_id=USER, timestamp=ts, label=label, dedup_key=f"r{ts}")


# ---- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vip", "white-wine", "size:M", "a.b_c", "x" * 64, "A9"])
def test_label_names_that_are_allowed(name: str) -> None:
    assert label_problem(name) is None


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "must not be empty"),
        ("x" * 65, "at most 64"),
        ("white wine", "may only contain"),
        ("vin/blanc", "may only contain"),
        ("café", "may only contain"),
        (7, "expected a string"),
    ],
)
def test_label_names_that_are_refused_say_why(name: object, says: str) -> None:
    problem = label_problem(name)
    assert problem is not None and says in problem


# ---- the pages file ------------------------------------------------------------------------------


def test_label_rules_are_parsed_per_page() -> None:
    rules = parse_pages(pages_with(WINE_RULES))[PAGE].label_rules
    assert [r.label for r in rules] == ["wine", "sized", "wine", "picked"]
    assert [r.when for r in rules] == ["postback", "quick_reply", "any", "any"]  # default: any
    assert rules[0].prefix == "WINE_" and rules[0].regex is None and not rules[0].remove
    assert rules[1].regex is not None and rules[1].regex.pattern == "SIZE_(S|M|L)"
    assert rules[2].remove is True


def test_a_page_without_label_rules_has_none() -> None:
    assert parse_pages({"pages": {PAGE: {}}})[PAGE].label_rules == ()


@pytest.mark.parametrize(
    ("rule", "field", "says"),
    [
        ({"regex": "WINE_(", "label": "wine"}, "label_rules[1].regex", "not a regular expression"),
        ({"prefix": "A", "regex": "A", "label": "x"}, "label_rules[1]", "exactly one of"),
        ({"label": "x"}, "label_rules[1]", "exactly one of"),
        ({"prefix": 3, "label": "x"}, "label_rules[1].prefix", "expected a string"),
        ({"prefix": "A", "label": "white wine"}, "label_rules[1].label", "may only contain"),
        ({"prefix": "A"}, "label_rules[1].label", "expected a string"),
        ({"prefix": "A", "label": "x", "when": "tap"}, "label_rules[1].when", "expected one of"),
        ({"prefix": "A", "label": "x", "remove": "yes"}, "label_rules[1].remove", "true or false"),
        ({"prefix": "A", "label": "x", "lable": "y"}, "label_rules[1]", "unknown keys ['lable']"),
        ("WINE_", "label_rules[1]", "expected an object"),
    ],
)
def test_a_bad_label_rule_is_refused_at_load_naming_page_and_index(
    rule: Any, field: str, says: str
) -> None:
    with pytest.raises(PagesError) as caught:
        parse_pages(pages_with([WINE_RULES[0], rule]))
    assert caught.value.field == f"pages.{PAGE}.{field}"
    assert says in str(caught.value)


def test_label_rules_must_be_a_list() -> None:
    with pytest.raises(PagesError) as caught:
        parse_pages({"pages": {PAGE: {"label_rules": {"prefix": "A", "label": "x"}}}})
    assert caught.value.field == f"pages.{PAGE}.label_rules"


# ---- the events a rule derives -------------------------------------------------------------------


def test_a_postback_payload_with_the_prefix_derives_the_label() -> None:
    event = postback(T0, "WINE_WHITE")
    (derived,) = label_events(event, BOOK.page(PAGE).label_rules)
    assert isinstance(derived, LabelAdded)
    assert (derived.label, derived.source, derived.timestamp) == ("wine", "rule:WINE_WHITE", T0)
    assert derived.key == event.key
    assert derived.dedup_key == "label_added:pb:pb1:rule0"
    assert label_events(event, BOOK.page(PAGE).label_rules) == (derived,)  # same every time


def test_when_restricts_the_kind_of_payload() -> None:
    rules = BOOK.page(PAGE).label_rules
    assert label_events(quick_reply(T0, "WINE_WHITE"), rules) == ()  # rule 0 is postback only
    assert label_events(postback(T0, "SIZE_M"), rules) == ()  # rule 1 is quick_reply only
    (sized,) = label_events(quick_reply(T0, "SIZE_M"), rules)
    assert (sized.label, sized.source) == ("sized", "rule:SIZE_M")


def test_a_regex_must_match_the_whole_payload() -> None:
    rules = BOOK.page(PAGE).label_rules
    assert label_events(quick_reply(T0, "SIZE_XL"), rules) == ()
    assert label_events(quick_reply(T0, "MY_SIZE_M"), rules) == ()


def test_a_remove_rule_derives_label_removed_and_every_matching_rule_applies() -> None:
    rules = (
        LabelRule(label="wine", prefix="STOP_", remove=True),
        LabelRule(label="stopped", prefix="STOP_"),
    )
    first, second = label_events(postback(T0, "STOP_WINE"), rules)
    assert isinstance(first, LabelRemoved) and first.label == "wine"
    assert isinstance(second, LabelAdded) and second.label == "stopped"


def test_no_payload_no_label() -> None:
    rules = (LabelRule(label="any", prefix=""),)
    assert label_events(postback(T0, None), rules) == ()
    assert label_events(message(T0, "plain"), rules) == ()  # a typed message is no payload
    assert len(label_events(postback(T0, ""), rules)) == 1  # an empty prefix matches any payload


# ---- fold and transition -------------------------------------------------------------------------


def test_labels_fold_as_a_sorted_set() -> None:
    state = empty()
    for event in (added("vip"), added("b2b"), added("vip", T0 + 1)):
        state = fold(state, event)
    assert state.labels == ("b2b", "vip")  # PUT twice = one label
    state = fold(state, removed("vip"))
    assert state.labels == ("b2b",)
    assert fold(state, removed("never-there")) is state


def test_the_transition_folds_the_action_and_the_derived_labels() -> None:
    applied = apply_event_with_rules(None, postback(T0, "WINE_RED"), BOOK)
    assert applied.state.labels == ("wine",)
    assert applied.state.last_opener_at == T0  # the postback itself is folded as always
    assert [type(e) for e in applied.derived] == [LabelAdded]


def test_a_derived_label_that_changes_nothing_is_not_recorded() -> None:
    state = fold(empty(), added("wine"))
    assert apply_event_with_rules(state, postback(T0, "WINE_RED"), BOOK).derived == ()
    assert apply_event_with_rules(None, postback(T0, "STOP_WINE"), BOOK).derived == ()


def test_pages_without_rules_derive_nothing() -> None:
    other = postback(T0, "WINE_RED", page_id="999")
    assert apply_event_with_rules(None, other, BOOK).derived == ()
    assert apply_event_with_rules(None, postback(T0, "WINE_RED"), load_rules()).derived == ()


# ---- the webhooks, as Meta sends them ------------------------------------------------------------


def test_the_quick_reply_fixture_carries_its_payload_and_gets_its_label_offline() -> None:
    body = orjson.loads((fixtures_dir("meta-webhooks") / "01-quick-reply.json").read_bytes())
    (event,) = normalise(body).events
    assert getattr(event, "quick_reply_payload", None) == (
        "DEVELOPER_DEFINED_PAYLOAD_FOR_PICKING_GREEN"
    )
    gateway = OfflineGateway(BOOK)
    gateway.apply_webhook(body)
    state = gateway.state(PAGE, USER)
    assert state is not None and state.labels == ("picked",)


def test_the_postback_fixture_labels_through_a_get_started_rule() -> None:
    body = orjson.loads((fixtures_dir("meta-webhooks") / "07-postback-mme.json").read_bytes())
    gateway = OfflineGateway(book([{"when": "postback", "regex": "GET_STARTED", "label": "new"}]))
    gateway.apply_webhook(body)
    state = gateway.state(PAGE, USER)
    assert state is not None and state.labels == ("new",)


# ---- the window's event step and the replay -----------------------------------------------------


class Log:
    """One events partition: the window worker reads it in batches and, at each commit, appends
    what the batch output (the derived label events) to its end, as the transaction does."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    def append(self, event: Event) -> None:
        self.records.append(encode_event(event))


def step(tables: MemoryTables, value: bytes, offset: int, rules: RuleBook | None) -> list[bytes]:
    result = process_event_record(tables, KEY, value, Source("events", 0, offset), T0, 0, rules)
    assert result.problem is None, result.problem
    return [o.value for o in result.outputs if o.topic == "events"]


def live_worker(log: Log, batches: list[int], rules: RuleBook) -> MemoryTables:
    """Read the log in batches of the given sizes (then one record at a time), committing the
    derived events to the log's end after each batch, until the worker has read it all."""
    tables = MemoryTables()
    offset = 0
    sizes = iter(batches)
    while offset < len(log.records):
        size = next(sizes, 1)
        pending: list[bytes] = []
        for value in log.records[offset : offset + size]:
            pending += step(tables, value, offset, rules)
            offset += 1
        log.records += pending  # the transaction's outputs land after what is already there
    return tables


def replay(log: Log) -> MemoryTables:
    tables = MemoryTables()
    for offset, value in enumerate(log.records):
        assert step(tables, value, offset, None) == []  # the replay derives nothing
    return tables


def labels_of(tables: MemoryTables) -> tuple[str, ...]:
    stored = tables.get_user(KEY)
    return () if stored is None else stored.state.labels


def test_the_worker_records_the_derived_event_and_the_replay_folds_it_from_the_log() -> None:
    tables = MemoryTables()
    out = step(tables, encode_event(postback(T0, "WINE_WHITE")), 0, BOOK)
    assert [decode_event(v) for v in out] == list(
        label_events(postback(T0, "WINE_WHITE"), BOOK.page(PAGE).label_rules)
    )
    assert labels_of(tables) == ("wine",)
    assert step(tables, out[0], 1, BOOK) == []  # the worker reads its own event back: no change
    log = Log()
    log.append(postback(T0, "WINE_WHITE"))
    log.records += out
    rebuilt = replay(log)
    assert labels_of(rebuilt) == ("wine",)
    assert rebuilt.get_user(KEY) == tables.get_user(KEY)


def test_a_replay_without_the_derived_events_would_not_have_the_label() -> None:
    """The replay does not apply the rules: the labels come from the log, not the pages file."""
    log = Log()
    log.append(postback(T0, "WINE_WHITE"))
    assert labels_of(replay(log)) == ()


ACTIONS: list[Event] = [
    postback(T0, "WINE_WHITE", "p1"),
    postback(T0 + 1, "STOP_WINE", "p2"),
    quick_reply(T0 + 2, "SIZE_L", "q1"),
    added("wine", T0 + 3),
    removed("wine", T0 + 4),
    removed("sized", T0 + 5),
    added("vip", T0 + 6),
    quick_reply(T0 + 7, "DEVELOPER_DEFINED_PAYLOAD_FOR_PICKING_RED", "q2"),
]


@pytest.mark.parametrize("seed", range(40))
def test_live_labels_equal_the_replay_of_the_log_whatever_the_batches(seed: int) -> None:
    """User actions and API changes interleave with the worker's own derived events, which land
    in the log after the batch that made them; whatever the order and batch sizes, the worker's
    state ends equal to the replay's fold of the log alone (I8)."""
    rng = random.Random(seed)
    log = Log()
    for _ in range(12):
        log.append(rng.choice(ACTIONS))
    batches = [rng.randint(1, 5) for _ in range(10)]
    live = live_worker(log, batches, BOOK)
    rebuilt = replay(log)
    assert rebuilt.get_user(KEY) == live.get_user(KEY)
    assert labels_of(live) == labels_of(rebuilt)


def test_the_user_query_state_shows_the_labels() -> None:
    state = UserState(page_id=PAGE, user_id=USER, labels=("vip", "wine"))
    view = user_view(PAGE, USER, StoredUser(state, NO_OFFSET), None, T0 + H, BOOK)
    assert view["state"]["labels"] == ["vip", "wine"]
