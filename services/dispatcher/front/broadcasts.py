"""Broadcasts on the dispatcher's HTTP front (DESIGN.md §4.6): validate, write the commands, and
sum what the window partitions report.

The front decides nothing about recipients: a `create` goes to EVERY partition of
`<prefix>broadcast-commands` (key broadcast_id, the partition set explicitly) in ONE Kafka
transaction, so either every window partition sees it or none does, and a crash mid-write leaves
nothing half-written; each window partition fans out to the users it owns and publishes its
`BroadcastProgress` to the compacted `<prefix>broadcasts` (key `<broadcast_id>:<partition>`).
This process tails both topics from the beginning (`BroadcastBook`): the commands tell it which
ids exist and with which spec (a resubmission with the same spec creates nothing, a different
one is 409), the progress records are summed into the status (`summarize`).

A dry run asks the window (`POST {WINDOW_URL}/v1/internal/broadcasts/dry-run`, the spec's wire
body; answer `{"audience": n, "by_mechanism": {...}, "refused": {...}}`) and reserves nothing.

Contract with the window's side, assumed here: every partition publishes a progress record for
every broadcast it received, even with no recipient (`done`, audience 0); a partition that has
not reported yet counts as the last command implies (`implied_status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer, ConsumerRecord

from schemas.broadcast import (
    BroadcastCommand,
    BroadcastProgress,
    BroadcastSpec,
    BroadcastState,
    CommandKind,
    decode_command,
    decode_progress,
    encode_command,
    spec_from_wire,
)
from schemas.codec import SchemaError, did_you_mean, loads, to_wire
from schemas.topics import Topics
from services.common.http import LazySession
from services.common.topics import TopicSpec, ensure_topic_specs
from windowgate.client import Tail
from windowgate.core.message import CONTENT_KEYS
from windowgate.core.message import message_problem as body_problem
from windowgate.core.pages import PageConfig
from windowgate.core.timestamps import ms_to_iso, parse_iso_ms

log = logging.getLogger(__name__)

BROADCAST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")
"""A broadcast id goes into URLs and into each recipient's request id (`bc:<id>:<user>`): no `:`,
no `/`, at most 128 characters."""

MAX_COMMAND_BYTES: Final = 900_000
"""A `create` carries the spec (an explicit user list included) and must fit in one Kafka record
(the broker's default limit is 1 MiB)."""

TOKEN_PURPOSES: Final = frozenset({"otn", "recurring", "marketing"})
"""Purposes that spend each recipient's token on `audience.topic`: they need the topic."""
TOKENLESS_PURPOSES: Final = frozenset({"response", "update", "utility"})
"""Purposes that never use a token: `audience.topic` (token holders) contradicts them."""
NOT_FOR_BROADCASTS: Final = {
    "human_agent": "HUMAN_AGENT is one person's manual reply (human_author), never a broadcast",
    "tag": "message tags are for non-promotional updates to one user, never a broadcast",
}

MESSAGE_KEYS: Final = (*CONTENT_KEYS, "quick_replies", "metadata")

FINAL_STATES: Final[frozenset[str]] = frozenset({"done", "cancelled"})
COUNTS: Final = ("audience", "decided", "sent", "failed", "unknown", "delivered", "read")


# ---- the body of POST /v1/broadcasts -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submission:
    spec: BroadcastSpec
    dry_run: bool


def new_broadcast_id() -> str:
    return f"bc-{uuid.uuid4().hex[:20]}"


def message_problem(message: Any) -> SchemaError | None:
    """Why `message` cannot be broadcast: an unknown key (a typo would go to every recipient),
    or what makes a body unsendable — the one check decide runs (windowgate.core.message)."""
    if isinstance(message, dict):
        for key in message:
            if key not in MESSAGE_KEYS:
                hint = did_you_mean(str(key), MESSAGE_KEYS)
                return SchemaError(
                    f"message.{key}",
                    f"unknown field{hint}; a message has {', '.join(MESSAGE_KEYS)}",
                )
    found = body_problem(message)
    return None if found is None else SchemaError(found.field, found.problem)


def _check_audience(spec: BroadcastSpec) -> None:
    audience = spec.audience
    if audience.users is not None and not audience.users:
        raise SchemaError("audience.users", "is empty: name at least one user, or leave it out")
    if (
        audience.topic is None
        and audience.users is None
        and not (audience.labels_all or audience.labels_any or audience.labels_none)
    ):
        raise SchemaError(
            "audience",
            "defines nobody: give a topic, labels_all, labels_any, labels_none or users",
        )
    if audience.topic is not None and not audience.topic.strip():
        raise SchemaError("audience.topic", "must not be empty")
    for name in ("labels_all", "labels_any", "labels_none", "users"):
        values: tuple[str, ...] = getattr(audience, name) or ()
        for n, value in enumerate(values):
            if not value.strip():
                raise SchemaError(f"audience.{name}.{n}", "must not be empty")


def _check_purpose(spec: BroadcastSpec) -> None:
    purpose, topic = spec.purpose, spec.audience.topic
    if purpose in NOT_FOR_BROADCASTS:
        raise SchemaError("purpose", f"{purpose!r}: {NOT_FOR_BROADCASTS[purpose]}")
    if purpose in TOKEN_PURPOSES and topic is None:
        raise SchemaError(
            "audience.topic",
            f"purpose {purpose!r} spends each recipient's token on a topic: name it here",
        )
    if purpose in TOKENLESS_PURPOSES and topic is not None:
        raise SchemaError(
            "audience.topic",
            f"purpose {purpose!r} never uses a token, while audience.topic selects token holders: "
            "use purpose 'auto' (the open window, else the topic's token) or 'otn', "
            "or select the audience by labels or users",
        )
    if purpose == "utility":
        template = spec.message.get("template")
        if not isinstance(template, dict) or not template.get("name"):
            raise SchemaError(
                "message.template.name", "purpose 'utility' sends an approved utility template"
            )


def parse_submission(
    data: Any,
    *,
    now: int,
    pages: Mapping[str, PageConfig],
    new_id: Callable[[], str] = new_broadcast_id,
) -> Submission:
    """The body of `POST /v1/broadcasts` as a spec (created_at = now); SchemaError names the
    first bad field."""
    if not isinstance(data, dict):
        raise SchemaError("", "expected a JSON object (DESIGN.md §4.6)")
    body = dict(data)
    dry_run = body.pop("dry_run", False)
    if not isinstance(dry_run, bool):
        raise SchemaError("dry_run", "expected true or false")
    if "created_at" in body:
        raise SchemaError("created_at", "is set by windowgate when it takes the broadcast")
    not_before = body.get("not_before")
    if not_before is not None:
        try:
            body["not_before"] = parse_iso_ms(not_before)
        except ValueError:
            raise SchemaError(
                "not_before", "expected an ISO 8601 time, e.g. 2026-12-01T09:00:00Z"
            ) from None
    broadcast_id = body.get("broadcast_id")
    if broadcast_id is None:
        body["broadcast_id"] = new_id()
    elif not isinstance(broadcast_id, str) or not BROADCAST_ID.fullmatch(broadcast_id):
        raise SchemaError(
            "broadcast_id",
            "expected 1 to 128 letters, digits, '.', '_', '~' or '-', starting with a letter "
            "or digit",
        )
    spec = spec_from_wire({**body, "created_at": now})
    problem = message_problem(spec.message)
    if problem is not None:
        raise problem
    if spec.page_id not in pages:
        known = ", ".join(sorted(pages)) or "none"
        raise SchemaError(
            "page_id", f"unknown page {spec.page_id!r} (the pages file lists: {known})"
        )
    _check_audience(spec)
    _check_purpose(spec)
    if len(encode_command(create_command(spec))) > MAX_COMMAND_BYTES:
        raise SchemaError(
            "audience.users",
            f"{len(spec.audience.users or ())} users do not fit in one broadcast command "
            f"({MAX_COMMAND_BYTES:,} bytes): split them, or select them by a label",
        )
    return Submission(spec, dry_run)


def create_command(spec: BroadcastSpec) -> BroadcastCommand:
    return BroadcastCommand(
        kind="create",
        broadcast_id=spec.broadcast_id,
        page_id=spec.page_id,
        at=spec.created_at or 0,
        spec=spec,
    )


def differences(a: BroadcastSpec, b: BroadcastSpec) -> list[str]:
    """The wire fields whose values differ (created_at aside), for a 409 that names them."""
    left, right = to_wire(a), to_wire(b)
    names = dict.fromkeys([*left, *right])
    return [n for n in names if n != "created_at" and left.get(n) != right.get(n)]


# ---- the status: the sum of the partitions' progress -------------------------------------------


def implied_status(last: CommandKind | None, not_before: int | None, now: int) -> BroadcastState:
    """What a partition that has not reported yet is doing, given the last command written."""
    if last == "cancel":
        return "cancelled"
    if last == "pause":
        return "paused"
    if last in (None, "create") and not_before is not None and not_before > now:
        return "scheduled"
    return "running"


def combined_status(states: Sequence[BroadcastState]) -> BroadcastState:
    """Any running → running; else any paused → paused; else any scheduled → scheduled; else
    (every partition finished) cancelled if any was cancelled, done if all are done."""
    precedence: tuple[BroadcastState, ...] = ("running", "paused", "scheduled", "cancelled")
    for state in precedence:
        if state in states:
            return state
    return "done"


def _add(total: dict[str, int], more: Mapping[str, int]) -> None:
    for key, n in more.items():
        total[key] = total.get(key, 0) + n


def summarize(
    broadcast_id: str,
    *,
    spec: BroadcastSpec | None,
    progress: Mapping[int, BroadcastProgress],
    partitions: int,
    last: CommandKind | None,
    now: int,
) -> dict[str, Any]:
    """The `GET /v1/broadcasts/{id}` body: every count summed over the partitions' latest
    progress, the status by `combined_status`, times as epoch ms."""
    not_before = spec.not_before if spec is not None else None
    implied = implied_status(last, not_before, now)
    states = [p.status for p in progress.values()]
    states += [implied] * max(partitions - len(progress), 0)
    status = combined_status(states)
    totals = dict.fromkeys(COUNTS, 0)
    by_mechanism: dict[str, int] = {}
    refused: dict[str, int] = {}
    for part in progress.values():
        for name in COUNTS:
            totals[name] += getattr(part, name)
        _add(by_mechanism, part.by_mechanism)
        _add(refused, part.refused)
    created = [p.created_at for p in progress.values() if p.created_at is not None]
    started = [p.started_at for p in progress.values() if p.started_at is not None]
    finished = [p.finished_at for p in progress.values() if p.finished_at is not None]
    page_id = spec.page_id if spec is not None else next(iter(progress.values())).page_id
    created_at = spec.created_at if spec is not None and spec.created_at else min(created or [0])
    return {
        "broadcast_id": broadcast_id,
        "page_id": page_id,
        "status": status,
        **totals,
        "by_mechanism": dict(sorted(by_mechanism.items())),
        "refused": dict(sorted(refused.items())),
        "created_at": created_at or None,
        "started_at": min(started) if started else None,
        "finished_at": max(finished) if finished and status in FINAL_STATES else None,
        "not_before": ms_to_iso(not_before) if not_before is not None else None,
        "purpose": spec.purpose if spec is not None else None,
        "partitions": {
            "total": partitions,
            "reported": len(progress),
            "by_status": {s: states.count(s) for s in sorted(set(states))},
        },
    }


# ---- what this process knows: the two topics, tailed from the beginning -------------------------


@dataclass
class Known:
    """One broadcast as the front knows it."""

    spec: BroadcastSpec | None = None
    last: BroadcastCommand | None = None
    progress: dict[int, BroadcastProgress] = field(default_factory=dict)

    @property
    def page_id(self) -> str | None:
        if self.spec is not None:
            return self.spec.page_id
        if self.last is not None:
            return self.last.page_id
        return next(iter(self.progress.values())).page_id if self.progress else None


class BroadcastBook(Tail):
    """broadcast_id → its spec, its last command and each partition's latest progress, from
    `<prefix>broadcast-commands` and the compacted `<prefix>broadcasts`, read from the start.
    Commands this process wrote are applied at once too (read-your-writes)."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        super().__init__(bootstrap, [topics.broadcast_commands, topics.broadcasts], backfill=2**62)
        self.commands_topic = topics.broadcast_commands
        self.known: dict[str, Known] = {}
        self.unreadable = 0
        self._progressed = asyncio.Event()

    def get(self, broadcast_id: str) -> Known | None:
        return self.known.get(broadcast_id)

    def apply_command(self, command: BroadcastCommand) -> None:
        """The first `create` gives the spec (the window ignores a repeated one too); the last
        command (by `at`) says what partitions that have not reported are doing."""
        known = self.known.setdefault(command.broadcast_id, Known())
        if command.kind == "create" and command.spec is not None and known.spec is None:
            known.spec = command.spec
        if known.last is None or command.at >= known.last.at:
            known.last = command

    def apply_progress(self, key: str, progress: BroadcastProgress | None) -> None:
        """The latest record per `<broadcast_id>:<partition>` key; a tombstone forgets it."""
        broadcast_id, _, partition = key.rpartition(":")
        if not broadcast_id or not partition.isdigit():
            self.unreadable += 1
            return
        if progress is None:
            known = self.known.get(broadcast_id)
            if known is not None:
                known.progress.pop(int(partition), None)
            return
        self.known.setdefault(broadcast_id, Known()).progress[progress.partition] = progress
        self._progressed.set()

    async def until(self, check: Callable[[], bool], timeout_s: float) -> bool:
        """Whether `check()` holds, re-checked as progress records arrive, within `timeout_s`."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not check():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            self._progressed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progressed.wait(), left)
        return True

    def on_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            if record.topic == self.commands_topic:
                if record.value is not None:
                    self.apply_command(decode_command(record.value))
                return
            key = record.key.decode() if record.key is not None else ""
            value = decode_progress(record.value) if record.value is not None else None
            self.apply_progress(key, value)
        except (SchemaError, UnicodeDecodeError):
            self.unreadable += 1


def broadcast_topic_specs(topics: Topics) -> list[TopicSpec]:
    """The commands topic is co-partitioned with the keyed topics (partition n of it goes to the
    window worker that owns partition n of events); the progress topic is compacted."""
    return [
        TopicSpec(
            topics.broadcast_commands,
            why_keyed="each window partition reads the commands of its own partition",
        ),
        TopicSpec(topics.broadcasts, keyed=False, configs={"cleanup.policy": "compact"}),
    ]


async def ensure_broadcast_topics(bootstrap: str, topics: Topics, partitions: int) -> None:
    await ensure_topic_specs(bootstrap, broadcast_topic_specs(topics), partitions)


class CommandWriter:
    """Writes a command to every partition of the commands topic in one transaction (acks=all):
    all partitions get it or none does. One transaction at a time. A producer whose write failed
    or was interrupted (a timeout mid-transaction) is dropped and the next write starts a fresh
    one with the same transactional id, which aborts whatever the old one left open."""

    def __init__(self, make_producer: Callable[[], AIOKafkaProducer], topic: str) -> None:
        self.make_producer = make_producer
        self.topic = topic
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = self.make_producer()
            await producer.start()
            self._producer = producer
        return self._producer

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def __call__(self, command: BroadcastCommand) -> int:
        value = encode_command(command)
        key = command.broadcast_id.encode()
        async with self._lock:
            try:
                producer = await self._ready()
                partitions = sorted(await producer.partitions_for(self.topic))
                async with producer.transaction():
                    for partition in partitions:
                        await producer.send(self.topic, value, key=key, partition=partition)
            except BaseException:
                await asyncio.shield(self.close())
                raise
        return len(partitions)


# ---- the window's dry run ------------------------------------------------------------------------


class DryRunFailed(Exception):
    """The window could not answer a dry run; `status` is what the front answers (400 or 503)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(body.get("detail"))


class WindowDryRun(LazySession):
    """`POST {window_url}/v1/internal/broadcasts/dry-run` with the spec; the window counts the
    audience, decides each recipient without folding anything back, and answers the counts."""

    PATH = "/v1/internal/broadcasts/dry-run"

    def __init__(self, window_url: str, token: str | None, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.url = window_url.rstrip("/") + self.PATH
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def __call__(self, spec: BroadcastSpec) -> dict[str, Any]:
        try:
            async with self.session().post(
                self.url, json=to_wire(spec), headers=self.headers
            ) as answer:
                status, raw = answer.status, await answer.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DryRunFailed(
                503, {"error": "unavailable", "detail": f"the window at {self.url}: {exc!r}"}
            ) from exc
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if status == 400 and isinstance(body, dict):
            raise DryRunFailed(400, {"error": "invalid_request", **body})
        if status != 200 or not valid_dry_run(body):
            detail = (
                "the window service has no dry-run endpoint (yet)"
                if status in (404, 405)
                else f"the window answered HTTP {status} without the counts"
            )
            raise DryRunFailed(503, {"error": "unavailable", "detail": f"{detail}: {self.url}"})
        return cast(dict[str, Any], body)


def valid_dry_run(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and isinstance(body.get("audience"), int)
        and all(
            isinstance(body.get(name), dict)
            and all(isinstance(n, int) for n in body[name].values())
            for name in ("by_mechanism", "refused")
        )
    )


# ---- the handlers --------------------------------------------------------------------------------


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _invalid(exc: SchemaError) -> web.Response:
    return _json({"error": "invalid_request", "field": exc.field, "detail": str(exc)}, 400)


class BroadcastFront:
    """The `/v1/broadcasts` handlers. `write` puts a command on every partition and returns how
    many; `dry_run` asks the window; `book` is what this process has read (and written)."""

    def __init__(
        self,
        *,
        book: BroadcastBook,
        write: Callable[[BroadcastCommand], Awaitable[int]],
        dry_run: Callable[[BroadcastSpec], Awaitable[dict[str, Any]]],
        pages: Callable[[], Mapping[str, PageConfig]],
        partitions: int,
        clock: Callable[[], int],
        wait_s: float,
    ) -> None:
        self.book = book
        self.write = write
        self.dry_run = dry_run
        self.pages = pages
        self.partitions = partitions
        self.clock = clock
        self.wait_s = wait_s
        self._create = asyncio.Lock()

    @staticmethod
    def status_url(broadcast_id: str) -> str:
        return f"/v1/broadcasts/{broadcast_id}"

    def _unavailable(self, detail: str) -> web.Response:
        retry = str(max(1, round(self.wait_s)))
        return _json({"error": "unavailable", "detail": detail}, 503, {"Retry-After": retry})

    async def _not_ready(self) -> web.Response | None:
        if await self.book.caught_up():
            return None
        return self._unavailable("windowgate is still reading the broadcasts; retry shortly")

    async def _written(self, command: BroadcastCommand) -> int | web.Response:
        """Write within `wait_s`; a 503 otherwise (the caller retries: every command is safe to
        repeat — a repeated create is ignored by the window, pause/resume/cancel are states)."""
        try:
            written = await asyncio.wait_for(self.write(command), self.wait_s)
        except Exception as exc:  # broker down, frozen, or the write timed out
            log.warning("could not write %s of %s: %r", command.kind, command.broadcast_id, exc)
            return self._unavailable(
                f"the {command.kind} command was not written ({exc!r}); retry, it is safe to repeat"
            )
        self.book.apply_command(command)
        return written

    def _view(self, broadcast_id: str, known: Known) -> dict[str, Any]:
        return summarize(
            broadcast_id,
            spec=known.spec,
            progress=known.progress,
            partitions=self.partitions,
            last=known.last.kind if known.last is not None else None,
            now=self.clock(),
        )

    def _unknown(self, broadcast_id: str) -> web.Response:
        return _json(
            {"error": "not_found", "detail": f"no broadcast {broadcast_id!r}"},
            404,
        )

    async def create(self, request: web.Request) -> web.Response:
        """POST /v1/broadcasts: 202 (created), 200 (the same spec again, or a dry run)."""
        try:
            submission = parse_submission(
                loads(await request.read(), "request body"),
                now=self.clock(),
                pages=self.pages(),
            )
        except SchemaError as exc:
            return _invalid(exc)
        spec = submission.spec
        if submission.dry_run:
            try:
                counts = await self.dry_run(spec)
            except DryRunFailed as exc:
                return _json(exc.body, exc.status)
            return _json({"broadcast_id": spec.broadcast_id, "dry_run": True, **counts})
        not_ready = await self._not_ready()
        if not_ready is not None:
            return not_ready
        async with self._create:  # two racing submissions of one id in this process
            known = self.book.get(spec.broadcast_id)
            if known is not None and known.spec is not None:
                changed = differences(known.spec, spec)
                if changed:
                    return _json(
                        {
                            "error": "conflict",
                            "field": changed[0],
                            "detail": f"broadcast {spec.broadcast_id!r} exists with another "
                            f"{', '.join(changed)}; choose a new broadcast_id",
                        },
                        409,
                    )
                return self._accepted(spec, known, created=False)
            written = await self._written(create_command(spec))
            if isinstance(written, web.Response):
                return written
        known = self.book.get(spec.broadcast_id) or Known(spec=spec)
        return self._accepted(spec, known, created=True)

    def _accepted(self, spec: BroadcastSpec, known: Known, *, created: bool) -> web.Response:
        url = self.status_url(spec.broadcast_id)
        body = {
            "broadcast_id": spec.broadcast_id,
            "page_id": spec.page_id,
            "created": created,
            "status": self._view(spec.broadcast_id, known)["status"],
            "status_url": url,
            "not_before": ms_to_iso(spec.not_before) if spec.not_before is not None else None,
        }
        return _json(body, 202 if created else 200, {"Location": url})

    async def status(self, request: web.Request) -> web.Response:
        """GET /v1/broadcasts/{id}."""
        broadcast_id = request.match_info["broadcast_id"]
        known = self.book.get(broadcast_id)
        if known is None or known.page_id is None:
            return await self._not_ready() or self._unknown(broadcast_id)
        return _json(self._view(broadcast_id, known))

    async def listing(self, request: web.Request) -> web.Response:
        """GET /v1/broadcasts?page_id=: newest first."""
        page_id = request.query.get("page_id")
        if page_id is not None and page_id not in self.pages():
            return _invalid(SchemaError("page_id", f"unknown page {page_id!r}"))
        not_ready = await self._not_ready()
        if not_ready is not None:
            return not_ready
        views = [
            self._view(broadcast_id, known)
            for broadcast_id, known in list(self.book.known.items())
            if known.page_id is not None and page_id in (None, known.page_id)
        ]
        views.sort(key=lambda v: (v["created_at"] or 0, v["broadcast_id"]), reverse=True)
        return _json({"page_id": page_id, "broadcasts": views})

    async def pause(self, request: web.Request) -> web.Response:
        return await self._command(request, "pause")

    async def resume(self, request: web.Request) -> web.Response:
        return await self._command(request, "resume")

    async def cancel(self, request: web.Request) -> web.Response:
        return await self._command(request, "cancel")

    async def _command(self, request: web.Request, kind: CommandKind) -> web.Response:
        """Write pause / resume / cancel to every partition; 202 once written."""
        broadcast_id = request.match_info["broadcast_id"]
        not_ready = await self._not_ready()
        if not_ready is not None:
            return not_ready
        known = self.book.get(broadcast_id)
        if known is None or known.page_id is None:
            return self._unknown(broadcast_id)
        if kind != "cancel" and known.last is not None and known.last.kind == "cancel":
            return _json(
                {
                    "error": "conflict",
                    "detail": f"broadcast {broadcast_id!r} was cancelled; it cannot {kind}",
                },
                409,
            )
        command = BroadcastCommand(
            kind=kind, broadcast_id=broadcast_id, page_id=known.page_id, at=self.clock()
        )
        written = await self._written(command)
        if isinstance(written, web.Response):
            return written
        body: dict[str, Any] = {
            "broadcast_id": broadcast_id,
            "command": kind,
            "partitions": written,
            "status_url": self.status_url(broadcast_id),
        }
        if kind == "cancel":
            body.update(await self._cancel_confirmed(broadcast_id, known))
        return _json(body, 202)

    async def _cancel_confirmed(self, broadcast_id: str, known: Known) -> dict[str, Any]:
        """Wait (up to `wait_s`) until every partition reports the broadcast finished. A window
        partition reads the cancel before it slices again and reports `cancelled` in that batch's
        transaction, so once all have, no recipient is decided any more (answering when the
        command was merely written let slices in flight decide more). The counts are then final.
        Not confirmed in time (a window partition down or busy): `confirmed: false` and how many
        partitions have not, since recipients they decide until they read it are messaged."""

        def open_partitions() -> list[int]:
            progress = known.progress
            return [
                p
                for p in range(self.partitions)
                if p not in progress or progress[p].status not in FINAL_STATES
            ]

        if await self.book.until(lambda: not open_partitions(), self.wait_s):
            view = self._view(broadcast_id, known)
            return {"confirmed": True, "status": view["status"], "decided": view["decided"]}
        waiting = open_partitions()
        return {
            "confirmed": False,
            "detail": f"written to every partition; partitions {waiting} have not confirmed it "
            f"within {self.wait_s:g} s and decide recipients until they read it",
        }
