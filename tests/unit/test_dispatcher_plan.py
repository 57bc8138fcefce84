"""The dispatcher's planning step (no broker): what one transaction will hold for a batch.

The focus is I4 at the boundary: a token already attempted by another request — in this batch or
in the dispatch log — is never planned into a second call, whatever the decisions topic says.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY

from schemas.decision import DecisionRecord, encode_decision_record
from schemas.events import SendOutcome, TokenReleased
from schemas.request import SendRequest
from schemas.topics import Topics
from services.dispatcher.config import DispatcherConfig
from services.dispatcher.delivery.dispatchlog import TokenUse, apply_token, request_key, token_use
from services.dispatcher.delivery.graph import Answer, Deliverer
from services.dispatcher.delivery.outcome import Settlement, attempt_for, not_sent, settle
from services.dispatcher.delivery.ratelimit import PageRateLimiter
from services.dispatcher.delivery.worker import Deps, PartitionWorker, Plan
from tests.unit.builders import PAGE, T0, USER, H, empty, message, otn, rn_optin
from windowgate.core.decide import decide
from windowgate.core.fold import fold
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import load_rules
from windowgate.meta.graph_errors import classify
from windowgate.meta.send_api import GraphCall

BOOK = load_rules(None, {PAGE: PageConfig(page_id=PAGE, region="DE")})
NOW = T0 + H
STATE = fold(
    fold(fold(empty(), otn(T0 - H, "otn-1")), rn_optin(T0 - H, "rn-1")), message(T0, "m-open")
)
OTN: dict[str, Any] = {"purpose": "otn", "topic": "restock"}


class NoGraph:
    async def post(self, call: GraphCall, access_token: str) -> Answer:
        raise AssertionError("planning never calls Graph")


def worker(*log: TokenUse) -> PartitionWorker:
    """A partition worker whose dispatch log held these token records (in this order)."""
    config = DispatcherConfig(
        bootstrap="unused:9092",
        prefix="t.",
        partitions=1,
        graph_url="http://unused",
        graph_version="v25.0",
        api_tokens=(),
        port=0,
        group="t.dispatcher",
    )
    limiter = PageRateLimiter({"text": 1.0, "media": 1.0})
    deliverer = Deliverer(NoGraph(), limiter, max_retries=0, backoff_s=0.0, backoff_cap_s=0.0)
    w = PartitionWorker(
        Deps(
            config,
            Topics("t."),
            BOOK,
            deliverer,
            clock=lambda: NOW,
            page_tokens={PAGE: "page-token"},
        ),
        0,
    )
    for record in log:
        apply_token(w.tokens, record)
    return w


def decided(request_id: str, **ask: Any) -> DecisionRecord:
    """An allowed decision, decided as the window would, each time against the same state (as a
    faulty window that forgot its own reservations would)."""
    ask.setdefault("message", {"text": f"hello {request_id}"})
    request = SendRequest(request_id=request_id, page_id=PAGE, user_id=USER, **ask)
    decision = decide(STATE, request, NOW, BOOK)
    assert decision.allowed, decision.detail
    return DecisionRecord(decision, request.message)


def plan(w: PartitionWorker, *records: DecisionRecord) -> Plan:
    batch = [
        ConsumerRecord("t.decisions", 0, i, NOW, 0, b"k", encode_decision_record(r), None, 0, 0, ())
        for i, r in enumerate(records)
    ]
    return w._plan(batch)


def held(record: DecisionRecord, *, released: bool = False) -> TokenUse:
    use = token_use(attempt_for(record.decision, T0), T0, released=released)
    assert use is not None
    return use


def taken(mechanism: str) -> float:
    value = REGISTRY.get_sample_value(
        "windowgate_dispatcher_token_taken_total", {"mechanism": mechanism}
    )
    return value or 0.0


def only(settled: list[Settlement]) -> Settlement:
    [settlement] = settled
    return settlement


def test_the_second_decision_with_a_token_in_one_batch_is_refused_without_a_call() -> None:
    first, second = decided("r1", **OTN), decided("r2", **OTN)
    assert first.decision.token == second.decision.token == "otn-1"
    before = taken("OTN")
    p = plan(worker(), first, second)
    [job] = p.jobs
    assert job.attempt.request_id == "r1"
    [hold] = p.tokens.values()
    assert hold == replace(held(first), at=NOW)
    refused = only(p.settled)
    assert refused.done.request_id == "r2"
    assert (refused.done.status, refused.done.calls) == ("failed", 0)
    assert "token already attempted by request r1" in (refused.done.detail or "")
    # the token is not given back: r1 may have spent it
    assert [type(e) for e in refused.events] == [SendOutcome]
    assert refused.released is None
    assert taken("OTN") == before + 1
    assert set(p.keys) == {request_key(PAGE, USER, "r1"), request_key(PAGE, USER, "r2")}
    assert p.next_offset == 2


def test_a_token_held_in_the_dispatch_log_is_refused_from_the_log_alone() -> None:
    earlier = decided("r-old", purpose="recurring", topic="weekly-deals")
    again = decided("r-new", purpose="recurring", topic="weekly-deals")
    p = plan(worker(held(earlier)), again)
    assert p.jobs == [] and p.tokens == {}
    refused = only(p.settled)
    assert "token already attempted by request r-old" in (refused.done.detail or "")
    assert [type(e) for e in refused.events] == [SendOutcome]


def test_the_token_is_checked_before_anything_that_would_release_it() -> None:
    """An expired decision releases its token, unless another request holds it."""
    first = decided("r1", **OTN)
    late = decided("r2", **OTN)
    late = replace(late, decision=replace(late.decision, valid_until=NOW - 1))
    refused = only(plan(worker(held(first)), late).settled)
    assert "already attempted by request r1" in (refused.done.detail or "")
    assert not any(isinstance(e, TokenReleased) for e in refused.events)
    # nobody holds it: the expired decision is settled as before, and gives its token back
    w = worker()
    expired = only(plan(w, late).settled)
    assert "no longer" in (expired.done.detail or "")
    assert any(isinstance(e, TokenReleased) for e in expired.events)
    assert w._released([expired]) == []  # never held in the log: nothing to free there


def test_a_redelivered_request_is_skipped_not_refused() -> None:
    first = decided("r1", **OTN)
    w = worker(held(first))
    w.seen[request_key(PAGE, USER, "r1")] = T0
    p = plan(w, first)
    assert (p.jobs, p.settled, p.tokens) == ([], [], {})


def test_a_released_token_can_be_attempted_again() -> None:
    first, second = decided("r1", **OTN), decided("r2", **OTN)
    p = plan(worker(held(first), held(first, released=True)), second)
    assert [j.attempt.request_id for j in p.jobs] == ["r2"] and p.settled == []
    assert [h.request_id for h in p.tokens.values()] == ["r2"]


def test_only_the_holder_releases_a_token() -> None:
    first, second = decided("r1", **OTN), decided("r2", **OTN)
    p = plan(worker(held(first), held(second, released=True)), second)
    assert p.jobs == [] and "by request r1" in (only(p.settled).done.detail or "")


def test_tokens_belong_to_one_user_and_mechanism() -> None:
    mine = decided("r1", **OTN)
    other_user = replace(held(mine), user_id="someone-else")
    other_mechanism = replace(held(mine), mechanism="RECURRING")
    p = plan(worker(other_user, other_mechanism), mine)
    assert [j.attempt.request_id for j in p.jobs] == ["r1"]


def test_window_decisions_hold_no_token() -> None:
    p = plan(worker(), decided("r1", purpose="response"), decided("r2", purpose="response"))
    assert [j.attempt.request_id for j in p.jobs] == ["r1", "r2"] and p.tokens == {}


def test_an_outcome_frees_a_token_only_for_its_holder() -> None:
    first, second = decided("r1", **OTN), decided("r2", **OTN)
    w = worker(held(first))
    rate_limited = classify(400, {"error": {"code": 613, "error_subcode": 2534040}})
    given_back = settle(attempt_for(first.decision, NOW), rate_limited, NOW)
    spent = settle(attempt_for(first.decision, NOW), classify(200, {"message_id": "m"}), NOW)
    not_ours = not_sent(attempt_for(second.decision, NOW), NOW, "expired")
    assert given_back.released is not None and not_ours.released is not None
    assert spent.released is None
    assert w._released([given_back, spent, not_ours]) == [given_back.released]


async def test_a_retry_after_a_new_producer_drops_what_another_owner_attempted_meanwhile(
    monkeypatch: Any,
) -> None:
    """A worker whose transaction failed starts a new producer (fencing whoever took the partition
    while it stalled) and re-reads the log: what the other owner attempted is not called again."""
    import services.dispatcher.delivery.worker as worker_module
    from services.dispatcher.delivery.dispatchlog import LogScan

    r1, r2 = decided("r1", **OTN), decided("r2", purpose="response")
    r3 = decided("r3", purpose="response")
    w = worker()
    p = plan(w, r1, r2, r3)
    assert [j.attempt.request_id for j in p.jobs] == ["r1", "r2", "r3"]
    meanwhile = LogScan()
    meanwhile.seen[request_key(PAGE, USER, "r2")] = NOW  # the other owner attempted r2
    other = decided("r-other", **OTN)  # ... and gave r1's token to another request
    apply_token(meanwhile.tokens, held(other))

    async def scan(bootstrap: str, topic: str, partition: int) -> LogScan:
        return meanwhile

    monkeypatch.setattr(worker_module, "scan_partition", scan)
    await w._resync(p)
    assert [j.attempt.request_id for j in p.jobs] == ["r3"]
    assert [u.request_id for u in p.tokens.values()] == []
    assert request_key(PAGE, USER, "r2") in w.seen  # never planned again either
    assert [u.request_id for u in w.tokens.values()] == ["r-other"]
