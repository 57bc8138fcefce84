"""Broadcasts inside the window's fenced single writer (DESIGN.md §4.6, issue 12 point 3).

Each window partition fans a broadcast out to the users IT owns, so every recipient is decided by
the one writer of its state, by the same `decide` as any request, at the moment of its slice:

- `<prefix>broadcast-commands` is a third co-partitioned input: every command is written to every
  partition. `create` registers the broadcast (a second `create` of the same broadcast_id changes
  nothing: there is never a second fan-out); `pause` / `resume` / `cancel` move its status; an
  unknown or repeated command is harmless. `not_before` schedules.
- The walk goes through the partition's audience in key order, a slice (`SLICE_USERS` keys) per
  turn, riding on an input batch or taking an idle turn of its own (`wants_turn`). A slice's
  decisions, `RequestDecided` events, the users' new states, the broadcast's cursor (the last key
  the walk passed) and its `BroadcastProgress` all go out in the batch's ONE transaction: after a
  crash, a fence or a rebalance the cursor and the states are exactly where the last commit left
  them, so no user is decided twice (the recipient's request_id also dedups in the user's state).
- Who is a recipient: whoever is in the audience when the walk reaches their key. A user who joins
  the audience (a new OTN token, a label) while the broadcast runs is included if the walk has not
  yet passed their key, and skipped if it has; one who leaves before the walk reaches them is not
  messaged. This depends only on the partition's committed history, not on restores.
- The walk reads `AudienceIndex` (page / topic / label -> user keys), kept as states commit; never
  a scan of every user per broadcast.
- Counting: decided per mechanism and refused per reason as the slices decide; `sent` / `failed` /
  `unknown` from the dispatcher's `SendOutcome` events (request_id = the recipient's), `delivered` /
  `read` from delivery / read watermarks at or after the recipient's send; each recipient counted
  once, through a small per-recipient record in the broadcasts changelog.

State, in `<app id>-broadcasts-changelog` (compacted, partition n = partition n's broadcasts):
`["b", broadcast_id]` -> the broadcast (spec, progress, cursor); `["r", broadcast_id, user key]` ->
one recipient's outcome. Restore reads it back like the users' changelog.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from schemas.broadcast import (
    Audience,
    BroadcastCommand,
    BroadcastProgress,
    BroadcastSpec,
    BroadcastState,
    decode_command,
    encode_progress,
    recipient_request_id,
    spec_from_wire,
)
from schemas.codec import SchemaError, decode_as, dumps, loads, to_wire
from schemas.events import MessageDelivered, MessageRead, SendOutcome, decode_event
from schemas.request import SendRequest
from schemas.state import PageState, UserState
from services.window.processing import Result, decide_own_request, partition_for
from services.window.store import Tables
from windowgate.core.decide import Context, Verdict, decide, otn_verdict, window_verdict
from windowgate.core.rulebook import RuleBook

log = logging.getLogger(__name__)

SLICE_USERS = 100
"""Keys a slice walks per turn (WINDOW_BROADCAST_SLICE): a webhook waits behind one slice's
transaction at most, so a slice is kept small (measured: `bench.window --broadcast`)."""

NOT_READY_RETRY_S = 0.5
"""While the audience index is being built after a restore, ask for a turn this often."""

FINAL: frozenset[str] = frozenset({"done", "cancelled"})

SetId = tuple[str, str, str]
"""An index set: ("p", page, "") every user of the page, ("t", page, topic) token holders,
("l", page, label) a label's users."""


# ---- pacing --------------------------------------------------------------------------------------


