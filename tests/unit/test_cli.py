"""`windowgate decide` and `windowgate rules` as a user runs them (DESIGN.md §4.1)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests import fixtures_path
from windowgate.cli import LATER_SHOWN, main
from windowgate.core.timeconst import DAY_MS, HOUR_MS
from windowgate.core.timestamps import ms_to_iso, parse_iso_ms

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE = "682498171943165"
USER = "1254459154682919"
T01 = 1502905976377  # fixture 01's message timestamp (ms)
T09 = 1458692752478  # fixture 09's OTN opt-in timestamp
OTN_TOPIC = "back-in-stock:adidas-sl72"
RETIRED = {"ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE"}


def webhook_line(name: str) -> str:
    """A fixture as Meta POSTs it: one compact JSON document on one line."""
    return orjson.dumps(orjson.loads(fixtures_path.fixture_bytes("meta-webhooks", name))).decode()


def request(request_id: str, **fields: Any) -> str:
    fields.setdefault("message", {"text": "hello"})
    body = {"request_id": request_id, "page_id": PAGE, "user_id": USER, **fields}
    return orjson.dumps(body).decode()


def write(tmp_path: Path, name: str, lines: list[str]) -> str:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def run_decide(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    webhooks: list[str],
    requests: list[str],
    now: int | None,
    *extra: str,
) -> tuple[int, list[dict[str, Any]], str]:
    argv = [
        "decide",
        "--webhooks",
        write(tmp_path, "hooks.jsonl", webhooks),
        "--request",
        write(tmp_path, "requests.jsonl", requests),
        *extra,
    ]
    if now is not None:
        argv += ["--now", ms_to_iso(now)]
    code = main(argv)
    captured = capsys.readouterr()
    decisions = [orjson.loads(line) for line in captured.out.splitlines()]
    return code, decisions, captured.err


# ---- decide: the fixtures' answers ---------------------------------------------------------------


def test_inside_the_window_a_request_is_allowed_as_response(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = T01 + HOUR_MS
    code, decisions, err = run_decide(
        tmp_path, capsys, [webhook_line("01-quick-reply.json")], [request("r1")], now
    )
    assert code == 0
    assert err == ""
    [d] = decisions
    assert d["v"] == 1
    assert (d["request_id"], d["page_id"], d["user_id"]) == ("r1", PAGE, USER)
    assert d["allowed"] is True
    assert d["mechanism"] == "RESPONSE"
    assert d["reason"] == "window_open"
    assert d["decided_at"] == now
    assert d["valid_until"] == T01 + 24 * HOUR_MS
    assert d["duplicate"] is False
    assert d["rules_version"] == "2026-11-24"


def test_after_the_window_a_request_is_refused_with_alternatives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, decisions, _ = run_decide(
        tmp_path, capsys, [webhook_line("01-quick-reply.json")], [request("r1")], T01 + 25 * HOUR_MS
    )
    assert code == 0  # a refusal is an answer, not an error
    [d] = decisions
    assert d["allowed"] is False
    assert d["reason"] == "window_closed"
    assert d["alternatives"], "a refusal lists what could carry the message instead"
    mechanisms = {a["mechanism"] for a in d["alternatives"]}
    assert "RESPONSE" not in mechanisms
    assert "UTILITY" in mechanisms


def test_one_otn_token_allows_exactly_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    otn = {"purpose": "otn", "topic": OTN_TOPIC}
    code, decisions, _ = run_decide(
        tmp_path,
        capsys,
        [webhook_line("09-otn-optin.json")],
        [request("r1", **otn), request("r2", **otn)],
        T09 + DAY_MS,
    )
    assert code == 0
    first, second = decisions
    assert first["allowed"] is True
    assert first["mechanism"] == "OTN"
    assert first["reason"] == "otn_token"
    assert first["token"] == "otn-token-0001"
    assert second["allowed"] is False
    assert second["reason"] == "token_spent"


def test_a_repeated_request_id_gets_its_first_decision_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    otn = {"purpose": "otn", "topic": OTN_TOPIC}
    _, decisions, _ = run_decide(
        tmp_path,
        capsys,
        [webhook_line("09-otn-optin.json")],
        [request("r1", **otn), request("r1", **otn), request("r2", **otn)],
        T09 + DAY_MS,
    )
    first, repeat, other = decisions
    assert first["allowed"] is True
    assert first["duplicate"] is False
    assert repeat["duplicate"] is True
    assert {**repeat, "duplicate": False} == first
    # The repeat did not unspend or respend anything: the token is still used once.
    assert other["reason"] == "token_spent"


def test_a_request_for_an_unknown_user_is_refused_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, decisions, _ = run_decide(tmp_path, capsys, [], [request("r1", user_id="999")], T01)
    assert code == 0
    [d] = decisions
    assert d["user_id"] == "999"
    assert d["allowed"] is False
    assert d["reason"] == "window_closed"


def test_webhooks_are_folded_in_order_and_the_state_evolves_between_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fixtures 01 and 14 are the same user; 13 is a standby message and 12 blocks the page."""
    hooks = [webhook_line("01-quick-reply.json"), "", webhook_line("14-batch-two-entries.json")]
    second_user = request("r2", page_id="542998526103632", user_id="5794982867201265")
    _, decisions, _ = run_decide(
        tmp_path, capsys, hooks, [request("r1"), second_user], T01 + HOUR_MS
    )
    assert [d["reason"] for d in decisions] == ["window_open", "window_open"]
    # 14's postback (12 ms after its message) is the second user's last opener.
    assert decisions[1]["valid_until"] == 1502905976390 + 24 * HOUR_MS


