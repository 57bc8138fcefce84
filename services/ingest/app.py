"""The webhook endpoints (DESIGN §4.3, platform-rules §6): a thin shell around `normalise`.

    GET  /webhook   Meta's subscription check: 200 + hub.challenge, else 403
    POST /webhook   signature → parse → normalise → produce → 200 only when all is acknowledged
    GET  /healthz   200 when Kafka answers, else 503
    GET  /metrics   Prometheus text

POST answers, in the order they are checked:

    413  body over INGEST_MAX_BODY_BYTES (Content-Length, or while reading a chunked body)
    403  X-Hub-Signature-256 missing or wrong (checked on the raw bytes, before any parsing)
    400  not JSON, or not a webhook envelope (`normalise` raises EnvelopeError)
    503  Kafka unreachable or slower than INGEST_PUBLISH_TIMEOUT_S: Meta retries the body
    200  every event and every dead letter of the body acknowledged (acks=all, I7); elements of
         unknown kinds go to the dead-letter topic with the reason, so they also get a 200

Meta redelivers; a body whose signature digest was acknowledged moments ago is answered 200
without producing it again, and events acknowledged moments ago are left out of other bodies.
That is an optimisation only (see `recent.py`); correctness rests on downstream idempotence.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

import orjson
from aiohttp import web

from schemas.topics import Topics
from services.common.runtime import now_ms
from services.ingest import signature
from services.ingest.config import IngestConfig
from services.ingest.metrics import CONTENT_TYPE_LATEST, IngestMetrics
from services.ingest.outbox import build_outbox
from services.ingest.publisher import Publisher, PublishError
from services.ingest.recent import RecentKeys
from windowgate.meta.normalise import EnvelopeError, normalise

log = logging.getLogger("services.ingest")

ACCEPTED: Final = "EVENT_RECEIVED"
"""The 200 body; Meta ignores it, its own samples answer this."""
_ACCEPTED_BYTES: Final = ACCEPTED.encode()

HEALTH_TIMEOUT_S: Final = 1.0
RECENT_BODIES: Final = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ENDPOINTS: Final = {"/webhook": "webhook", "/healthz": "healthz", "/metrics": "metrics"}


def _problem(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


def _accepted() -> web.Response:
    return web.Response(body=_ACCEPTED_BYTES, content_type="text/plain")


class Ingest:
    """The handlers and what they share. No policy here: decode, `normalise`, encode, publish."""

    def __init__(
        self,
        config: IngestConfig,
        publisher: Publisher,
        topics: Topics,
        metrics: IngestMetrics,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.config = config
        self.publisher = publisher
        self.topics = topics
        self.metrics = metrics
        self.clock = clock
        self.recent_events = RecentKeys(config.recent_keys)
        self.recent_bodies = RecentKeys(min(config.recent_keys, RECENT_BODIES))

    async def verify_subscription(self, request: web.Request) -> web.Response:
        query = request.query
        mode, token = query.get("hub.mode"), query.get("hub.verify_token")
        expected = self.config.verify_token.encode()
        right = token is not None and hmac.compare_digest(token.encode(), expected)
        if mode != "subscribe" or not right:
            log.warning("webhook verification refused", extra={"mode": mode})
            return _problem(403, "forbidden", "hub.mode must be subscribe with the verify token")
        challenge = query.get("hub.challenge")
        if challenge is None:
            return _problem(400, "bad_request", "hub.challenge is missing")
        log.info("webhook subscription verified")
        return web.Response(
            text=challenge, content_type="text/plain", headers={"X-Content-Type-Options": "nosniff"}
        )

    async def receive(self, request: web.Request) -> web.Response:
        cap = self.config.max_body_bytes
        length = request.content_length
        if length is not None and length > cap:
            return self._refuse(413, "too_large", f"the body is over {cap} bytes", length)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, "too_large", f"the body is over {cap} bytes", length)

        digest = signature.verify(
            self.config.app_secret, body, request.headers.get(signature.HEADER)
        )
        if digest is None:
            present = signature.HEADER in request.headers
            why = "does not match the body" if present else "is missing"
            return self._refuse(403, "forbidden", f"{signature.HEADER} {why}", len(body))
        if digest in self.recent_bodies:
            self.metrics.duplicates("body")
            return _accepted()

        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return self._refuse(400, "bad_request", f"the body is not JSON: {exc}", len(body))
        try:
            normalised = normalise(parsed)
        except EnvelopeError as exc:
            where = f"`{exc.field}` " if exc.field else ""
            return self._refuse(
                400, "bad_request", f"not a webhook envelope: {where}{exc.problem}", len(body)
            )

        envelope = str(parsed["object"])  # normalise accepted it, so it is "page" / "instagram"
        outbox = build_outbox(
            normalised, self.topics, self.recent_events, self.clock(), envelope=envelope
        )
        self.metrics.duplicates("event", outbox.skipped)
        if outbox.records:
            started = time.perf_counter()
            try:
                await self.publisher.publish(outbox.records, self.config.publish_timeout_s)
            except PublishError as exc:
                self.metrics.publish_latency(time.perf_counter() - started, acked=False)
                response = self._refuse(503, "unavailable", str(exc), len(body))
                response.headers["Retry-After"] = "1"
                return response
            self.metrics.publish_latency(time.perf_counter() - started, acked=True)
        self.recent_events.update(outbox.dedup_keys)
        self.recent_bodies.add(digest)
        self.metrics.events(outbox.kinds)
        if outbox.dead_letters:
            self.metrics.dead_letters(outbox.dead_letters)
            log.info(
                "webhook elements sent to the dead-letter topic",
                extra={"dead_letters": len(outbox.dead_letters)},
            )
        return _accepted()

    async def healthz(self, request: web.Request) -> web.Response:
        health = await self.publisher.health(HEALTH_TIMEOUT_S)
        self.metrics.broker_up(health.ok)
        return web.json_response(
            {"status": "ok" if health.ok else "unavailable", "broker": health.detail},
            status=200 if health.ok else 503,
        )

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    def _refuse(self, status: int, error: str, detail: str, size: int | None) -> web.Response:
        # Never log the body, the signature or the secret: only what was wrong and how big.
        log.warning("webhook refused: %s", detail, extra={"status": status, "bytes": size})
        return _problem(status, error, detail)

    @web.middleware
    async def count_requests(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Requests by endpoint and status; unknown paths share one label (no label explosion)."""
        endpoint = _ENDPOINTS.get(request.path, "other")
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.metrics.request(endpoint, exc.status)
            raise
        self.metrics.request(endpoint, response.status)
        return response


INGEST: Final = web.AppKey("ingest", Ingest)
"""`app[INGEST]`: the handlers' state (tests read its caches)."""


def create_app(
    config: IngestConfig,
    publisher: Publisher,
    topics: Topics,
    *,
    metrics: IngestMetrics | None = None,
    clock: Callable[[], int] = now_ms,
) -> web.Application:
    """The aiohttp app; it starts the publisher on start-up and closes it on clean-up."""
    ingest = Ingest(config, publisher, topics, metrics or IngestMetrics(), clock)
    app = web.Application(
        client_max_size=config.max_body_bytes, middlewares=[ingest.count_requests]
    )
    app[INGEST] = ingest
    app.router.add_get("/webhook", ingest.verify_subscription)
    app.router.add_post("/webhook", ingest.receive)
    app.router.add_get("/healthz", ingest.healthz)
    app.router.add_get("/metrics", ingest.metrics_text)

    async def start_publisher(_: web.Application) -> None:
        await publisher.start()

    async def close_publisher(_: web.Application) -> None:
        await publisher.close()

    app.on_startup.append(start_publisher)
    app.on_cleanup.append(close_publisher)
    return app
