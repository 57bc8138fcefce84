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
  Every proxy answer is Graph-shaped JSON (proxy_http): never a 202, never plain text.
- `/v1/broadcasts` (create, list), `/v1/broadcasts/{id}` (status, DELETE = cancel),
  `.../pause`, `.../resume`: `front/broadcasts.py` (DESIGN.md §4.6).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas.codec import SchemaError, loads
from schemas.decision import DecisionRecord, decision_to_wire
from schemas.request import SendRequest, request_from_wire
from services.common.auth import bearer_middleware
from services.dispatcher.credentials import PageTokens
from services.dispatcher.delivery.dispatchlog import Done, done_to_wire
from services.dispatcher.front.broadcasts import BroadcastFront
from services.dispatcher.front.feeds import OutcomeWatcher, TokenIndex
from services.dispatcher.front.labels import LabelRoutes, PublishEvent
from services.dispatcher.front.proxy_http import (
    CLIENT_MAX_SIZE,
    JSON_LIMIT,
    GraphAnswered,
    Uploader,
    body_limits,
    read_capped,
    read_meta_body,
    upload,
    uploaded_message,
)
from windowgate.client import DecisionWatcher
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import RuleBook
from windowgate.meta.proxy import (
    MAYBE_DELIVERED_STATUS,
    ProxyAsk,
    ProxyError,
    check_extension_headers,
    forwarded,
    human_sender,
    maybe_delivered,
    meta_error,
    parse_body,
    proxy_error,
    refusal,
    unknown_object,
    unproven_note,
)

log = logging.getLogger(__name__)

PROXY_OUTCOME_FACTOR = 5
"""The proxy waits longer for the outcome than /v1: its caller expects Meta's own answer."""


