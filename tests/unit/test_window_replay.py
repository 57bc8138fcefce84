"""The replay's fold and comparison, without a broker (the integration test runs it for real)."""

from __future__ import annotations

import io

from schemas.events import encode_event
from schemas.state import PageState, UserState, decode_page_state, encode_page_state
from services.window.processing import partition_for
from services.window.replay import Progress, Rebuilt, compare, fold_records
from services.window.store import StoredUser, decode_stored_user, encode_stored_user
from tests.unit.builders import PAGE, T0, USER, H, message, otn

KEY = f"{PAGE}:{USER}".encode()


def user_state(raw: bytes) -> object:
    return decode_stored_user(raw).state


def test_fold_records_folds_like_the_worker_and_counts_dead_letters() -> None:
    rebuilt = Rebuilt()
    good = partition_for(KEY, 8)
    records = [
        (good, 0, KEY, encode_event(message(T0))),
        (good, 1, KEY, b"not json"),
        ((good + 1) % 8, 0, KEY, encode_event(otn(T0))),  # misplaced: the worker refuses it
        (good, 2, KEY, encode_event(message(T0))),
    ]
    fold_records(rebuilt, "x.events", 8, records)
    assert rebuilt.records == 4
    assert rebuilt.dead_letters == 2
    assert rebuilt.problems[0].startswith(f"x.events[{good}]@1: malformed record")
    state = rebuilt.tables.users[KEY].state
    assert state.last_opener_at == T0
    assert state.otn == ()


def test_equal_tables_compare_equal_whatever_the_request_offset() -> None:
    rebuilt = Rebuilt()
    fold_records(rebuilt, "e", 0, [(0, 0, KEY, encode_event(message(T0)))])
    live_value = StoredUser(rebuilt.tables.users[KEY].state, request_offset=41)
    live = {KEY: encode_stored_user(live_value)}
    diff = compare("users", live, {KEY: rebuilt.tables.users[KEY].state}, user_state)
    assert (diff.equal, diff.count) == (1, 0)
    assert diff.details(5) == []


def test_every_kind_of_difference_is_reported_by_field() -> None:
    rebuilt = Rebuilt()
    fold_records(rebuilt, "e", 0, [(0, 0, KEY, encode_event(message(T0)))])
    mine = {
        KEY: rebuilt.tables.users[KEY].state,
        b"p:only-rebuilt": rebuilt.tables.users[KEY].state,
    }
    other = StoredUser(rebuilt.tables.users[KEY].state.__class__(page_id=PAGE, user_id=USER))
    live = {
        KEY: encode_stored_user(StoredUser(message_state(T0 + H))),
        b"p:only-live": encode_stored_user(other),
        b"p:broken": b"{",
    }
    mine[b"p:broken"] = other.state
    diff = compare("users", live, mine, user_state)
    assert diff.count == 4
    assert diff.only_live == ["p:only-live"]
    assert diff.only_rebuilt == ["p:only-rebuilt"]
    changes = dict(diff.differing)
    assert any(c.startswith("last_opener_at: live=") for c in changes[f"{PAGE}:{USER}"])
    assert "does not decode" in changes["p:broken"][0]
    text = "\n".join(diff.details(1))
    assert "... and 1 more" in text
    assert diff.summary() == (
        "compare: users: 0 equal, 2 differ, 1 only in the live table, 1 only in the rebuild"
    )


def message_state(ts: int) -> UserState:
    rebuilt = Rebuilt()
    fold_records(rebuilt, "e", 0, [(0, 0, KEY, encode_event(message(ts)))])
    return rebuilt.tables.users[KEY].state


def test_pages_compare_with_their_own_decoder() -> None:
    page = PageState(page_id=PAGE, blocked_at=T0)
    key = f"{PAGE}:".encode()
    assert (
        compare("pages", {key: encode_page_state(page)}, {key: page}, decode_page_state).count == 0
    )


def test_progress_prints_lines_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(out, "replay: events", total=10)
    progress.advance(4)
    progress.advance(6)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("replay: events: [##############################] 10/10 (100%)")
    assert "done in" in lines[-1]
