"""An async client for services that ask windowgate to send: publish a request, await its decision.

Two ways in, same result (a `Decision`, DESIGN.md §4.5):

- through Kafka (`KafkaGateway`): the request goes to `<prefix>send-requests` keyed
  `"<page_id>:<user_id>"` (idempotent producer, acks=all) and the decision is read back from
  `<prefix>decisions` by a `DecisionWatcher`, which tails every partition from the moment it
  started and resolves the waiters by request_id;
- through the dispatcher's HTTP API (`HttpGateway`): `POST /v1/messages` with a bearer token, which
  answers with the decision (and the delivery outcome when known), or 202 and a link to poll.

    async with KafkaGateway("127.0.0.1:9092") as gateway:
        decision = await gateway.send(new_request(page_id, user_id, message={"text": "Hi"}))

A request_id is the caller's idempotency key: sending the same one again gets the first decision
back (marked `duplicate`), never a second message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast
from urllib.parse import quote

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.codec import SchemaError, to_wire
from schemas.decision import Decision, DecisionRecord, decode_decision, decode_decision_record
from schemas.request import SendRequest, encode_request
from schemas.topics import Topics

log = logging.getLogger(__name__)

__all__ = [
    "DecisionWatcher",
    "GatewayError",
    "HttpError",
    "HttpGateway",
    "HttpReply",
    "KafkaGateway",
    "Tail",
    "new_request",
]


T = TypeVar("T")


class GatewayError(RuntimeError):
    """windowgate refused the request itself (bad request, bad token) or could not be reached."""


def new_request(page_id: str, user_id: str, **fields: Any) -> SendRequest:
    """A SendRequest with a fresh request_id and `created_at` now, unless given."""
    fields.setdefault("request_id", str(uuid.uuid4()))
    fields.setdefault("created_at", time.time_ns() // 1_000_000)
    return SendRequest(page_id=page_id, user_id=user_id, **fields)


class Tail:
    """Reads every partition of some topics from the moment `start()` returns (or `backfill`
    records earlier per partition) and hands each record to `on_record`. No consumer group:
    every process that tails sees every record."""

    def __init__(self, bootstrap: str, topics: Sequence[str], backfill: int = 0) -> None:
        self.bootstrap = bootstrap
        self.topics = tuple(topics)
        self.backfill = backfill
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._ends: dict[TopicPartition, int] = {}
        self.is_caught_up = False

    def on_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        raise NotImplementedError

    async def _partitions(self, timeout_s: float) -> list[TopicPartition]:
        """Every partition of the topics, waiting (up to `timeout_s`) for them to exist."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                described = await admin.describe_topics(list(self.topics))
                found = [
                    TopicPartition(t["topic"], p["partition"])
                    for t in described
                    if t["error_code"] == 0
                    for p in t["partitions"]
                ]
                missing = set(self.topics) - {tp.topic for tp in found}
                if not missing:
                    return sorted(found)
                if time.monotonic() > deadline:
                    raise GatewayError(f"topics {sorted(missing)} do not exist on {self.bootstrap}")
                await asyncio.sleep(0.2)
        finally:
            await admin.close()

    async def start(self, timeout_s: float = 30.0) -> None:
        """Positions are fixed before this returns: nothing produced afterwards is missed."""
        partitions = await self._partitions(timeout_s)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            ends = self._ends = await consumer.end_offsets(partitions)
            starts = await consumer.beginning_offsets(partitions) if self.backfill else {}
            for tp in partitions:
                offset = ends[tp]
                if self.backfill:
                    offset = max(starts[tp], offset - self.backfill)
                consumer.seek(tp, offset)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name=f"tail {self.topics}")

    async def caught_up(self) -> bool:
        """Has every partition been read up to where it ended when `start()` ran?"""
        consumer = self._consumer
        if self.is_caught_up or consumer is None:
            return self.is_caught_up
        for tp, end in self._ends.items():
            if await consumer.position(tp) < end:
                return False
        self.is_caught_up = True
        return True

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            except Exception:  # the broker away for a while: keep tailing once it is back
                log.exception("tail of %s: fetch failed; retrying", self.topics)
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for record in records:
                    try:
                        self.on_record(record)
                    except Exception:  # one bad record never stops the tail
                        log.exception("could not handle a record of %s", record.topic)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


