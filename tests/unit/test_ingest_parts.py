"""Ingest's small parts: the signature check, the recent-keys cache, body → records."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest

from schemas.events import decode_event, encode_event
from schemas.topics import Topics
from services.ingest.outbox import MAX_RECORD_BYTES, build_outbox
from services.ingest.recent import RecentKeys
from services.ingest.signature import sign, verify
from windowgate.meta.normalise import normalise

SECRET = b"app-secret"
BODY = b'{"object":"page","entry":[]}'
TOPICS = Topics("t.")
PAGE = "682498171943165"
USER = "1254459154682919"


# ---- signature -------------------------------------------------------------------------------


def test_sign_is_meta_s_header_format() -> None:
    digest = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY) == f"sha256={digest}"


def test_verify_returns_the_digest_of_a_valid_signature() -> None:
    assert verify(SECRET, BODY, sign(SECRET, BODY)) == sign(SECRET, BODY).removeprefix("sha256=")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        "sha256=zz",
        "sha1=" + "0" * 40,
        "SHA256=" + "0" * 64,
        sign(b"other", BODY),
        sign(SECRET, BODY + b" "),
        sign(SECRET, BODY)[:-1],
        sign(SECRET, BODY)[:-1] + "é",
    ],
)
def test_verify_refuses_anything_else(header: str | None) -> None:
    assert verify(SECRET, BODY, header) is None


def test_verify_tolerates_case_and_surrounding_space() -> None:
    digest = sign(SECRET, BODY).removeprefix("sha256=")
    assert verify(SECRET, BODY, f"sha256={digest.upper()} ") == digest


# ---- recent keys -----------------------------------------------------------------------------


def test_recent_keys_forget_the_oldest_beyond_capacity() -> None:
    keys = RecentKeys(3)
    keys.update(["a", "b", "c", "a"])
    assert len(keys) == 3
    keys.add("d")
    assert "a" not in keys
    assert all(k in keys for k in "bcd")


def test_recent_keys_of_capacity_zero_remember_nothing() -> None:
    keys = RecentKeys(0)
    keys.add("a")
    assert "a" not in keys and len(keys) == 0


def test_recent_keys_refuse_a_negative_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RecentKeys(-1)


# ---- body → records --------------------------------------------------------------------------


def _message(mid: str, text: str = "hi") -> dict[str, object]:
    return {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": 1_700_000_000_000,
        "message": {"mid": mid, "text": text},
    }


def _body(*elements: dict[str, object]) -> dict[str, object]:
    return {"object": "page", "entry": [{"id": PAGE, "messaging": list(elements)}]}


def test_outbox_keys_events_and_counts_kinds() -> None:
    normalised = normalise(_body(_message("m_1"), _message("m_2")))
    out = build_outbox(normalised, TOPICS, RecentKeys(10), 5, "page")
    assert out.records == [
        (TOPICS.events, f"{PAGE}:{USER}".encode(), encode_event(e)) for e in normalised.events
    ]
    assert out.dedup_keys == ["msg:m_1", "msg:m_2"]
    assert out.kinds == ["message", "message"]
    assert not out.dead_letters and out.skipped == 0


def test_outbox_skips_recently_acknowledged_events() -> None:
    seen = RecentKeys(10)
    seen.add("msg:m_1")
    out = build_outbox(normalise(_body(_message("m_1"), _message("m_2"))), TOPICS, seen, 5, "page")
    assert out.dedup_keys == ["msg:m_2"] and out.skipped == 1


def test_an_event_too_large_for_kafka_becomes_a_dead_letter() -> None:
    huge = "x" * (MAX_RECORD_BYTES + 10)
    out = build_outbox(normalise(_body(_message("m_big", huge))), TOPICS, RecentKeys(10), 5, "page")
    [(topic, key, value)] = out.records
    assert (topic, key) == (TOPICS.dead_letter, PAGE.encode())
    assert len(value) < 20_000
    record = orjson.loads(value)
    assert "too large" in record["reason"]
    assert record["source"]["dedup_key"] == "msg:m_big"
    assert out.dead_letters == ["oversize"] and out.dedup_keys == []


def test_an_unsupported_element_too_large_for_kafka_is_truncated() -> None:
    element = {
        "sender": {"id": USER},
        "timestamp": 1,
        "game_play": {"blob": "y" * MAX_RECORD_BYTES},
    }
    out = build_outbox(normalise(_body(element)), TOPICS, RecentKeys(10), 5, "page")
    [(topic, key, value)] = out.records
    assert (topic, key) == (TOPICS.dead_letter, PAGE.encode())
    assert len(value) < 20_000
    record = orjson.loads(value)
    assert "truncated" in record["reason"] and "game_play" in record["reason"]
    assert record["raw"].startswith('{"sender"')


def test_an_ordinary_event_round_trips() -> None:
    out = build_outbox(normalise(_body(_message("m_1"))), TOPICS, RecentKeys(0), 5, "page")
    [(_, _, value)] = out.records
    assert decode_event(value).dedup_key == "msg:m_1"