class Unavailable(Exception):
    """Kafka did not take the request within the wait: answer 503 and `Retry-After`.

    `maybe_published`: the producer was still trying when the wait ended, so the request may yet
    reach Kafka and be sent (the proxy then says so instead of inviting a blind retry)."""

    def __init__(self, detail: str, maybe_published: bool = False) -> None:
        self.maybe_published = maybe_published
        super().__init__(detail)


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
        publish_event: PublishEvent | None = None,
        uploader: Uploader | None = None,
        broadcasts: BroadcastFront | None = None,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self.rules = rules
        self.page_tokens: PageTokens = page_tokens or {}  # the proxy checks callers against them
        self.decisions = decisions
        self.outcomes = outcomes
        self.tokens = tokens
        self.publish = publish
        self.clock = clock
        self.api_tokens = api_tokens
        self.wait_s = wait_s
        self.outcome_wait_s = outcome_wait_s
        self.ready = ready
        self.labels = (
            None
            if publish_event is None
            else LabelRoutes(
                rules=rules,
                publish=publish_event,
                clock=clock,
                wait_s=wait_s,
                retry_after=self.retry_after,
            )
        )
        self.uploader = uploader
        self.broadcasts = broadcasts

    def app(self) -> web.Application:
        auth = cast(Middleware, bearer_middleware(self.api_tokens))
        app = web.Application(middlewares=[body_limits, auth], client_max_size=CLIENT_MAX_SIZE)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/messages", self.post_message)
        app.router.add_get("/v1/decisions/{request_id}", self.get_decision)
        if self.broadcasts is not None:  # DESIGN.md §4.6
            b = self.broadcasts
            app.router.add_post("/v1/broadcasts", b.create)
            app.router.add_get("/v1/broadcasts", b.listing)
            app.router.add_get("/v1/broadcasts/{broadcast_id}", b.status)
            app.router.add_delete("/v1/broadcasts/{broadcast_id}", b.cancel)
            app.router.add_post("/v1/broadcasts/{broadcast_id}/pause", b.pause)
            app.router.add_post("/v1/broadcasts/{broadcast_id}/resume", b.resume)
        app.router.add_post("/{version}/me/messages", self.proxy)
        app.router.add_post("/{version}/{page_id}/messages", self.proxy)
        if self.labels is not None:
            label_path = "/v1/pages/{page_id}/users/{user_id}/labels/{label}"
            app.router.add_put(label_path, self.labels.put)
            app.router.add_delete(label_path, self.labels.delete)
        app.router.add_post("/{version}/me/message_attachments", self.proxy_upload)
        app.router.add_post("/{version}/{page_id}/message_attachments", self.proxy_upload)
        return app

    # ---- the shared path: publish, await the decision, await the outcome ------------------------

    @property
    def retry_after(self) -> str:
        """Seconds a caller should wait before retrying a 503 (the `Retry-After` header)."""
        return str(max(1, math.ceil(self.wait_s)))

    async def submit(
        self, request: SendRequest, outcome_wait_s: float, wait_duplicates: bool = False
    ) -> Submission:
        """Publish, then await the decision, both within `wait_s` together (raises Unavailable
        when Kafka does not take the request in that time), then the outcome (of a duplicate's
        first send too when `wait_duplicates`: a deliberate retry learns what happened)."""
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
                raise Unavailable(
                    f"Kafka did not take it within {self.wait_s:g} s", maybe_published=True
                ) from exc
            except Exception as exc:
                raise Unavailable(f"Kafka did not take it: {exc}") from exc
            try:
                left = max(deadline - loop.time(), 0.0)
                record = await asyncio.wait_for(asyncio.shield(decided), left)
            except TimeoutError:
                return Submission(None, None)
            decision = record.decision
            done = self.outcomes.recent(request.request_id)
            waits = wait_duplicates or not decision.duplicate
            if done is None and decision.allowed and waits and outcome_wait_s:
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
            data = loads(await read_capped(request, JSON_LIMIT), "request body")
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

    def _page_for(self, page_id: str | None, token: str | None) -> PageConfig:
        """The page whose own access token was given (constant time), as Graph answers: no token
        104, a token of no page 190, another page's node or an unknown one 100/33 (not 190: that
        would make an operator revoke a good token)."""
        if not token:
            raise ProxyError(
                104, "An access token is required to request this resource.", "invalid_token"
            )
        given = token.encode()
        found: PageConfig | None = None
        for page_key, page_token in self.page_tokens.items():
            matches = hmac.compare_digest(given, page_token.encode())
            if matches and (found is None or page_key == page_id):  # one token, several pages
                found = self.rules.page(page_key)
        if found is None:
            raise ProxyError(
                190, "Invalid OAuth access token - Cannot parse access token", "invalid_token"
            )
        if page_id is not None and page_id != found.page_id:
            raise unknown_object(page_id)
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

    async def _proxy_request(
        self, request: web.Request, ask: ProxyAsk, page: PageConfig
    ) -> tuple[SendRequest, str | None]:
        """The SendRequest for a proxied call, and the note a refusal of it carries (HUMAN_AGENT
        without the page's proof of a human is asked as a RESPONSE: the window suffices)."""
        page_id = page.page_id
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
        header = request.headers.get("X-Windowgate-Human-Author")
        purpose, human, note = ask.purpose, header, None
        if ask.purpose == "human_agent":
            human = human_sender(ask, page, header)
            if human is None:
                purpose, note = "response", unproven_note(page)
        send = SendRequest(
            request_id=request_id,
            page_id=page_id,
            user_id=user_id,
            purpose=purpose,
            topic=topic,
            tag=ask.tag if purpose == "tag" else None,
            human_author=human,
            message=ask.message,
            created_at=self.clock(),
            graph_fields=ask.graph_fields or None,
            token=ask.recipient.otn_token,  # the token Meta's body names is the one spent
            private_reply_to=ask.recipient.reply_to,
            by_user_ref=ask.recipient.user_ref,
        )
        return send, note

    async def proxy(self, request: web.Request) -> web.Response:
        trace = f"windowgate-{uuid.uuid4().hex[:12]}"
        try:
            check_extension_headers(request.headers.keys())
            body, upload = await read_meta_body(request)
            token = self._token_of(request, body)
            page = self._page_for(request.match_info.get("page_id"), token)
            ask = parse_body(body)
            if upload is not None and token is not None:  # _page_for refused a missing token
                message = await uploaded_message(self.uploader, token, ask.message, upload)
                ask = replace(ask, message=message)
            send, note = await self._proxy_request(request, ask, page)
        except ProxyError as exc:
            return _json(proxy_error(exc, trace), exc.status)
        except GraphAnswered as exc:
            return _json(exc.body, exc.status)
        wait = self.outcome_wait_s * PROXY_OUTCOME_FACTOR
        try:
            submission = await self.submit(send, wait, wait_duplicates=True)
        except Unavailable as exc:
            log.warning("proxy could not publish %s: %s", send.request_id, exc)
            if exc.maybe_published:
                detail = f"windowgate could not confirm it took the send ({exc})"
                body = maybe_delivered(send.request_id, detail, trace)
                return _json(body, MAYBE_DELIVERED_STATUS)
            return _json(
                meta_error(2, None, "(#2) windowgate is unavailable; nothing was sent", trace),
                503,
                {"Retry-After": self.retry_after},
            )
        record, done = submission.decision, submission.done
        if record is None:
            detail = f"windowgate took the send but has no decision within {self.wait_s:g} s"
            return _json(maybe_delivered(send.request_id, detail, trace), MAYBE_DELIVERED_STATUS)
        if not record.decision.allowed:
            return _json(refusal(record.decision, note), 400)
        if done is None:
            detail = (
                f"allowed ({record.decision.reason}); Graph's answer did not come within {wait:g} s"
            )
            return _json(maybe_delivered(send.request_id, detail, trace), MAYBE_DELIVERED_STATUS)
        status, answer = forwarded(done)
        return _json(answer, status)

    async def proxy_upload(self, request: web.Request) -> web.Response:
        """Graph's Attachment Upload API, forwarded: an upload messages no one, so it is not
        decided; Graph's own answer (the `attachment_id`) comes back."""
        trace = f"windowgate-{uuid.uuid4().hex[:12]}"
        try:
            check_extension_headers(request.headers.keys())
            body, file = await read_meta_body(request)
            token = self._token_of(request, body)
            self._page_for(request.match_info.get("page_id"), token)  # the page's own token
            assert token is not None  # _page_for refused a missing token
            status, answer = await upload(self.uploader, token, body.get("message"), file)
        except ProxyError as exc:
            return _json(proxy_error(exc, trace), exc.status)
        return _json(answer, status)

    # ---- operations ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        ok = self.ready()
        return _json({"status": "ok" if ok else "starting"}, 200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
