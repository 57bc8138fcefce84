"""The dispatcher's HTTP face: `/v1` for windowgate's own callers, the drop-in Graph proxy for
unmodified Messenger clients, `/healthz` and `/metrics`.

A request is never decided here: it is published to `<prefix>send-requests`, decided by the window
worker (single writer, I1), and its decision read back from `<prefix>decisions`; its delivery
outcome from the dispatch log. This process only waits for them.

- `POST /v1/messages` (a SendRequest): 200 with the Decision, plus `delivery` when the outcome is
  known within DISPATCHER_OUTCOME_WAIT_S; 202 and a `Location` to poll when no decision arrived
  within DISPATCHER_WAIT_S. 400 for a malformed request (an unknown field included, named),
  503 with `Retry-After` when Kafka does not take it within DISPATCHER_WAIT_S (broker down or
  frozen): the request may still be decided later, so the caller retries with the same
  `request_id` and gets that one decision (I3).
- `GET /v1/decisions/{request_id}`: from the last DISPATCHER_RECENT decisions this process has seen
  (including some from before it started); 404 for older ones — the window service keeps each
  user's last decisions (`GET /v1/pages/{page}/users/{user}`).
- `POST /{version}/me/messages`, `POST /{version}/{page_id}/messages`: Meta's own body and the
  page's own access token; allowed → Meta's answer to the forwarded call, refused → Meta's error.
  windowgate's own extensions are `X-Windowgate-*` headers; an unknown one is a 400 naming it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas.codec import SchemaError, loads
from schemas.decision import DecisionRecord, decision_to_wire
from schemas.request import SendRequest, request_from_wire
from services.common.auth import bearer_middleware
from services.dispatcher.delivery.dispatchlog import Done, done_to_wire
from services.dispatcher.front.feeds import OutcomeWatcher, TokenIndex
from windowgate.client import DecisionWatcher
from windowgate.core.rulebook import RuleBook
from windowgate.meta.proxy import (
    ProxyAsk,
    ProxyError,
    check_extension_headers,
    forwarded,
    meta_error,
    parse_body,
    proxy_error,
    refusal,
)

log = logging.getLogger(__name__)

PROXY_OUTCOME_FACTOR = 5
"""The proxy waits longer for the outcome than /v1: its caller expects Meta's own answer."""


class Unavailable(Exception):
    """Kafka did not take the request within the wait: answer 503 and `Retry-After`."""


@dataclass(frozen=True, slots=True)
class Submission:
    decision: DecisionRecord | None
    done: Done | None


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