def test_a_policy_enforcement_block_refuses_every_user_of_the_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = [webhook_line("01-quick-reply.json"), webhook_line("12-policy-enforcement-block.json")]
    _, decisions, _ = run_decide(tmp_path, capsys, hooks, [request("r1")], T01 + HOUR_MS)
    [d] = decisions
    assert d["allowed"] is False
    assert d["reason"] == "page_restricted"


def test_a_retired_tag_is_allowed_before_2026_04_27_and_refused_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = {"purpose": "tag", "tag": "ACCOUNT_UPDATE"}
    hooks = [webhook_line("01-quick-reply.json")]
    _, before, _ = run_decide(
        tmp_path, capsys, hooks, [request("r1", **tag)], parse_iso_ms("2026-04-26T23:59:59Z")
    )
    _, after, _ = run_decide(
        tmp_path, capsys, hooks, [request("r1", **tag)], parse_iso_ms("2026-04-27T00:00:00Z")
    )
    assert (before[0]["allowed"], before[0]["reason"], before[0]["tag"]) == (
        True,
        "message_tag",
        "ACCOUNT_UPDATE",
    )
    assert (after[0]["allowed"], after[0]["reason"]) == (False, "tag_retired")


def test_the_pages_file_grants_human_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    human = {"purpose": "human_agent", "human_author": "agent@example.com"}
    hooks = [webhook_line("01-quick-reply.json")]
    now = T01 + 3 * DAY_MS
    _, without, _ = run_decide(tmp_path, capsys, hooks, [request("r1", **human)], now)
    pages = tmp_path / "pages.json"
    pages.write_bytes(orjson.dumps({"pages": {PAGE: {"human_agent": True}}}))
    _, with_pages, _ = run_decide(
        tmp_path, capsys, hooks, [request("r1", **human)], now, "--pages", str(pages)
    )
    assert without[0]["reason"] == "human_agent_not_permitted"
    assert with_pages[0]["allowed"] is True
    assert with_pages[0]["mechanism"] == "HUMAN_AGENT"
    assert with_pages[0]["reason"] == "human_agent_window"


def test_a_custom_rules_file_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = {
        "version": "test-48h",
        "rules": [
            {
                "id": "R-WIN-48",
                "kind": "window",
                "platforms": ["messenger"],
                "params": {"hours": 48},
            }
        ],
    }
    path = tmp_path / "rules.json"
    path.write_bytes(orjson.dumps(rules))
    hooks = [webhook_line("01-quick-reply.json")]
    _, decisions, _ = run_decide(
        tmp_path, capsys, hooks, [request("r1")], T01 + 25 * HOUR_MS, "--rules", str(path)
    )
    assert decisions[0]["allowed"] is True
    assert decisions[0]["rules_version"] == "test-48h"
    assert decisions[0]["rule"] == "R-WIN-48"


def test_now_defaults_to_the_wall_clock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = time.time_ns() // 1_000_000
    _, decisions, _ = run_decide(tmp_path, capsys, [], [request("r1")], None)
    after = time.time_ns() // 1_000_000
    assert before <= decisions[0]["decided_at"] <= after


def test_unsupported_webhook_elements_are_warnings_not_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = {"object": "page", "entry": [{"id": PAGE, "time": T01, "changes": [{"field": "feed"}]}]}
    hooks = ["", orjson.dumps(feed).decode(), webhook_line("01-quick-reply.json")]
    code, decisions, err = run_decide(tmp_path, capsys, hooks, [request("r1")], T01 + HOUR_MS)
    assert code == 0
    assert decisions[0]["reason"] == "window_open"
    [warning] = err.splitlines()
    assert warning.startswith("windowgate: warning: ")
    assert "hooks.jsonl line 2" in warning  # blank lines still count
    assert "entry[0].changes[0]" in warning