class Pacer:
    """Keeps a worker's fan-out from crowding out webhook folding: after a slice that took t
    seconds, no partition of the worker slices again before t x `yield_factor` has passed (the
    partitions share one event loop and its CPU). 0: no pause."""

    def __init__(self, yield_factor: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.yield_factor = yield_factor
        self.clock = clock
        self.free_at = 0.0

    def wait(self) -> float:
        return max(0.0, self.free_at - self.clock())

    def spent(self, seconds: float) -> None:
        self.free_at = self.clock() + seconds * self.yield_factor


# ---- the audience index --------------------------------------------------------------------------


def topics_held(state: UserState) -> frozenset[str]:
    """The topics the user holds a token on that may still carry a message: an OTN token not yet
    reserved or spent, a recurring / marketing subscription not stopped. (Expiry is `decide`'s to
    judge at the recipient's turn: it refuses with the reason.)"""
    held = {t.topic for t in state.otn if t.status == "available"}
    for token in state.recurring:
        if not token.stopped:
            held.update(name for name in (token.topic, token.title) if name)
    return frozenset(held)


@dataclass(frozen=True, slots=True)
class _Entry:
    ids: frozenset[SetId]
    labels: tuple[str, ...]


class AudienceIndex:
    """One partition's users by page, by topic held and by label, updated as states commit."""

    def __init__(self) -> None:
        self.sets: dict[SetId, set[bytes]] = {}
        self._entries: dict[bytes, _Entry] = {}
        self.ready = False

    def clear(self) -> None:
        self.sets = {}
        self._entries = {}
        self.ready = False

    def update(self, key: bytes, state: UserState) -> frozenset[SetId]:
        """Index the user's new state; returns the sets the user joined."""
        page = state.page_id
        ids = {("p", page, "")}
        ids.update(("t", page, topic) for topic in topics_held(state))
        ids.update(("l", page, label) for label in state.labels)
        new = frozenset(ids)
        old = self._entries.get(key)
        before = old.ids if old is not None else frozenset()
        if old is None or old.ids != new or old.labels != state.labels:
            self._entries[key] = _Entry(new, state.labels)
        for gone in before - new:
            members = self.sets.get(gone)
            if members is not None:
                members.discard(key)
                if not members:
                    del self.sets[gone]
        joined = new - before
        for added in joined:
            self.sets.setdefault(added, set()).add(key)
        return joined

    def members(self, set_id: SetId) -> set[bytes]:
        return self.sets.get(set_id, set())

    def matches(self, key: bytes, page_id: str, audience: Audience) -> bool:
        """Is the user in the audience now (explicit `users` are checked by the walk's base)?"""
        entry = self._entries.get(key)
        if entry is None:
            return audience.topic is None and audience.matches_labels(())
        if ("p", page_id, "") not in entry.ids:
            return False
        if audience.topic is not None and ("t", page_id, audience.topic) not in entry.ids:
            return False
        return audience.matches_labels(entry.labels)

    def base(self, page_id: str, audience: Audience, partition: int, partitions: int) -> _Base:
        """The smallest indexed set every recipient must be in (or the explicit users of this
        partition): the walk goes through it, checking `matches` for the rest."""
        if audience.users is not None:
            keys = {f"{page_id}:{user}".encode() for user in audience.users}
            mine = {k for k in keys if partition_for(k, partitions) == partition}
            return _Base(None, mine)
        candidates: list[frozenset[SetId]] = []  # the most specific first: it wins a tie
        if audience.topic is not None:
            candidates.append(frozenset({("t", page_id, audience.topic)}))
        candidates += [frozenset({("l", page_id, label)}) for label in audience.labels_all]
        if audience.labels_any:  # every recipient has one of them: the union of their sets
            candidates.append(frozenset(("l", page_id, label) for label in audience.labels_any))
        candidates.append(frozenset({("p", page_id, "")}))
        sized = [
            (sum(len(self.members(i)) for i in ids), n, ids) for n, ids in enumerate(candidates)
        ]
        chosen = min(sized)[2]
        if len(chosen) == 1:
            return _Base(chosen, self.members(next(iter(chosen))))
        return _Base(chosen, set().union(*(self.members(i) for i in chosen)))


@dataclass(frozen=True, slots=True)
class _Base:
    set_ids: frozenset[SetId] | None  # None: the explicit `users` list, which nobody joins later
    keys: set[bytes]


@dataclass(slots=True)
class _Walk:
    """The sorted keys a broadcast walks in this partition (a cache, rebuilt after a restore from
    the index; the cursor in the committed broadcast says where the walk is)."""

    set_ids: frozenset[SetId] | None
    keys: list[bytes]
    ahead: int = 0  # keys after `ahead_of` in the audience (the progress's `audience` is
    ahead_of: bytes | None = b"\xff"  # decided + ahead); b"\xff": not counted yet


# ---- what is stored ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broadcast:
    spec: BroadcastSpec
    progress: BroadcastProgress
    cursor: bytes | None = None  # the last key the walk passed (decided or found out of audience)

    @property
    def status(self) -> BroadcastState:
        return self.progress.status


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient's delivery, so that each is counted once in sent / failed / unknown /
    delivered / read whatever the dispatcher and Meta repeat."""

    outcome: str | None = None
    sent_at: int | None = None
    delivered: bool = False
    read: bool = False


def broadcast_key(broadcast_id: str) -> bytes:
    return orjson.dumps(["b", broadcast_id])


def recipient_key(broadcast_id: str, user_key: bytes) -> bytes:
    return orjson.dumps(["r", broadcast_id, user_key.decode()])


def encode_broadcast(broadcast: Broadcast) -> bytes:
    return dumps(
        {
            "v": 1,
            "spec": to_wire(broadcast.spec),
            "progress": to_wire(broadcast.progress),
            "cursor": None if broadcast.cursor is None else broadcast.cursor.decode(),
        }
    )


def decode_broadcast(raw: bytes) -> Broadcast:
    data = loads(raw, "stored broadcast")
    if not isinstance(data, dict):
        raise SchemaError("", "expected a stored broadcast object")
    cursor = data.get("cursor")
    return Broadcast(
        spec=spec_from_wire(data.get("spec"), "spec"),
        progress=decode_as(BroadcastProgress, data.get("progress"), "progress"),
        cursor=cursor.encode() if isinstance(cursor, str) else None,
    )


def encode_recipient(recipient: Recipient) -> bytes:
    r = recipient
    return dumps({"o": r.outcome, "s": r.sent_at, "d": r.delivered, "r": r.read})


def decode_recipient(raw: bytes) -> Recipient:
    data = loads(raw, "stored recipient")
    if not isinstance(data, dict):
        raise SchemaError("", "expected a stored recipient object")
    return Recipient(data.get("o"), data.get("s"), bool(data.get("d")), bool(data.get("r")))


# ---- one partition's broadcasts ------------------------------------------------------------------


@dataclass
class _Work:
    """A batch's changes, the state only once its transaction commits."""

    broadcasts: dict[str, Broadcast] = field(default_factory=dict)
    recipients: dict[tuple[bytes, str], Recipient] = field(default_factory=dict)


Emit = Callable[[Result], None]


class Broadcasts:
    """The broadcasts of one window partition: commands, the walk, the counts (module docstring)."""

    def __init__(self, number: int, partitions: int, rules: RuleBook) -> None:
        self.number = number
        self.partitions = partitions
        self.rules = rules
        self.index = AudienceIndex()
        self.broadcasts: dict[str, Broadcast] = {}
        self.recipients: dict[bytes, dict[str, Recipient]] = {}
        self._walks: dict[str, _Walk] = {}
        self._work: _Work | None = None
        self.summaries: dict[bytes, Summary] = {}
        """Per user, the core's window and OTN verdicts as last assessed (the dry run's cheap
        path), kept by the reach index's listener: ~240 B a user holding one topic."""

    def summarise(self, key: bytes, state: UserState, verdicts: list[Verdict], now: int) -> None:
        self.summaries[key] = summary_of(state, verdicts, now, self.rules)

    # ---- restore ------------------------------------------------------------------------------

    def forget(self) -> None:
        self.summaries = {}
        self.broadcasts = {}
        self.recipients = {}
        self._walks = {}
        self._work = None
        self.index.clear()

    def restart_walks(self) -> None:
        """After a restore: every walk is rebuilt from the index, from its committed cursor."""
        self._walks = {}

    def apply_changelog(self, key: bytes, value: bytes | None) -> None:
        try:
            parts = orjson.loads(key)
            if parts[0] == "b":
                if value is None:
                    self.broadcasts.pop(parts[1], None)
                else:
                    self.broadcasts[parts[1]] = decode_broadcast(value)
                self._walks.pop(parts[1], None)
            elif parts[0] == "r":
                user_key = str(parts[2]).encode()
                if value is None:
                    self.recipients.get(user_key, {}).pop(parts[1], None)
                else:
                    self.recipients.setdefault(user_key, {})[parts[1]] = decode_recipient(value)
        except (orjson.JSONDecodeError, IndexError, TypeError, SchemaError) as exc:
            log.warning("broadcasts changelog: skipped a record %r: %s", key, exc)

    def index_user(self, key: bytes, state: UserState) -> None:
        """A committed state (the restore scan, or a batch): index it; a walk that has not yet
        passed a user who joins its base set takes them in."""
        for set_id in self.index.update(key, state):
            for broadcast_id, walk in self._walks.items():
                if walk.set_ids is None or set_id not in walk.set_ids:
                    continue
                broadcast = self.broadcasts.get(broadcast_id)
                if broadcast is None:
                    continue  # created by a batch that did not commit: its walk is dropped
                cursor = broadcast.cursor
                if cursor is not None and key <= cursor:
                    continue
                at = bisect.bisect_left(walk.keys, key)
                if at == len(walk.keys) or walk.keys[at] != key:
                    walk.keys.insert(at, key)
                    if walk.ahead_of == cursor:
                        walk.ahead += 1

    # ---- a batch ------------------------------------------------------------------------------

    def begin(self) -> None:
        self._work = _Work()

    def _get(self, broadcast_id: str) -> Broadcast | None:
        work = self._work
        if work is not None and broadcast_id in work.broadcasts:
            return work.broadcasts[broadcast_id]
        return self.broadcasts.get(broadcast_id)

    def _put(self, broadcast: Broadcast, now: int) -> None:
        assert self._work is not None
        progress = replace(broadcast.progress, updated_at=now)
        self._work.broadcasts[broadcast.spec.broadcast_id] = replace(broadcast, progress=progress)

    def command(self, raw: bytes, now: int) -> str:
        """Apply one command record; returns what it did (for the logs and tests). Raises
        SchemaError for a record that is not a command (the caller dead-letters it)."""
        command = decode_command(raw)
        current = self._get(command.broadcast_id)
        if command.kind == "create":
            return self._create(command, current, now)
        if current is None:
            return "unknown broadcast"
        status = _next_status(current, command, now)
        if status is None:
            return "no change"
        finished = now if status in FINAL else current.progress.finished_at
        progress = replace(current.progress, status=status, finished_at=finished)
        self._put(replace(current, progress=progress), now)
        return status

    def _create(self, command: BroadcastCommand, current: Broadcast | None, now: int) -> str:
        spec = command.spec
        if current is not None:
            return "exists"  # the same broadcast_id again: never a second fan-out
        if spec is None or spec.broadcast_id != command.broadcast_id:
            raise SchemaError("spec", "a create command carries its broadcast's spec")
        status: BroadcastState = "scheduled" if _waiting(spec, now) else "running"
        progress = BroadcastProgress(
            broadcast_id=spec.broadcast_id,
            page_id=spec.page_id,
            partition=self.number,
            status=status,
            created_at=spec.created_at if spec.created_at is not None else command.at,
        )
        self._put(Broadcast(spec, progress), now)
        return "created"

    def event(self, key: bytes | None, value: bytes | None, now: int) -> None:
        """An events record: count a recipient's send outcome, delivery or read."""
        if key is None or value is None:
            return
        if b'"kind":"send_outcome"' in value:
            if b'"bc:' not in value:
                return
        elif b'"kind":"delivery"' in value or b'"kind":"read"' in value:
            if key not in self.recipients and not self._work_has(key):
                return
        else:
            return
        try:
            event = decode_event(value)
        except SchemaError:
            return  # the fold step dead-letters it
        if isinstance(event, SendOutcome):
            self._outcome(key, event, now)
        elif isinstance(event, MessageDelivered | MessageRead):
            self._watermark(key, event, now)

    def _work_has(self, key: bytes) -> bool:
        work = self._work
        return work is not None and any(k == key for k, _ in work.recipients)

    def _recipient(self, key: bytes, broadcast_id: str) -> Recipient | None:
        work = self._work
        if work is not None and (key, broadcast_id) in work.recipients:
            return work.recipients[(key, broadcast_id)]
        return self.recipients.get(key, {}).get(broadcast_id)

    def _outcome(self, key: bytes, event: SendOutcome, now: int) -> None:
        prefix = "bc:"
        suffix = f":{event.user_id}"
        rid = event.request_id
        if not (rid.startswith(prefix) and rid.endswith(suffix)):
            return
        broadcast_id = rid[len(prefix) : -len(suffix)]
        broadcast = self._get(broadcast_id)
        if broadcast is None or recipient_request_id(broadcast_id, event.user_id) != rid:
            return
        before = self._recipient(key, broadcast_id) or Recipient()
        if before.outcome == event.status or before.outcome == "sent":
            return  # counted already; a sent message stays sent
        sent_at = event.timestamp if event.status == "sent" else before.sent_at
        after = replace(before, outcome=event.status, sent_at=sent_at)
        counts = {"sent": 0, "failed": 0, "unknown": 0}
        if before.outcome in counts:
            counts[before.outcome] -= 1
        counts[event.status] += 1
        progress = broadcast.progress
        progress = replace(
            progress,
            sent=progress.sent + counts["sent"],
            failed=progress.failed + counts["failed"],
            unknown=progress.unknown + counts["unknown"],
        )
        assert self._work is not None
        self._work.recipients[(key, broadcast_id)] = after
        self._put(replace(broadcast, progress=progress), now)

    def _watermark(self, key: bytes, event: MessageDelivered | MessageRead, now: int) -> None:
        ids = set(self.recipients.get(key, {}))
        if self._work is not None:
            ids.update(b for k, b in self._work.recipients if k == key)
        for broadcast_id in sorted(ids):
            recipient = self._recipient(key, broadcast_id)
            broadcast = self._get(broadcast_id)
            if recipient is None or broadcast is None or recipient.sent_at is None:
                continue
            if event.watermark < recipient.sent_at:
                continue
            is_read = isinstance(event, MessageRead)
            delivered = not recipient.delivered  # a read message was delivered
            read = is_read and not recipient.read
            if not (delivered or read):
                continue
            progress = broadcast.progress
            progress = replace(
                progress,
                delivered=progress.delivered + int(delivered),
                read=progress.read + int(read),
            )
            assert self._work is not None
            self._work.recipients[(key, broadcast_id)] = replace(
                recipient, delivered=True, read=recipient.read or is_read
            )
            self._put(replace(broadcast, progress=progress), now)

    # ---- the walk -----------------------------------------------------------------------------

    def wants_turn(self, now: int) -> float | None:
        """0 when a slice can run now; else seconds to the next `not_before`; None: nothing."""
        soonest: float | None = None
        for broadcast in self._current().values():
            if broadcast.status == "running":
                return 0.0 if self.index.ready else NOT_READY_RETRY_S
            if broadcast.status == "scheduled":
                wait = max(0.0, ((broadcast.spec.not_before or 0) - now) / 1000)
                if wait == 0.0 and not self.index.ready:
                    wait = NOT_READY_RETRY_S
                soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    def slice(self, tables: Tables, now: int, emit: Emit, limit: int | None = None) -> int:
        """Walk up to `limit` keys of the running broadcasts (oldest first); each recipient is
        decided and emitted. Returns the keys walked."""
        if not self.index.ready:
            return 0
        limit = SLICE_USERS if limit is None else limit
        walked = 0
        current = self._current()
        for broadcast_id in sorted(current, key=lambda b: _age(current[b])):
            broadcast = self._get(broadcast_id)
            if broadcast is None:
                continue
            if broadcast.status == "scheduled" and not _waiting(broadcast.spec, now):
                running = replace(broadcast.progress, status="running")
                broadcast = replace(broadcast, progress=running)
                self._put(broadcast, now)
            if broadcast.status != "running":
                continue
            walked += self._walk_one(broadcast, tables, now, emit, limit - walked)
            if walked >= limit:
                break
        return walked

    def _current(self) -> dict[str, Broadcast]:
        """The broadcasts as the batch in progress has them (a command in it counts at once)."""
        work = self._work
        if work is None or not work.broadcasts:
            return self.broadcasts
        return {**self.broadcasts, **work.broadcasts}

    def _walk_of(self, broadcast: Broadcast) -> _Walk:
        broadcast_id = broadcast.spec.broadcast_id
        walk = self._walks.get(broadcast_id)
        if walk is None:
            spec = broadcast.spec
            base = self.index.base(spec.page_id, spec.audience, self.number, self.partitions)
            keys = sorted(base.keys)
            walk = self._walks[broadcast_id] = _Walk(base.set_ids, keys)
        return walk

    def _walk_one(
        self, broadcast: Broadcast, tables: Tables, now: int, emit: Emit, limit: int
    ) -> int:
        spec = broadcast.spec
        walk = self._walk_of(broadcast)
        start = 0 if broadcast.cursor is None else bisect.bisect_right(walk.keys, broadcast.cursor)
        if walk.ahead_of != broadcast.cursor:  # after a restore, or a batch that did not commit
            walk.ahead = sum(
                1 for k in walk.keys[start:] if self.index.matches(k, spec.page_id, spec.audience)
            )
            walk.ahead_of = broadcast.cursor
        keys = walk.keys[start : start + limit]
        decided = 0
        by_mechanism: dict[str, int] = {}
        refused: dict[str, int] = {}
        for key in keys:
            if not self.index.matches(key, spec.page_id, spec.audience):
                continue
            walk.ahead -= 1
            request = recipient_request(spec, key, now)
            result = decide_own_request(tables, key, request, now, self.rules)
            if result.outcome != "decided":
                continue  # decided before (its request_id is in the state): never again
            emit(result)
            decision = result.decision
            decided += 1
            if decision is None:
                continue
            if decision.allowed and decision.mechanism is not None:
                by_mechanism[decision.mechanism] = by_mechanism.get(decision.mechanism, 0) + 1
            else:
                refused[decision.reason] = refused.get(decision.reason, 0) + 1
        progress = broadcast.progress
        remaining = len(walk.keys) - start - len(keys)
        status: BroadcastState = progress.status if remaining > 0 else "done"
        cursor = keys[-1] if keys else broadcast.cursor
        walk.ahead_of = cursor
        ahead = max(walk.ahead, 0) if remaining > 0 else 0
        progress = replace(
            progress,
            status=status,
            decided=progress.decided + decided,
            audience=progress.decided + decided + ahead,
            by_mechanism=_add(progress.by_mechanism, by_mechanism),
            refused=_add(progress.refused, refused),
            started_at=progress.started_at if progress.started_at is not None else now,
            finished_at=now if status == "done" else progress.finished_at,
        )
        self._put(replace(broadcast, progress=progress, cursor=cursor), now)
        return max(len(keys), 1)

    # ---- the end of a batch -------------------------------------------------------------------

    def records(self) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
        """The batch's changelog records and its progress records (key, value)."""
        work = self._work
        if work is None:
            return [], []
        changelog = [
            (broadcast_key(bid), encode_broadcast(b)) for bid, b in work.broadcasts.items()
        ]
        changelog += [
            (recipient_key(bid, key), encode_recipient(r))
            for (key, bid), r in work.recipients.items()
        ]
        progress = [
            (f"{bid}:{self.number}".encode(), encode_progress(b.progress))
            for bid, b in work.broadcasts.items()
        ]
        return changelog, progress

    def committed(self, users: Mapping[bytes, UserState]) -> None:
        work, self._work = self._work, None
        if work is not None:
            for bid, broadcast in work.broadcasts.items():
                self.broadcasts[bid] = broadcast
                if broadcast.status in FINAL:
                    self._walks.pop(bid, None)
            for (key, bid), recipient in work.recipients.items():
                self.recipients.setdefault(key, {})[bid] = recipient
        for key, state in users.items():
            self.index_user(key, state)

    def rolled_back(self) -> None:
        self._work = None
        for gone in [b for b in self._walks if b not in self.broadcasts]:
            del self._walks[gone]  # walks of broadcasts the lost batch created


def _add(counts: Mapping[str, int], more: Mapping[str, int]) -> dict[str, int]:
    if not more:
        return dict(counts)
    total = dict(counts)
    for name, n in more.items():
        total[name] = total.get(name, 0) + n
    return total


def _age(broadcast: Broadcast) -> tuple[int, str]:
    return (broadcast.progress.created_at or 0, broadcast.spec.broadcast_id)


def _waiting(spec: BroadcastSpec, now: int) -> bool:
    return spec.not_before is not None and spec.not_before > now


def _next_status(current: Broadcast, command: BroadcastCommand, now: int) -> BroadcastState | None:
    status = current.status
    if status in FINAL:
        return None
    if command.kind == "cancel":
        return "cancelled"
    if command.kind == "pause":
        return "paused" if status != "paused" else None
    if command.kind == "resume" and status == "paused":
        return "scheduled" if _waiting(current.spec, now) else "running"
    return None


def recipient_request(spec: BroadcastSpec, key: bytes, now: int) -> SendRequest:
    """The SendRequest one recipient is decided by: the spec's message and purpose, the audience's
    topic (for `auto`: the open window first, else the topic's token), the derived request_id."""
    user_id = key.decode()[len(spec.page_id) + 1 :]
    return SendRequest(
        request_id=recipient_request_id(spec.broadcast_id, user_id),
        page_id=spec.page_id,
        user_id=user_id,
        platform=spec.platform,
        purpose=spec.purpose,
        topic=spec.audience.topic,
        message=spec.message,
        created_at=now,
    )


# ---- the dry run ---------------------------------------------------------------------------------


@dataclass
class DryRun:
    """What a broadcast would do now, summed over partitions; reserves nothing."""

    audience: int = 0
    by_mechanism: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    partitions: list[int] = field(default_factory=list)

    def add(self, other: Mapping[str, Any]) -> None:
        self.audience += int(other.get("audience", 0))
        self.by_mechanism = _add(self.by_mechanism, other.get("by_mechanism", {}))
        self.refused = _add(self.refused, other.get("refused", {}))
        self.partitions += [int(p) for p in other.get("partitions", [])]

    def wire(self) -> dict[str, Any]:
        return {
            "audience": self.audience,
            "by_mechanism": dict(sorted(self.by_mechanism.items())),
            "refused": dict(sorted(self.refused.items())),
            "partitions": sorted(self.partitions),
        }


FOREVER = 2**62
NEVER = -1


@dataclass(frozen=True, slots=True)
class Summary:
    """What `decide` would say for this user, by mechanism, as of `at` (the reach index's last
    assessment of the user): until when the window allows RESPONSE (NEVER: refused, with
    `window_reason`), per OTN topic held until when a token is usable (NEVER: refused, with the
    reason), and the user-level block that refuses everything, if any."""

    at: int
    platform: str
    window_until: int
    window_reason: str
    otn: tuple[tuple[str, int, str], ...]  # (topic, until, reason): usually one, a dict is 4x
    blocked: str | None


def summary_of(state: UserState, verdicts: list[Verdict], now: int, rules: RuleBook) -> Summary:
    """The summary of a user the reach index just assessed (`verdicts`: `assess`'s, whose single
    refusal means a user-level block). The window and OTN verdicts are the core's own."""
    if len(verdicts) == 1 and not verdicts[0].allowed:
        return Summary(now, state.platform, NEVER, verdicts[0].reason, (), verdicts[0].reason)
    ctx = Context(state, now, rules, rules.page(state.page_id), state.platform)
    window = window_verdict(ctx)
    otn = tuple(
        (topic, _until(verdict), verdict.reason)
        for topic in dict.fromkeys(t.topic for t in state.otn)
        for verdict in (otn_verdict(ctx, topic),)
    )
    return Summary(now, state.platform, _until(window), window.reason, otn, None)


def _until(verdict: Verdict) -> int:
    if not verdict.allowed:
        return NEVER
    return FOREVER if verdict.valid_until is None else verdict.valid_until


def dry_run_partition(
    broadcasts: Broadcasts,
    spec: BroadcastSpec,
    now: int,
    state_of: Callable[[bytes], UserState | None],
    page: PageState | None,
) -> DryRun:
    """One partition's share of a dry run. The cheap path reads each user's `Summary` (the core's
    window and OTN verdicts as of the reach index's last assessment, kept as states commit and at
    the instants a verdict can change): for `auto`, `response` and `otn`, what `decide` would
    answer, grant or refusal with its reason. Users without a summary (not yet assessed), whose
    grant ended since, of another platform, and every other purpose are decided in full on a copy
    of their state. Nothing is reserved."""
    out = DryRun(partitions=[broadcasts.number])
    index = broadcasts.index
    audience = spec.audience
    base = index.base(spec.page_id, audience, broadcasts.number, broadcasts.partitions)
    only = next(iter(base.set_ids)) if base.set_ids is not None and len(base.set_ids) == 1 else None
    plain = (
        audience.users is None
        and not (audience.labels_all or audience.labels_any or audience.labels_none)
        and only is not None
        and only[0] == ("p" if audience.topic is None else "t")
    )  # the base set is the audience itself: no per-user check
    if page is not None and page.restricted:
        purpose = "page_restricted"  # `decide` refuses every user for it before anything else
    else:
        purpose = spec.purpose if spec.purpose in ("auto", "response", "otn") else "none"
    members: Collection[bytes] = (
        base.keys if plain else [k for k in base.keys if index.matches(k, spec.page_id, audience)]
    )
    counted = _count_fast(
        members, broadcasts.summaries, purpose, audience.topic, spec.platform, now
    )
    slow = counted.slow
    out.audience = counted.members
    for name, n in counted.by_mechanism.items():
        if n:
            out.by_mechanism[name] = n
    out.refused.update(counted.refused)
    for key in slow:
        state = state_of(key) or UserState(
            page_id=spec.page_id, user_id=key.decode()[len(spec.page_id) + 1 :]
        )
        decision = decide(state, recipient_request(spec, key, now), now, broadcasts.rules, page)
        if decision.duplicate:
            out.audience -= 1  # this broadcast decided the user already
        elif decision.allowed and decision.mechanism is not None:
            out.by_mechanism[decision.mechanism] = out.by_mechanism.get(decision.mechanism, 0) + 1
        else:
            out.refused[decision.reason] = out.refused.get(decision.reason, 0) + 1
    return out


@dataclass
class _Counted:
    members: int = 0
    by_mechanism: dict[str, int] = field(default_factory=lambda: {"RESPONSE": 0, "OTN": 0})
    refused: dict[str, int] = field(default_factory=dict)
    slow: list[bytes] = field(default_factory=list)


def _count_fast(
    members: Collection[bytes],
    summaries: Mapping[bytes, Summary],
    purpose: str,
    topic: str | None,
    platform: str,
    now: int,
) -> _Counted:
    """What `decide` would answer each member, read off the summaries (a tight loop: the dry
    run's whole cost for a million users); the keys it cannot tell go to `slow`. A verdict that
    was a grant when assessed and has ended since is told by `decide` (the reason may differ)."""
    out = _Counted()
    slow = out.slow
    keep = slow.append
    if purpose == "none":
        slow.extend(members)
        out.members = len(slow)
        return out
    if purpose == "page_restricted":
        out.members = len(members)
        out.refused["page_restricted"] = out.members
        return out
    get = summaries.get
    refused = out.refused
    window = token = 0
    with_window = purpose != "otn"
    name = topic or ""
    with_token = purpose != "response" and topic is not None
    for key in members:
        s = get(key)
        if s is None or s.platform != platform:
            keep(key)
            continue
        if with_window:
            until = s.window_until
            if until > now:
                window += 1
                continue
            if until != NEVER:
                keep(key)  # it ended since the assessment
                continue
            if s.blocked is not None or not with_token:
                reason = s.window_reason  # a block's reason, when blocked
                refused[reason] = refused.get(reason, 0) + 1
                continue
        elif s.blocked is not None:
            refused[s.blocked] = refused.get(s.blocked, 0) + 1
            continue
        for held, until, reason in s.otn:
            if held == name:
                if until > now:
                    token += 1
                elif until != NEVER:
                    keep(key)
                else:
                    refused[reason] = refused.get(reason, 0) + 1
                break
        else:
            keep(key)  # no token of the topic: the rule's lookup decides the reason
    out.members = len(members)
    out.by_mechanism = {"RESPONSE": window, "OTN": token}
    return out
