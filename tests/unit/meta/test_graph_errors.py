"""The Graph error table (platform-rules.md §7): every fixture, every row, every class."""

from __future__ import annotations

from typing import Any, get_args

import orjson
import pytest

from tests.fixtures_path import fixtures_dir
from windowgate.meta.graph_errors import (
    ACTIONS,
    RULES,
    ErrorClass,
    Transport,
    classify,
    classify_transport,
    match,
)


def fixture(name: str) -> Any:
    return orjson.loads((fixtures_dir("graph-responses") / f"{name}.json").read_bytes())


def error(code: int, subcode: int | None = None, message: str = "x") -> dict[str, Any]:
    body: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        body["error_subcode"] = subcode
    return {"error": body}


@pytest.mark.parametrize(
    ("name", "status", "expected"),
    [
        ("success", 200, "ok"),
        ("error-outside-window", 400, "window_closed"),
        ("error-person-unavailable", 400, "user_unavailable"),
        ("error-rate-limit", 400, "rate_limited"),
        ("error-invalid-parameter-retired-tag", 400, "invalid"),
    ],
)
def test_every_fixture_is_classified(name: str, status: int, expected: str) -> None:
    verdict = classify(status, fixture(name))
    assert verdict.error_class == expected


def test_fixture_every_graph_response_fixture_is_covered() -> None:
    names = {p.stem for p in fixtures_dir("graph-responses").glob("*.json")}
    assert names == {
        "success",
        "error-outside-window",
        "error-person-unavailable",
        "error-rate-limit",
        "error-invalid-parameter-retired-tag",
    }, "a new Graph fixture needs a row in test_every_fixture_is_classified"


def test_success_carries_the_message_id() -> None:
    verdict = classify(200, fixture("success"))
    assert verdict.message_id == "m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM"
    assert verdict.recipient_id == "1254459154682919"
    assert verdict.action.token == "spend"
    assert verdict.action.status == "sent"


@pytest.mark.parametrize(
    ("code", "subcode", "message", "expected"),
    [
        (10, 2018278, "", "window_closed"),
        (10, 2534022, "", "window_closed"),
        (10, None, "(#10) This message is sent Outside Of Allowed Window.", "window_closed"),
        (10, 1893015, "", "opted_out"),
        (551, None, "", "user_unavailable"),
        (551, 1545041, "", "user_unavailable"),
        (200, 1545041, "", "user_unavailable"),
        (10, 2018108, "", "user_unavailable"),
        (10, 1893063, "", "page_restricted"),
        (2022, None, "", "page_restricted"),
        (200, 2018300, "", "thread_owned"),
        (10, 2018321, "", "thread_owned"),
        (613, None, "", "rate_limited"),
        (613, 2534040, "", "rate_limited"),
        (4, None, "", "rate_limited"),
        (4, 2018354, "", "rn_cooldown"),
        (190, None, "", "auth"),
        (190, 460, "", "auth"),
        (2, None, "", "transient"),
        (1, 99, "", "transient"),
        (100, None, "", "invalid"),
        (100, 2018001, "", "invalid"),
        (None, 2300004, "", "invalid"),
    ],
)
def test_the_table(code: int | None, subcode: int | None, message: str, expected: str) -> None:
    assert match(code, subcode, message) == expected


def test_code_10_without_the_window_text_is_not_a_closed_window() -> None:
    assert match(10, None, "(#10) Requires pages_messaging permission") is None
    assert classify(403, error(10, None, "permission")).error_class == "rejected"


def test_every_row_is_reachable() -> None:
    """No row is shadowed by an earlier, more general one."""
    for row in RULES:
        probe_code = row.code if row.code is not None else 10
        assert match(probe_code, row.subcode, row.text) == row.error_class, row


def test_every_class_has_an_action() -> None:
    assert set(ACTIONS) == set(get_args(ErrorClass))


def test_actions_keep_the_invariants() -> None:
    for cls, action in ACTIONS.items():
        if action.retry != "no":  # only definite pre-delivery rejections are called again (I5)
            assert action.status == "failed", cls
            assert action.token in ("release", "keep"), cls
        if action.status == "unknown":  # ambiguous: never retried, token never reused (R-OTN-4)
            assert action.retry == "no" and action.token == "unknown", cls
    assert [c for c, a in ACTIONS.items() if a.token == "spend"] == ["ok"]
    released = {c for c, a in ACTIONS.items() if a.token == "release"}
    assert released == {"rate_limited", "unreachable", "auth"}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, None, "transient"),
        (502, {"unexpected": True}, "transient"),
        (503, error(999), "transient"),
        (429, None, "rate_limited"),
        (400, None, "rejected"),
        (400, error(12345), "rejected"),
        (200, {"recipient_id": "1"}, "ok"),
        (200, error(100), "invalid"),
    ],
)
def test_http_answers_without_a_known_code(status: int, body: Any, expected: str) -> None:
    assert classify(status, body).error_class == expected


def test_string_codes_are_read_as_numbers() -> None:
    verdict = classify(400, {"error": {"code": "10", "error_subcode": "2018278"}})
    assert verdict.error_class == "window_closed"
    assert (verdict.code, verdict.subcode) == (10, 2018278)


def test_transport_failures() -> None:
    never_sent = classify_transport("connect", "ClientConnectorError")
    assert never_sent.error_class == "unreachable"
    assert never_sent.action.retry == "backoff" and never_sent.action.token == "release"
    kinds: tuple[Transport, ...] = ("timeout", "broken")
    for kind in kinds:
        ambiguous = classify_transport(kind, "x")
        assert ambiguous.error_class == "transient"
        assert ambiguous.action.status == "unknown" and ambiguous.action.retry == "no"


def test_detail_names_code_and_message() -> None:
    detail = classify(400, fixture("error-outside-window")).detail
    assert "10/2018278" in detail and "outside of allowed window" in detail
