"""The retry policy: retry only definite pre-delivery rejections, re-check validity each time."""

from __future__ import annotations

from typing import Any

from services.dispatcher.delivery.graph import Answer, Deliverer
from services.dispatcher.delivery.ratelimit import PageRateLimiter
from windowgate.meta.graph_errors import classify, classify_transport
from windowgate.meta.send_api import GraphCall

CALL = GraphCall("/v25.0/p/messages", {"recipient": {"id": "u"}}, "text", "p")
OK = Answer(classify(200, {"message_id": "m_1"}), 200, {"message_id": "m_1"})


def err(code: int, subcode: int | None = None) -> Answer:
    body: dict[str, Any] = {"error": {"code": code, "error_subcode": subcode, "message": "x"}}
    return Answer(classify(400, body), 400, body)


class ScriptedGraph:
    """A fake Sender: answers in order and records what it was asked."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[GraphCall, str]] = []

    async def post(self, call: GraphCall, access_token: str) -> Answer:
        self.calls.append((call, access_token))
        return self.answers.pop(0)


class Sleeps:
    def __init__(self) -> None:
        self.waited: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waited.append(seconds)


def deliverer(graph: ScriptedGraph, sleeps: Sleeps, **kw: Any) -> Deliverer:
    limiter = PageRateLimiter({"text": 1e9, "media": 1e9})
    options: dict[str, Any] = {"max_retries": 3, "backoff_s": 0.5, "backoff_cap_s": 1.5}
    options.update(kw)
    return Deliverer(graph, limiter, sleep=sleeps, **options)


def always_valid() -> None:
    return None


async def test_success_is_one_call() -> None:
    graph, sleeps = ScriptedGraph(OK), Sleeps()
    result = await deliverer(graph, sleeps).deliver(CALL, "tok", always_valid)
    assert result.answer == OK and result.calls == 1
    assert graph.calls == [(CALL, "tok")]


async def test_rate_limits_are_retried_with_capped_backoff() -> None:
    graph, sleeps = ScriptedGraph(err(613, 2534040), err(4), err(613), OK), Sleeps()
    result = await deliverer(graph, sleeps).deliver(CALL, "tok", always_valid)
    assert result.answer == OK and result.calls == 4
    assert sleeps.waited == [0.5, 1.0, 1.5]


async def test_retries_stop_at_the_cap_with_the_last_answer() -> None:
    graph, sleeps = ScriptedGraph(*[err(613)] * 4), Sleeps()
    result = await deliverer(graph, sleeps).deliver(CALL, "tok", always_valid)
    assert result.calls == 4
    assert result.answer is not None and result.answer.verdict.error_class == "rate_limited"


async def test_ambiguous_answers_are_never_retried() -> None:
    for answer in (
        Answer(classify_transport("timeout", "t")),
        Answer(classify_transport("broken", "reset")),
        Answer(classify(500, None), 500),
        err(2),
    ):
        graph, sleeps = ScriptedGraph(answer, OK), Sleeps()
        result = await deliverer(graph, sleeps).deliver(CALL, "tok", always_valid)
        assert result.calls == 1, answer
        assert result.answer is not None and result.answer.verdict.action.status == "unknown"


async def test_never_connected_is_retried() -> None:
    graph, sleeps = ScriptedGraph(Answer(classify_transport("connect", "refused")), OK), Sleeps()
    result = await deliverer(graph, sleeps).deliver(CALL, "tok", always_valid)
    assert result.answer == OK and result.calls == 2


async def test_definite_refusals_are_not_retried() -> None:
    for answer in (err(10, 2018278), err(551, 1545041), err(100), err(190), err(10, 1893015)):
        graph, sleeps = ScriptedGraph(answer, OK), Sleeps()
        result = await deliverer(graph, sleeps).deliver(CALL, "tok", always_valid)
        assert result.calls == 1 and result.answer == answer


async def test_validity_is_checked_before_every_call() -> None:
    """I6: a decision that expires while rate-limited is not sent again."""
    checks = iter([None, "expired"])
    graph, sleeps = ScriptedGraph(err(613), OK), Sleeps()
    result = await deliverer(graph, sleeps).deliver(CALL, "tok", lambda: next(checks))
    assert result.calls == 1 and result.skipped == "expired"
    assert result.answer is not None and result.answer.verdict.error_class == "rate_limited"


async def test_expired_before_the_first_call_makes_no_call() -> None:
    graph, sleeps = ScriptedGraph(OK), Sleeps()
    result = await deliverer(graph, sleeps).deliver(CALL, "tok", lambda: "expired")
    assert result.calls == 0 and result.answer is None and graph.calls == []


async def test_cooldown_is_retried_once_only_when_configured() -> None:
    graph, sleeps = ScriptedGraph(err(4, 2018354), OK), Sleeps()
    result = await deliverer(graph, sleeps).deliver(CALL, "tok", always_valid)
    assert result.calls == 1 and result.answer is not None
    assert result.answer.verdict.error_class == "rn_cooldown"
    graph, sleeps = ScriptedGraph(err(4, 2018354), err(4, 2018354), OK), Sleeps()
    result = await deliverer(graph, sleeps, cooldown_retry_s=7).deliver(CALL, "t", always_valid)
    assert result.calls == 2 and sleeps.waited == [7]


async def test_every_answer_is_reported() -> None:
    seen: list[str] = []
    graph, sleeps = ScriptedGraph(err(613), OK), Sleeps()
    await deliverer(graph, sleeps).deliver(
        CALL, "tok", always_valid, lambda a: seen.append(a.verdict.error_class)
    )
    assert seen == ["rate_limited", "ok"]