def test_webhook_events_after_now_are_reported_and_not_folded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def message_at(ts: int, mid: str) -> str:
        element = {"sender": {"id": USER}, "recipient": {"id": PAGE}, "timestamp": ts}
        entry = {"id": PAGE, "time": ts, "messaging": [{**element, "message": {"mid": mid}}]}
        return orjson.dumps({"object": "page", "entry": [entry]}).decode()

    now = T01 + 30 * HOUR_MS  # fixture 01's window has closed by now
    hooks = [webhook_line("01-quick-reply.json")]
    hooks += [message_at(now + minute * 60_000, f"m-late-{minute}") for minute in range(1, 8)]
    code, decisions, err = run_decide(tmp_path, capsys, hooks, [request("r1")], now)
    assert code == 0
    # The seven later messages would have opened the window: "the user acted" after now.
    assert decisions[0]["reason"] == "window_closed"
    lines = err.splitlines()
    assert lines[0] == (
        f"windowgate: warning: 7 webhook events later than --now ({ms_to_iso(now)}) not folded:"
    )
    assert len(lines) == 1 + LATER_SHOWN + 1
    assert lines[1] == (
        f"windowgate: warning: {tmp_path / 'hooks.jsonl'} line 2: message of user {USER} "
        f"on page {PAGE} at {ms_to_iso(now + 60_000)} (msg:m-late-1)"
    )
    assert all("hooks.jsonl line" in line for line in lines[1 : 1 + LATER_SHOWN])
    assert lines[-1] == f"windowgate: warning: ... and {7 - LATER_SHOWN} more"


def test_a_webhook_event_at_now_exactly_is_folded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, decisions, err = run_decide(
        tmp_path, capsys, [webhook_line("01-quick-reply.json")], [request("r1")], T01
    )
    assert (code, decisions[0]["reason"], err) == (0, "window_open", "")


