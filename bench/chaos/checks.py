"""What must hold after the faults, measured from outside: topics, queries, Graph's log, replay.

Every function returns counts (and a few examples) rather than raising: the report shows them all.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.chaos.stack import REPO_ROOT
from bench.chaos.traffic import Ledger, broadcast_of, request_id_of
from devtools.graph_standin import Call
from schemas.broadcast import recipient_request_id
from schemas.codec import SchemaError
from schemas.decision import Decision, decode_decision_record
from schemas.events import Event, MessageReceived, OtnOptin, decode_event
from schemas.request import decode_request
from windowgate.core.timeconst import HOUR_MS

EXAMPLES = 5
CLOCK_SKEW_MS = 5_000  # the stand-in's clock vs the webhook timestamps: one machine, generous


@dataclass
class Finding:
    """A count that must be 0, with a few examples of what it counted."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)


# ---- topics --------------------------------------------------------------------------------------


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for t in described for p in t.get("partitions", []))


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[bytes]:
    """Every committed value of `topic` (read_committed), up to the end offsets found at start."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        request_timeout_ms=30_000,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        partitions = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(timeout_s):
            for tp in partitions:
                while await consumer.position(tp) < ends[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=500)
                    values.extend(m.value for m in batch.get(tp, []) if m.value is not None)
    finally:
        await consumer.stop()
    return values


def event_id(event: Event) -> tuple[str, str, str, str, int]:
    return (event.KIND, event.page_id, event.user_id, event.dedup_key, event.timestamp)


def decode_events(values: Iterable[bytes]) -> set[tuple[str, str, str, str, int]]:
    seen = set()
    for raw in values:
        try:
            seen.add(event_id(decode_event(raw)))
        except SchemaError:
            continue  # not ours to judge here: the dead-letter path covers undecodable records
    return seen


def decode_decisions(values: Iterable[bytes]) -> dict[str, list[Decision]]:
    by_request: dict[str, list[Decision]] = defaultdict(list)
    for raw in values:
        try:
            decision = decode_decision_record(raw).decision
        except SchemaError:
            continue
        by_request[decision.request_id].append(decision)
    return by_request


# ---- accepted webhooks ---------------------------------------------------------------------------


async def user_states(
    session: aiohttp.ClientSession,
    window_urls: list[str],
    token: str,
    users: Iterable[tuple[str, str]],
    attempts: int = 3,
) -> dict[tuple[str, str], dict[str, Any] | None]:
    """Each user's live state from `GET /v1/pages/{p}/users/{u}` (any worker; None: no answer)."""
    headers = {"Authorization": f"Bearer {token}"}
    limit = asyncio.Semaphore(16)

    async def one(n: int, page: str, user: str) -> dict[str, Any] | None:
        async with limit:
            for attempt in range(attempts):
                url = window_urls[(n + attempt) % len(window_urls)]
                try:
                    async with session.get(
                        f"{url}/v1/pages/{page}/users/{user}",
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=10),
                    ) as answer:
                        if answer.status == 200:
                            data = await answer.json(content_type=None)
                            state = data.get("state") if isinstance(data, dict) else None
                            return state if isinstance(state, dict) else None
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                    pass
                await asyncio.sleep(0.5)
            return None

    keys = sorted(set(users))
    states = await asyncio.gather(*(one(n, p, u) for n, (p, u) in enumerate(keys)))
    return dict(zip(keys, states, strict=True))


def reflected(event: Event, state: dict[str, Any] | None) -> bool:
    """Does the user's live state show this event (a maximum at least its time, a known token)?"""
    if state is None:
        return False
    if isinstance(event, MessageReceived):
        last = state.get("last_message_at")
        return isinstance(last, int) and last >= event.timestamp
    if isinstance(event, OtnOptin):
        return any(
            isinstance(t, dict) and t.get("token") == event.token for t in state.get("otn") or []
        )
    return True  # the traffic sends no other kind


@dataclass
class WebhookFindings:
    lost: Finding  # accepted bodies with an event missing from the topic or from the state
    missing_in_topic: Finding
    missing_in_state: Finding
    state_unanswered: Finding
    lost_at: list[float] = field(default_factory=list)  # when each lost body was accepted