class DispatcherApi:
    def __init__(
        self,
        *,
        rules: RuleBook,
        decisions: DecisionWatcher,
        outcomes: OutcomeWatcher,
        tokens: TokenIndex | None,
        publish: Callable[[SendRequest], Awaitable[None]],
        clock: Callable[[], int],
        api_tokens: tuple[str, ...],
        wait_s: float,
        outcome_wait_s: float,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.rules = rules
        self.decisions = decisions
        self.outcomes = outcomes
        self.tokens = tokens
        self.publish = publish
        self.clock = clock
        self.api_tokens = api_tokens
        self.wait_s = wait_s
        self.outcome_wait_s = outcome_wait_s
        self.ready = ready

    def app(self) -> web.Application:
        auth = cast(Middleware, bearer_middleware(self.api_tokens))
        app = web.Application(middlewares=[auth])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/messages", self.post_message)
        app.router.add_get("/v1/decisions/{request_id}", self.get_decision)
        app.router.add_post("/{version}/me/messages", self.proxy)
        app.router.add_post("/{version}/{page_id}/messages", self.proxy)
        return app

    # ---- the shared path: publish, await the decision, await the outcome ------------------------

    @property
    def retry_after(self) -> str:
        """Seconds a caller should wait before retrying a 503 (the `Retry-After` header)."""
        return str(max(1, math.ceil(self.wait_s)))

    async def submit(self, request: SendRequest, outcome_wait_s: float) -> Submission:
        """Publish, then await the decision, both within `wait_s` together (raises Unavailable
        when Kafka does not take the request in that time), then the outcome."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        decided = self.decisions.expect(request.request_id)
        delivered = self.outcomes.expect(request.request_id)
        try:
            try:
                # A producer waits (and retries) for a broker that is down or frozen; the caller
                # gets an answer within the documented wait instead.
                await asyncio.wait_for(self.publish(request), self.wait_s)
            except TimeoutError as exc:
                raise Unavailable(f"Kafka did not take it within {self.wait_s:g} s") from exc
            except Exception as exc:
                raise Unavailable(f"Kafka did not take it: {exc}") from exc
            try:
                left = max(deadline - loop.time(), 0.0)
                record = await asyncio.wait_for(asyncio.shield(decided), left)
            except TimeoutError:
                return Submission(None, None)
            decision = record.decision
            done = self.outcomes.recent(request.request_id)
            if done is None and decision.allowed and not decision.duplicate and outcome_wait_s:
                try:
                    done = await asyncio.wait_for(asyncio.shield(delivered), outcome_wait_s)
                except TimeoutError:
                    done = None
            return Submission(record, done)
        finally:
            decided.cancel()
            delivered.cancel()

    # ---- /v1 ------------------------------------------------------------------------------------

    @staticmethod
    def _decision_body(record: DecisionRecord, done: Done | None) -> dict[str, Any]:
        body = decision_to_wire(record.decision)
        if done is not None:
            body["delivery"] = done_to_wire(done)
        return body

    async def post_message(self, request: web.Request) -> web.Response:
        try:
            data = loads(await request.read(), "request body")
            if isinstance(data, dict):
                data.setdefault("created_at", self.clock())
            send = request_from_wire(data)
        except SchemaError as exc:
            return _json({"error": "invalid_request", "field": exc.field, "detail": str(exc)}, 400)
        try:
            submission = await self.submit(send, self.outcome_wait_s)
        except Unavailable as exc:
            log.warning("could not publish request %s: %s", send.request_id, exc)
            detail = (
                f"the request was not accepted ({exc}); retry with the same request_id "
                f"after {self.retry_after} s"
            )
            return _json(
                {"error": "unavailable", "request_id": send.request_id, "detail": detail},
                503,
                {"Retry-After": self.retry_after},
            )
        if submission.decision is None:
            link = f"/v1/decisions/{send.request_id}"
            return _json(
                {
                    "request_id": send.request_id,
                    "status": "pending",
                    "detail": f"no decision within {self.wait_s:g} s; poll {link}",
                    "decision_url": link,
                },
                202,
                {"Location": link},
            )
        return _json(self._decision_body(submission.decision, submission.done))

    async def get_decision(self, request: web.Request) -> web.Response:
        request_id = request.match_info["request_id"]
        record = self.decisions.recent(request_id)
        if record is None:
            return _json(
                {
                    "error": "not_found",
                    "detail": (
                        f"no decision for {request_id!r} among the last "
                        f"{self.decisions.recent_size} this dispatcher has seen; the window "
                        "service keeps each user's recent decisions: "
                        "GET /v1/pages/{page_id}/users/{user_id}"
                    ),
                },
                404,
            )
        return _json(self._decision_body(record, self.outcomes.recent(request_id)))

    # ---- the Graph proxy ----------------------------------------------------------------------

    def _page_for(self, page_id: str | None, token: str | None) -> str:
        """The page whose own access token was given (constant time); ProxyError 190 if none."""
        if not token:
            raise ProxyError(190, "(#190) An access token is required", "invalid_token")
        given = token.encode()
        found: str | None = None
        for page in self.rules.pages.values():
            matches = bool(page.access_token) and hmac.compare_digest(
                given, (page.access_token or "").encode()
            )
            if matches and page_id in (None, page.page_id):
                found = page.page_id
        if found is None:
            raise ProxyError(
                190, "(#190) Invalid OAuth access token for this page", "invalid_token"
            )
        return found

    @staticmethod
    def _token_of(request: web.Request, body: dict[str, Any]) -> str | None:
        token = request.query.get("access_token") or body.get("access_token")
        if isinstance(token, str) and token:
            return token
        auth = request.headers.get("Authorization", "")
        for scheme in ("Bearer ", "OAuth "):
            if auth.startswith(scheme):
                return auth[len(scheme) :].strip()
        return None

    @staticmethod
    async def _meta_body(request: web.Request) -> dict[str, Any]:
        """JSON, or form fields whose recipient/message are JSON strings (both reach Meta)."""
        if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            body: dict[str, Any] = {}
            for name, value in form.items():
                if not isinstance(value, str):
                    continue
                if name in ("recipient", "message"):
                    try:
                        body[name] = orjson.loads(value)
                    except orjson.JSONDecodeError as exc:
                        raise ProxyError(100, f"(#100) param {name} is not JSON") from exc
                else:
                    body[name] = value
            return body
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise ProxyError(100, "(#100) the body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise ProxyError(100, "(#100) the body must be a JSON object")
        return data

    async def _proxy_request(
        self, request: web.Request, ask: ProxyAsk, page_id: str
    ) -> SendRequest:
        user_id = ask.recipient.user_id
        topic: str | None = None
        token = ask.recipient.otn_token or ask.recipient.recurring_token or ask.recipient.reply_to
        if token is not None:
            if self.tokens is None:
                raise ProxyError(
                    100, "token recipients need DISPATCHER_TOKEN_INDEX=1", "no_token_for_topic"
                )
            owner = self.tokens.lookup(token)
            if owner is None or owner.page_id != page_id:
                if not await self.tokens.caught_up():
                    raise ProxyError(
                        2, "windowgate is still reading the opt-ins; retry shortly", "starting", 503
                    )
                if ask.recipient.reply_to is not None:
                    raise ProxyError(
                        100, "(#100) windowgate knows no comment or post with this id", "no_comment"
                    )
                raise ProxyError(
                    100, "(#100) windowgate knows no opt-in for this token", "no_token_for_topic"
                )
            user_id, topic = owner.user_id, owner.topic
            if ask.recipient.reply_to is not None:
                topic = None  # the owner's topic is the recipient field: the window decides it
        assert user_id is not None
        request_id = (
            request.headers.get("Idempotency-Key")
            or request.headers.get("X-Windowgate-Request-Id")
            or f"proxy-{uuid.uuid4()}"
        )
        return SendRequest(
            request_id=request_id,
            page_id=page_id,
            user_id=user_id,
            purpose=ask.purpose,
            topic=topic,
            tag=ask.tag if ask.purpose == "tag" else None,
            human_author=request.headers.get("X-Windowgate-Human-Author"),
            message=ask.message,
            created_at=self.clock(),
            token=ask.recipient.otn_token,  # the token Meta's body names is the one spent
            private_reply_to=ask.recipient.reply_to,
            by_user_ref=ask.recipient.user_ref,
        )

    async def proxy(self, request: web.Request) -> web.Response:
        trace = f"windowgate-{uuid.uuid4().hex[:12]}"
        try:
            check_extension_headers(request.headers.keys())
            body = await self._meta_body(request)
            page_id = self._page_for(
                request.match_info.get("page_id"), self._token_of(request, body)
            )
            ask = parse_body(body)
            send = await self._proxy_request(request, ask, page_id)
        except ProxyError as exc:
            return _json(proxy_error(exc, trace), exc.status)
        try:
            submission = await self.submit(send, self.outcome_wait_s * PROXY_OUTCOME_FACTOR)
        except Unavailable as exc:
            log.warning("proxy could not publish %s: %s", send.request_id, exc)
            return _json(
                meta_error(2, None, "(#2) windowgate is unavailable", trace),
                503,
                {"Retry-After": self.retry_after},
            )
        record, done = submission.decision, submission.done
        if record is None:
            return _json(
                meta_error(
                    2,
                    None,
                    "(#2) windowgate took the request but has no decision yet",
                    trace,
                    {"reason": "pending", "request_id": send.request_id},
                ),
                202,
            )
        if not record.decision.allowed:
            return _json(refusal(record.decision), 400)
        if done is None:
            return _json(
                {
                    "windowgate": {
                        "reason": record.decision.reason,
                        "status": "pending",
                        "request_id": send.request_id,
                        "detail": "allowed; the delivery outcome is not known yet",
                    }
                },
                202,
            )
        status, answer = forwarded(done)
        return _json(answer, status)

    # ---- operations ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        ok = self.ready()
        return _json({"status": "ok" if ok else "starting"}, 200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