def test_windows_line_endings_and_a_byte_order_mark_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = tmp_path / "hooks.jsonl"
    hooks.write_bytes(b"\xef\xbb\xbf" + webhook_line("01-quick-reply.json").encode() + b"\r\n\r\n")
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(
        b"\xef\xbb\xbf" + request("r1").encode() + b"\r\n" + request("r2").encode()
    )
    argv = ["decide", "--webhooks", str(hooks), "--request", str(requests)]
    assert main([*argv, "--now", ms_to_iso(T01 + HOUR_MS)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [orjson.loads(line)["reason"] for line in lines] == ["window_open", "window_open"]


# ---- decide: malformed input → exit 2, one message naming file, line and field ------------------

OK_HOOK = "01-quick-reply.json"


@pytest.mark.parametrize(
    ("hooks", "requests", "expected"),
    [
        pytest.param(
            [OK_HOOK],
            [request("r1"), "", "{not json"],
            ["requests.jsonl line 3", "not valid JSON"],
            id="request-line-not-json",
        ),
        pytest.param(
            ["{oops", OK_HOOK],
            [request("r1")],
            ["hooks.jsonl line 1", "not valid JSON"],
            id="webhook-line-not-json",
        ),
        pytest.param(
            [OK_HOOK, '{"object": "user", "entry": []}'],
            [request("r1")],
            ["hooks.jsonl line 2", "object", "'page' or 'instagram'"],
            id="bad-envelope-object",
        ),
        pytest.param(
            ['{"object": "page", "entry": {}}'],
            [request("r1")],
            ["hooks.jsonl line 1", "entry"],
            id="bad-envelope-entry",
        ),
        pytest.param(
            ["[1, 2]"],
            [request("r1")],
            ["hooks.jsonl line 1", "webhook body"],
            id="webhook-not-an-object",
        ),
        pytest.param(
            [OK_HOOK],
            [request("r1"), orjson.dumps({"page_id": PAGE, "user_id": USER}).decode()],
            ["requests.jsonl line 2", "request_id: is required"],
            id="request-missing-request-id",
        ),
        pytest.param(
            [OK_HOOK],
            [request("r1", purpose="shout")],
            ["requests.jsonl line 1", "purpose: expected one of", "'auto'", "'shout'"],
            id="request-bad-purpose",
        ),
        pytest.param(
            [OK_HOOK],
            [orjson.dumps({"request_id": 7, "page_id": PAGE, "user_id": USER}).decode()],
            ["requests.jsonl line 1", "request_id: expected a string"],
            id="request-wrong-type",
        ),
        pytest.param(
            [OK_HOOK],
            [request("r1", send_by="tomorrow")],
            ["requests.jsonl line 1", "send_by: expected an integer"],
            id="request-wrong-type-int",
        ),
        pytest.param(
            [OK_HOOK],
            [request("")],
            ["requests.jsonl line 1", "request_id: must not be empty"],
            id="request-empty-request-id",
        ),
        pytest.param(
            [OK_HOOK],
            ['["r1"]'],
            ["requests.jsonl line 1", "expected an object"],
            id="request-not-an-object",
        ),
        pytest.param(
            [OK_HOOK],
            [request("r1"), request("r2", purpse="otn", topc="x")],
            ["requests.jsonl line 2", "purpse: unknown field (did you mean 'purpose'?)", "topc"],
            id="request-misspelt-field",
        ),
        pytest.param(
            [OK_HOOK],
            [request("r1", v=2)],
            ["requests.jsonl line 1", "v: unsupported wire version 2"],
            id="request-newer-wire-version",
        ),
    ],
)
def test_malformed_lines_exit_2_naming_file_line_and_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hooks: list[str],
    requests: list[str],
    expected: list[str],
) -> None:
    hook_lines = [webhook_line(h) if h == OK_HOOK else h for h in hooks]
    code, decisions, err = run_decide(tmp_path, capsys, hook_lines, requests, T01)
    assert code == 2
    assert decisions == []  # nothing is decided from a file that is partly wrong
    [message] = err.splitlines()
    assert message.startswith("windowgate: ")
    for part in expected:
        assert part in message
    assert "Traceback" not in err


def _argv(tmp_path: Path, **overrides: str) -> list[str]:
    args = {
        "--webhooks": write(tmp_path, "hooks.jsonl", [webhook_line(OK_HOOK)]),
        "--request": write(tmp_path, "requests.jsonl", [request("r1")]),
        "--now": "2026-04-26T12:00:00Z",
        **overrides,
    }
    return ["decide", *[item for pair in args.items() for item in pair]]


def test_a_missing_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.jsonl")
    for option in ("--webhooks", "--request"):
        assert main(_argv(tmp_path, **{option: missing})) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        [message] = captured.err.splitlines()
        assert missing in message
        assert "cannot read" in message


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", "12/04/2026"])
def test_a_bad_now_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str) -> None:
    assert main(_argv(tmp_path, **{"--now": bad})) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [message] = captured.err.splitlines()
    assert message.startswith("windowgate: --now: ")
    assert repr(bad) in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            {"version": "x", "rules": [{"id": "A", "kind": "nope", "platforms": ["messenger"]}]},
            "rules[0].kind: expected one of",
            id="unknown-kind",
        ),
        pytest.param({"rules": []}, "version: is required", id="no-version"),
        pytest.param(
            {
                "version": "x",
                "rules": [
                    {
                        "id": "A",
                        "kind": "window",
                        "platforms": ["messenger"],
                        "params": {"hours": "24"},
                    }
                ],
            },
            "A.params.hours: expected an integer",
            id="param-wrong-type-found-at-decide-time",
        ),
        pytest.param(b"{", "not valid JSON", id="not-json"),
    ],
)
def test_a_malformed_rules_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any, expected: str
) -> None:
    path = tmp_path / "rules.json"
    path.write_bytes(content if isinstance(content, bytes) else orjson.dumps(content))
    assert main([*_argv(tmp_path), "--rules", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [message] = captured.err.splitlines()
    assert "rules.json" in message
    assert expected in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param({"pages": {PAGE: {"human_agent": "yes"}}}, f"pages.{PAGE}.human_agent"),
        pytest.param({"pages": {PAGE: {"rules": {"R-NOPE": {}}}}}, f"pages.{PAGE}.rules.R-NOPE"),
        pytest.param({"pagez": {}}, "pages"),
    ],
)
def test_a_malformed_pages_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any, expected: str
) -> None:
    path = tmp_path / "pages.json"
    path.write_bytes(orjson.dumps(content))
    assert main([*_argv(tmp_path), "--pages", str(path)]) == 2
    captured = capsys.readouterr()
    [message] = captured.err.splitlines()
    assert f"pages file {path}" in message
    assert expected in message


