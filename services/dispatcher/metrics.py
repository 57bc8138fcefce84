"""Prometheus metrics of the dispatcher (`GET /metrics`)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Histogram


@dataclass(frozen=True)
class Metrics:
    decisions: Counter
    skipped: Counter
    token_taken: Counter
    calls: Counter
    outcomes: Counter
    settled: Counter
    transaction_seconds: Histogram


METRICS = Metrics(
    decisions=Counter("windowgate_dispatcher_decisions", "Decision records consumed"),
    skipped=Counter(
        "windowgate_dispatcher_skipped",
        "Decisions not delivered: refused, duplicate, or request_id already attempted",
        ["reason"],
    ),
    token_taken=Counter(
        "windowgate_dispatcher_token_taken",
        "Allowed decisions settled failed without a call: their token was already attempted by "
        "another request (I4; only a faulty upstream grants a token twice)",
        ["mechanism"],
    ),
    calls=Counter(
        "windowgate_dispatcher_graph_calls", "Graph API calls by answer class", ["answer"]
    ),
    outcomes=Counter(
        "windowgate_dispatcher_outcomes", "Requests settled, by delivery status", ["status"]
    ),
    settled=Counter("windowgate_dispatcher_settled", "Outcomes committed to the dispatch log"),
    transaction_seconds=Histogram(
        "windowgate_dispatcher_transaction_seconds",
        "Duration of one dispatch transaction",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    ),
)