class AwaitingTail(Tail, Generic[T]):
    """A tail that keeps the most recent records by request_id and resolves futures waiting for
    one: the one waiter map, shared by decisions (here) and delivery outcomes (the dispatcher)."""

    def __init__(self, bootstrap: str, topic: str, recent: int, backfill: int = 0) -> None:
        super().__init__(bootstrap, [topic], backfill)
        self.recent_size = recent
        self._recent: OrderedDict[str, T] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[T]]] = {}

    def expect(self, request_id: str) -> asyncio.Future[T]:
        """A future for the next record on `request_id`: call before publishing the request."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(request_id, []).append(future)
        future.add_done_callback(lambda f: self._forget(request_id, f))
        return future

    def _forget(self, request_id: str, future: asyncio.Future[T]) -> None:
        waiters = self._waiters.get(request_id)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiters[request_id]

    def recent(self, request_id: str) -> T | None:
        return self._recent.get(request_id)

    def keep(self, request_id: str, value: T) -> None:
        self._recent[request_id] = value
        self._recent.move_to_end(request_id)
        while len(self._recent) > self.recent_size:
            self._recent.popitem(last=False)
        for future in list(self._waiters.get(request_id, ())):
            if not future.done():
                future.set_result(value)


class DecisionWatcher(AwaitingTail[DecisionRecord]):
    """Tails `<prefix>decisions`: resolves `expect(request_id)` futures, keeps the recent ones."""

    def __init__(self, bootstrap: str, topics: Topics, recent: int = 10_000, backfill: int = 0):
        super().__init__(bootstrap, topics.decisions, recent, backfill)
        self.unreadable = 0

    def remember(self, record: DecisionRecord) -> None:
        self.keep(record.decision.request_id, record)

    def on_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.value is None:
            return
        try:
            decoded = decode_decision_record(record.value)
        except SchemaError:
            self.unreadable += 1
            return
        self.remember(decoded)


class KafkaGateway:
    """Publish SendRequests to Kafka and await their Decisions from the decisions topic."""

    def __init__(self, bootstrap: str, prefix: str = "windowgate.", recent: int = 10_000) -> None:
        self.bootstrap = bootstrap
        self.topics = Topics(prefix)
        self.watcher = DecisionWatcher(bootstrap, self.topics, recent)
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        await self.watcher.start()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all", linger_ms=2
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        await self.watcher.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def publish(self, request: SendRequest) -> None:
        """Durably publish (acks=all) without waiting for the decision."""
        if self._producer is None:
            raise GatewayError("KafkaGateway is not started")
        await self._producer.send_and_wait(
            self.topics.send_requests, encode_request(request), key=request.key.encode()
        )

    async def send(self, request: SendRequest, timeout_s: float = 10.0) -> Decision | None:
        """Publish and await the decision; None when none arrived within `timeout_s`."""
        record = await self.send_record(request, timeout_s)
        return record.decision if record is not None else None

    async def send_record(
        self, request: SendRequest, timeout_s: float = 10.0
    ) -> DecisionRecord | None:
        future = self.watcher.expect(request.request_id)
        try:
            await self.publish(request)
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return None
        finally:
            future.cancel()


@dataclass(frozen=True, slots=True)
class HttpReply:
    """The HTTP API's answer: the decision (None while pending), the delivery outcome if known."""

    request_id: str
    decision: Decision | None
    delivery: dict[str, Any] | None = None
    pending: bool = False