def test_usage_errors_exit_2_and_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decide", "--webhooks", "x.jsonl"]) == 2
    assert "--request" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main([]) == 2
    capsys.readouterr()
    assert main(["decide", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--webhooks FILE" in out
    assert "exit status" in out
    assert main(["rules", "diff", "--help"]) == 0
    assert "FROM" in capsys.readouterr().out


# ---- rules --------------------------------------------------------------------------------------


def test_rules_at_a_date_lists_the_rules_in_force(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "--at", "2026-04-26"]) == 0
    before = capsys.readouterr().out
    assert main(["rules", "--at", "2026-04-27"]) == 0
    after = capsys.readouterr().out
    for tag in RETIRED:
        assert tag in before
        assert tag not in after
    for out in (before, after):
        assert "R-WIN-1" in out
        assert "R-OTN" in out
    assert "R-RN-END" in before and "R-RN-1 " not in before  # legacy RN ended 2026-02-10


def test_rules_json_is_the_list_of_rule_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "--at", "2026-04-26", "--json"]) == 0
    before = orjson.loads(capsys.readouterr().out)
    assert main(["rules", "--at", "2026-04-27T00:00:00Z", "--json"]) == 0
    after = orjson.loads(capsys.readouterr().out)
    assert {r.get("tag") for r in before} >= RETIRED
    assert not {r.get("tag") for r in after} & RETIRED
    window = next(r for r in after if r["id"] == "R-WIN-1")
    assert window["kind"] == "window"
    assert window["params"] == {"hours": 24}
    assert window["platforms"] == ["instagram", "messenger"]


def test_rules_diff_reports_the_three_retired_tags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "diff", "2026-04-26", "2026-04-27"]) == 0
    out = capsys.readouterr().out
    assert "Ended (3)" in out
    assert "Came into force (0)" in out
    assert "Changed (0)" in out
    ended_lines = [line for line in out.splitlines() if line.startswith("  - ")]
    assert len(ended_lines) == 3
    for tag in RETIRED:
        assert any(tag in line for line in ended_lines)

    assert main(["rules", "diff", "2026-04-26", "2026-04-27", "--json"]) == 0
    diff = orjson.loads(capsys.readouterr().out)
    assert {r["tag"] for r in diff["ended"]} == RETIRED
    assert {r["id"] for r in diff["ended"]} == {"R-TAG-RETIRED"}
    assert diff["came_into_force"] == []
    assert diff["changed"] == []


def test_rules_diff_reports_rules_starting_and_params_changing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["rules", "--json", "diff", "2025-08-31", "2026-03-01"]) == 0
    diff = orjson.loads(capsys.readouterr().out)
    assert [r["id"] for r in diff["came_into_force"]] == ["R-RN-END"]
    assert [r["id"] for r in diff["ended"]] == ["R-RN-1"]
    [changed] = diff["changed"]
    assert changed["id"] == "R-RN-2"
    assert changed["changes"] == {"params.hours": [24, 48]}
    assert main(["rules", "diff", "2025-08-31", "2026-03-01"]) == 0
    assert "params.hours: 24 → 48" in capsys.readouterr().out


def test_rules_with_a_bad_date_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "--at", "soon"]) == 2
    assert capsys.readouterr().err.startswith("windowgate: --at: ")
    assert main(["rules", "diff", "2026-04-26", "later"]) == 2
    assert capsys.readouterr().err.startswith("windowgate: TO: ")


# ---- the installed entry point ------------------------------------------------------------------


def test_python_dash_m_windowgate_decides(tmp_path: Path) -> None:
    hooks = write(tmp_path, "hooks.jsonl", [webhook_line("09-otn-optin.json")])
    otn = {"purpose": "otn", "topic": OTN_TOPIC}
    requests = write(tmp_path, "requests.jsonl", [request("a", **otn), request("b", **otn)])
    now = ms_to_iso(T09 + HOUR_MS)
    argv = [
        sys.executable,
        "-m",
        "windowgate",
        "decide",
        "--webhooks",
        hooks,
        "--request",
        requests,
    ]
    done = subprocess.run(
        [*argv, "--now", now], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    first, second = (orjson.loads(line) for line in done.stdout.splitlines())
    assert (first["allowed"], first["mechanism"]) == (True, "OTN")
    assert second["reason"] == "token_spent"

    broken = write(tmp_path, "bad.jsonl", [request("a"), '{"request_id": "b"}'])
    done = subprocess.run(
        [*argv[:-1], broken, "--now", now],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip() == f"windowgate: {broken} line 2: page_id: is required"


def test_replay_is_forwarded_to_the_window_service(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["replay", "--help"])
    except SystemExit as exc:  # argparse's --help inside the replay command
        code = int(exc.code or 0)
    assert code == 0
    assert "Rebuild every user's state from the events topic" in capsys.readouterr().out
