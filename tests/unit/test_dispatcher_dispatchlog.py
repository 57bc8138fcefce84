"""Dispatch-log records and what a scan of one partition concludes from them."""

from __future__ import annotations

import pytest

from schemas.codec import SchemaError
from services.dispatcher.dispatchlog import (
    Attempt,
    Done,
    LogScan,
    decode_record,
    done_to_wire,
    encode_record,
    prune,
    request_key,
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


def test_round_trip() -> None:
    assert decode_record(encode_record(A)) == A
    assert decode_record(encode_record(D)) == D


def test_keys_are_unambiguous() -> None:
    assert request_key("p", "u:x", "r") != request_key("p", "u", "x:r")
    assert A.key == D.key == request_key("p", "u", "r1")


def test_bad_records() -> None:
    with pytest.raises(SchemaError):
        decode_record(b'{"kind": "maybe"}')
    with pytest.raises(SchemaError):
        decode_record(b"not json")


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


def test_prune_forgets_old_requests() -> None:
    seen = {b"a": 10, b"b": 20}
    assert prune(seen, 15) == 1 and seen == {b"b": 20}


def test_done_to_wire_hides_metas_body() -> None:
    wire = done_to_wire(D)
    assert wire["status"] == "sent" and wire["message_id"] == "m"
    assert "graph_body" not in wire
