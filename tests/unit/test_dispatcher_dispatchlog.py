"""Dispatch-log records and what a scan of one partition concludes from them."""

from __future__ import annotations

import pytest

from schemas.codec import SchemaError
from services.dispatcher.delivery.dispatchlog import (
    Attempt,
    Done,
    LogScan,
    TokenUse,
    decode_record,
    done_to_wire,
    encode_record,
    prune,
    request_key,
    token_key,
    token_use,
)

A = Attempt(request_id="r1", page_id="p", user_id="u", at=5, mechanism="OTN", token="t")
D = Done(
    request_id="r1",
    page_id="p",
    user_id="u",
    at=9,
    status="sent",
    message_id="m",
    graph_status=200,
    graph_body={"message_id": "m"},
    calls=1,
)


def use(request_id: str, *, released: bool = False, at: int = 7) -> TokenUse:
    return TokenUse(
        page_id="p",
        user_id="u",
        mechanism="OTN",
        token="t",
        request_id=request_id,
        at=at,
        released=released,
    )


HOLD = use("r1", at=5)
FREE = use("r1", at=9, released=True)


def test_round_trip() -> None:
    assert decode_record(encode_record(A)) == A
    assert decode_record(encode_record(D)) == D
    assert decode_record(encode_record(HOLD)) == HOLD
    assert decode_record(encode_record(FREE)) == FREE


def test_an_attempt_with_a_token_holds_it() -> None:
    assert token_use(A, 5) == HOLD and token_use(A, 9, released=True) == FREE
    assert HOLD.key == FREE.key == token_key("p", "u", "OTN", "t")
    assert token_use(Attempt(request_id="r", page_id="p", user_id="u", at=1), 1) is None


def test_keys_are_unambiguous() -> None:
    assert request_key("p", "u:x", "r") != request_key("p", "u", "x:r")
    assert A.key == D.key == request_key("p", "u", "r1")
    keys = {
        token_key("p", "u", "OTN", "t"),
        token_key("p", "u", "RECURRING", "t"),
        token_key("p", "v", "OTN", "t"),
        request_key("p", "u", "t"),
    }
    assert len(keys) == 4


def test_bad_records() -> None:
    with pytest.raises(SchemaError):
        decode_record(b'{"kind": "maybe"}')
    with pytest.raises(SchemaError):
        decode_record(b"not json")
    with pytest.raises(SchemaError, match="user_id"):
        decode_record(b'{"kind": "token", "page_id": "p"}')


def test_scan_finds_open_attempts() -> None:
    other = Attempt(request_id="r2", page_id="p", user_id="u", at=6)
    scan = LogScan()
    records: tuple[Attempt | Done, ...] = (A, other, D)
    for i, record in enumerate(records):
        scan.add(record.key, encode_record(record), 100 + i)
    scan.add(b"x", b"garbage", 200)
    scan.add(b"y", None, 201)  # a compaction tombstone
    assert set(scan.open) == {other.key}
    assert scan.seen == {A.key: 102, other.key: 101}
    assert (scan.records, scan.unreadable) == (5, 1)


def test_done_before_attempt_in_log_order_still_closes_it() -> None:
    """Compaction keeps the done and drops the attempt: the request is closed and seen."""
    scan = LogScan()
    scan.add(D.key, encode_record(D), 1)
    assert scan.open == {} and D.key in scan.seen


def scan_of(*records: Attempt | Done | TokenUse) -> LogScan:
    scan = LogScan()
    for i, record in enumerate(records):
        scan.add(record.key, encode_record(record), 100 + i)
    return scan


def test_scan_rebuilds_the_tokens_held() -> None:
    scan = scan_of(A, HOLD, D)
    assert scan.tokens == {HOLD.key: HOLD}
    assert set(scan.seen) == {A.key}  # a token is no request
    assert scan_of(A, HOLD, D, FREE).tokens == {}
    assert scan_of(HOLD, FREE, use("r2")).tokens == {HOLD.key: use("r2")}


def test_a_release_frees_only_its_own_requests_token() -> None:
    assert scan_of(HOLD, use("r2", released=True)).tokens == {HOLD.key: HOLD}


def test_after_compaction_the_last_word_on_a_token_stands() -> None:
    """Compaction keeps a key's last record: a release alone means nobody holds it."""
    assert scan_of(FREE).tokens == {}
    assert scan_of(D, HOLD).tokens == {HOLD.key: HOLD}


def test_prune_forgets_old_requests() -> None:
    seen = {b"a": 10, b"b": 20}
    assert prune(seen, 15) == 1 and seen == {b"b": 20}
    tokens = {b"x": use("r1", at=10), b"y": use("r2", at=20)}
    assert prune(tokens, 15) == 1 and list(tokens) == [b"y"]


def test_done_to_wire_hides_metas_body() -> None:
    wire = done_to_wire(D)
    assert wire["status"] == "sent" and wire["message_id"] == "m"
    assert "graph_body" not in wire