class HttpGateway:
    """The dispatcher's HTTP API: `POST /v1/messages`, `GET /v1/decisions/{request_id}`."""

    def __init__(
        self, base_url: str, token: str, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def _reply(request_id: str, status: int, body: Any) -> HttpReply:
        if status == 202:
            return HttpReply(request_id, None, pending=True)
        if status != 200 or not isinstance(body, dict):
            detail = body.get("detail") if isinstance(body, dict) else body
            raise GatewayError(f"windowgate answered HTTP {status}: {detail}")
        delivery = body.pop("delivery", None)
        return HttpReply(request_id, decode_decision(orjson.dumps(body)), delivery)

    async def send(self, request: SendRequest) -> HttpReply:
        wire = to_wire(request)
        try:
            async with self._http().post(
                f"{self.base_url}/v1/messages", json=wire, headers=self.headers
            ) as response:
                body = await response.json(content_type=None)
                return self._reply(request.request_id, response.status, body)
        except aiohttp.ClientError as exc:
            raise GatewayError(f"cannot reach windowgate at {self.base_url}: {exc}") from exc

    async def decision(self, request_id: str) -> HttpReply | None:
        """The decision for `request_id` if the dispatcher still remembers it, else None."""
        try:
            async with self._http().get(
                f"{self.base_url}/v1/decisions/{request_id}", headers=self.headers
            ) as response:
                if response.status == 404:
                    return None
                body = await response.json(content_type=None)
                return self._reply(request_id, response.status, body)
        except aiohttp.ClientError as exc:
            raise GatewayError(f"cannot reach windowgate at {self.base_url}: {exc}") from exc

    async def send_and_wait(
        self, request: SendRequest, timeout_s: float = 30.0, poll_s: float = 0.5
    ) -> HttpReply:
        """`send`, then poll `decision` while it is pending, until `timeout_s`."""
        reply = await self.send(request)
        deadline = time.monotonic() + timeout_s
        while reply.pending and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
            polled = await self.decision(request.request_id)
            if polled is not None:
                reply = polled
        return reply

    async def add_label(self, page_id: str, user_id: str, label: str) -> dict[str, Any]:
        """`PUT /v1/pages/{page_id}/users/{user_id}/labels/{label}`: the answer once the label
        event is in the log (the window folds it; the user query shows it then)."""
        return await self._label("PUT", page_id, user_id, label)

    async def remove_label(self, page_id: str, user_id: str, label: str) -> dict[str, Any]:
        """`DELETE` of the same path: removing a label the user does not have changes nothing."""
        return await self._label("DELETE", page_id, user_id, label)

    async def _label(self, method: str, page_id: str, user_id: str, label: str) -> dict[str, Any]:
        page, user, name = (quote(part, safe="") for part in (page_id, user_id, label))
        return await self._found(method, f"/v1/pages/{page}/users/{user}/labels/{name}")

    # ---- broadcasts (DESIGN.md §4.6) ----------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        missing_ok: bool = False,
        params: dict[str, str] | None = None,
    ) -> Any:
        """One JSON call of the API; HttpError for an error status (None for 404 if missing_ok)."""
        try:
            async with self._http().request(
                method,
                f"{self.base_url}{path}",
                json=body,
                params=params or {},
                headers=self.headers,
            ) as response:
                answer = await response.json(content_type=None)
                if response.status == 404 and missing_ok:
                    return None
                if response.status >= 400 or not isinstance(answer, dict):
                    raise HttpError(response.status, answer)
                return answer
        except (aiohttp.ClientError, ValueError) as exc:
            raise GatewayError(f"cannot reach windowgate at {self.base_url}: {exc}") from exc

    async def _found(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        return cast(dict[str, Any], await self._call(method, path, body))

    async def create_broadcast(self, spec: dict[str, Any]) -> dict[str, Any]:
        """`POST /v1/broadcasts` (the body of DESIGN.md §4.6): 202 created, 200 the same spec
        again, or the counts of a dry run; HttpError (with `field`) for a bad spec, 409 for an
        id taken by another spec."""
        return await self._found("POST", "/v1/broadcasts", spec)

    async def broadcast(self, broadcast_id: str) -> dict[str, Any] | None:
        """`GET /v1/broadcasts/{id}`: the status summed over the partitions; None if unknown."""
        answer = await self._call("GET", f"/v1/broadcasts/{broadcast_id}", missing_ok=True)
        return cast(dict[str, Any] | None, answer)

    async def pause_broadcast(self, broadcast_id: str) -> dict[str, Any]:
        """Answers once every partition has the pause command."""
        return await self._found("POST", f"/v1/broadcasts/{broadcast_id}/pause")

    async def resume_broadcast(self, broadcast_id: str) -> dict[str, Any]:
        return await self._found("POST", f"/v1/broadcasts/{broadcast_id}/resume")

    async def cancel_broadcast(self, broadcast_id: str) -> dict[str, Any]:
        """`DELETE /v1/broadcasts/{id}`: no recipient is decided after this returns."""
        return await self._found("DELETE", f"/v1/broadcasts/{broadcast_id}")

    async def list_broadcasts(self, page_id: str | None = None) -> list[dict[str, Any]]:
        """`GET /v1/broadcasts?page_id=`: newest first."""
        params = {"page_id": page_id} if page_id else {}
        answer = await self._call("GET", "/v1/broadcasts", params=params)
        items = answer.get("broadcasts") if isinstance(answer, dict) else None
        return list(items) if isinstance(items, list) else []


class HttpError(GatewayError):
    """windowgate answered an error status; `body` is its JSON answer (`field` names the bad
    input of a 400)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body: dict[str, Any] = body if isinstance(body, dict) else {"detail": body}
        detail = self.body.get("detail") or self.body.get("error") or body
        field = self.body.get("field")
        named = f" ({field})" if field else ""
        super().__init__(f"windowgate answered HTTP {status}{named}: {detail}")