def check_webhooks(
    ledger: Ledger,
    in_topic: set[tuple[str, str, str, str, int]],
    states: dict[tuple[str, str], dict[str, Any] | None],
) -> WebhookFindings:
    found = WebhookFindings(Finding(), Finding(), Finding(), Finding())
    for key, state in states.items():
        if state is None:
            found.state_unanswered.add(f"{key[0]}:{key[1]}")
    counted: set[tuple[str, str, str, str, int]] = set()
    for body in ledger.bodies:
        if not body.accepted:
            continue
        lost = []
        for event in body.events:
            ident = event_id(event)
            if ident not in in_topic:
                lost.append(f"{event.key} {event.dedup_key} not in the events topic")
                if ident not in counted:
                    found.missing_in_topic.add(f"{event.key} {event.dedup_key}")
            elif not reflected(event, states.get((event.page_id, event.user_id))):
                lost.append(f"{event.key} {event.dedup_key} not in the live state")
                if ident not in counted:
                    found.missing_in_state.add(f"{event.key} {event.dedup_key}")
            counted.add(ident)
        if lost:
            found.lost.add(f"body answered 200: {'; '.join(lost[:2])}")
            if body.accepted_at is not None:
                found.lost_at.append(body.accepted_at)
    return found


# ---- requests and decisions ----------------------------------------------------------------------


def signature(d: Decision | dict[str, Any]) -> tuple[Any, ...]:
    if isinstance(d, Decision):
        return (d.allowed, d.mechanism, d.token, d.reason)
    return (d.get("allowed"), d.get("mechanism"), d.get("token"), d.get("reason"))


@dataclass
class DecisionFindings:
    without_one: Finding  # no decision, or non-duplicate decisions that disagree
    no_decision: Finding
    conflicting: Finding
    answer_mismatch: Finding  # the HTTP answer says otherwise than the decisions topic


def request_ids(values: Iterable[bytes]) -> set[str]:
    """The request ids in `send-requests` (to tell a request never published from one undecided)."""
    ids = set()
    for raw in values:
        try:
            ids.add(decode_request(raw).request_id)
        except SchemaError:
            continue
    return ids


def check_decisions(
    ledger: Ledger, decisions: dict[str, list[Decision]], published: set[str] | None = None
) -> DecisionFindings:
    found = DecisionFindings(Finding(), Finding(), Finding(), Finding())
    for request_id, request in ledger.requests.items():
        if not request.answered:
            continue
        firsts = [d for d in decisions.get(request_id, []) if not d.duplicate]
        kinds = {signature(d) for d in firsts}
        if not firsts:
            found.no_decision.add(request_id)
            found.without_one.add(
                f"{request_id}: no decision (answers {request.statuses}, "
                f"submitted {request.submissions}x"
                + ("" if published is None else f", in send-requests: {request_id in published}")
                + ")"
            )
            continue
        if len(kinds) > 1:
            found.conflicting.add(f"{request_id}: {sorted(map(str, kinds))}")
            found.without_one.add(
                f"{request_id}: {len(firsts)} decisions, {len(kinds)} different: "
                + "; ".join(sorted(map(str, kinds)))
            )
        first = signature(firsts[0])
        for answer in request.answers:
            if signature(answer) != first:
                found.answer_mismatch.add(f"{request_id}: answered {signature(answer)}, {first}")
                break
    return found


# ---- Graph's log ---------------------------------------------------------------------------------


@dataclass
class GraphFindings:
    calls: int
    tokens_twice: Finding
    requests_twice: Finding
    forbidden: Finding


Grants = dict[str, tuple[str, str, int]]
"""OTN token -> (page, user, granted at), from the accepted opt-ins."""


def call_request_id(call: Call, grants: Grants) -> str | None:
    """The request a Graph call carries: named in its text, or, for a broadcast (one text for
    all), the recipient's derived request id (the user from the recipient id, or from the opt-in
    that granted the OTN token the call uses)."""
    request_id = request_id_of(call.text)
    broadcast_id = broadcast_of(call.text)
    if request_id is not None or broadcast_id is None:
        return request_id
    user = call.recipient.get("id")
    if user is None and call.token is not None and call.token in grants:
        user = grants[call.token][1]
    return recipient_request_id(broadcast_id, str(user) if user is not None else "?")


