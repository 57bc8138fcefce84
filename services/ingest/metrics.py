"""Prometheus metrics of one ingest app, in its own registry (tests build many apps per process)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "IngestMetrics"]

_PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class IngestMetrics:
    """Counters the handler bumps; label children are cached (a labels() lookup per request adds
    up at thousands of requests per second)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._requests = Counter(
            "windowgate_ingest_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self._events = Counter(
            "windowgate_ingest_events",
            "Events acknowledged by Kafka, by kind",
            ["kind"],
            registry=self.registry,
        )
        self._dead_letters = Counter(
            "windowgate_ingest_dead_letters",
            "Dead-letter records acknowledged by Kafka, by cause",
            ["cause"],
            registry=self.registry,
        )
        self._duplicates = Counter(
            "windowgate_ingest_duplicates_skipped",
            "Redelivered bodies or events not produced again (recently acknowledged)",
            ["level"],
            registry=self.registry,
        )
        self._publish = Histogram(
            "windowgate_ingest_publish_seconds",
            "From handing a body's records to Kafka to the last acknowledgement, by outcome",
            ["outcome"],
            buckets=_PUBLISH_BUCKETS,
            registry=self.registry,
        )
        self._broker_up = Gauge(
            "windowgate_ingest_broker_up",
            "1 when the last health check reached Kafka, else 0",
            registry=self.registry,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Counter] = {}
        self._published = self._publish.labels("acked")
        self._unpublished = self._publish.labels("failed")

    def _child(self, counter: Counter, *labels: str) -> Counter:
        key = (id(counter), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        return child

    def request(self, endpoint: str, status: int) -> None:
        self._child(self._requests, endpoint, str(status)).inc()

    def events(self, kinds: Iterable[str]) -> None:
        """One acknowledged event per item, named by its kind."""
        for kind in kinds:
            self._child(self._events, kind).inc()

    def dead_letters(self, causes: Iterable[str]) -> None:
        for cause in causes:
            self._child(self._dead_letters, cause).inc()

    def duplicates(self, level: str, count: int = 1) -> None:
        if count:
            self._child(self._duplicates, level).inc(count)

    def publish_latency(self, seconds: float, acked: bool) -> None:
        (self._published if acked else self._unpublished).observe(seconds)

    def broker_up(self, up: bool) -> None:
        self._broker_up.set(1 if up else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