def check_graph(
    calls: list[Call],
    ledger: Ledger,
    decisions: dict[str, list[Decision]],
    wall_offset_s: float,
) -> GraphFindings:
    """`wall_offset_s`: add to a call's monotonic `at` to get the wall clock (seconds)."""
    delivered = [c for c in calls if c.delivered_maybe]
    found = GraphFindings(len(calls), Finding(), Finding(), Finding())
    for token, n in Counter(c.token for c in delivered if c.token).items():
        if n > 1:
            found.tokens_twice.add(f"{token}: {n} calls")

    # What Meta told the gateway, from bodies it accepted: user messages and opt-in grants.
    messages: dict[tuple[str, str], list[int]] = defaultdict(list)
    grants: Grants = {}
    for body in ledger.bodies:
        if not body.accepted:
            continue
        for event in body.events:
            if isinstance(event, MessageReceived):
                messages[(event.page_id, event.user_id)].append(event.timestamp)
            elif isinstance(event, OtnOptin):
                grants[event.token] = (event.page_id, event.user_id, event.timestamp)

    ids = Counter(call_request_id(c, grants) for c in delivered)
    ids.pop(None, None)
    for request_id, n in ids.items():
        if n > 1:
            found.requests_twice.add(f"{request_id}: {n} calls")

    for call in calls:
        at_ms = int((call.at + wall_offset_s) * 1000)
        request_id = call_request_id(call, grants)
        allowed = [d for d in decisions.get(request_id or "", []) if d.allowed and not d.duplicate]
        what = f"call {call.path} for {request_id}"
        if not allowed:
            found.forbidden.add(f"{what}: no allowed decision for this request")
            continue
        kind = call.body.get("messaging_type")
        otn = call.token
        if otn is not None:
            grant = grants.get(otn)
            if grant is None:
                found.forbidden.add(f"{what}: OTN token {otn} granted by no accepted opt-in")
            elif grant[0] != call.page_id or grant[2] > at_ms + CLOCK_SKEW_MS:
                found.forbidden.add(f"{what}: token {otn} granted on {grant[0]} at {grant[2]}")
            elif call.recipient.get("one_time_notif_token") != otn:
                found.forbidden.add(f"{what}: token {otn} used as something other than OTN")
        elif kind in ("RESPONSE", "UPDATE"):
            user = str(call.recipient.get("id"))
            opened = [
                ts
                for ts in messages.get((call.page_id or "", user), [])
                if at_ms - 24 * HOUR_MS < ts <= at_ms + CLOCK_SKEW_MS
            ]
            if not opened:
                found.forbidden.add(f"{what}: {kind} with no user message in the 24 h before")
        else:
            found.forbidden.add(f"{what}: {kind or 'no messaging_type'} is never asked for here")
    return found


# ---- the broadcast -------------------------------------------------------------------------------


@dataclass
class BroadcastFindings:
    recipients: int
    graph_calls: int
    decided_twice: Finding
    messaged_twice: Finding


def check_broadcast(
    broadcast_id: str, decisions: dict[str, list[Decision]], calls: list[Call], ledger: Ledger
) -> BroadcastFindings:
    """Each recipient of the run's broadcast decided at most once (whatever was killed, paused,
    resumed) and sent at most one message; tokens used twice are `check_graph`'s count."""
    prefix = f"bc:{broadcast_id}:"
    grants: Grants = {
        e.token: (e.page_id, e.user_id, e.timestamp)
        for b in ledger.bodies
        if b.accepted
        for e in b.events
        if isinstance(e, OtnOptin)
    }
    mine = {rid: ds for rid, ds in decisions.items() if rid.startswith(prefix)}
    found = BroadcastFindings(len(mine), 0, Finding(), Finding())
    for request_id, decided in mine.items():
        new = [d for d in decided if not d.duplicate]
        if len(new) > 1:
            found.decided_twice.add(f"{request_id}: {len(new)} decisions")
    ours = [c for c in calls if c.delivered_maybe and broadcast_of(c.text) == broadcast_id]
    found.graph_calls = len(ours)
    for recipient, n in Counter(call_request_id(c, grants) for c in ours).items():
        if n > 1:
            found.messaged_twice.add(f"{recipient}: {n} calls")
    return found


# ---- replay --------------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    exit_code: int
    differences: int
    summary: str


_DIFFERENCES = re.compile(r"^([\d,]+) differences$", re.MULTILINE)


async def run_replay(
    bootstrap: str, prefix: str, app_id: str, partitions: int, timeout_s: float = 240.0
) -> ReplayResult:
    command = [
        sys.executable, "-m", "windowgate", "replay", "--compare", "--quiet", "--show", "5",
        "--bootstrap", bootstrap, "--prefix", prefix, "--app-id", app_id,
        "--partitions", str(partitions),
    ]  # fmt: skip
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            command,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ReplayResult(-1, 1, f"replay did not finish within {timeout_s:.0f} s")
    out = (done.stdout + done.stderr).strip()
    if done.returncode == 0:
        return ReplayResult(0, 0, out.splitlines()[-1] if out else "")
    match = _DIFFERENCES.search(done.stdout)
    count = int(match.group(1).replace(",", "")) if match else 1
    lines = [line[:160] + ("…" if len(line) > 160 else "") for line in out.splitlines()]
    return ReplayResult(done.returncode, count, "\n".join(lines[:14]))
