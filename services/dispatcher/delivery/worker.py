"""The delivery worker: decisions in, Graph calls out, each request and token used at most once.

One consumer in the group `DISPATCHER_GROUP` reads `<prefix>decisions` (`consumer`); each
assigned partition p gets a `PartitionWorker` with its own transactional producer (transactional_id
`<group>-p<p>`, so whoever owns p next fences the previous owner). Per batch of decisions, in
partition order, the worker (README, "Exactly-once delivery"):

1. skips refused and duplicate decisions, and request_ids the dispatch log already has; settles
   `failed`, without a call, one whose token another request already holds (I4);
2. re-checks `still_valid` (I6): a decision past its validity is settled `failed`, token released;
3. commits ONE transaction: an `attempt` record per call to make + the consumer offset of the
   batch, with a `token` record per attempt that carries a token (+ the outcomes of calls finished
   since the last one, and the tokens they give back). From here on these decisions are never
   processed again, by anyone, and their tokens are held;
4. calls Graph (rate-limited per page, re-checking validity just before each call, retrying only
   definite pre-delivery rejections);
5. publishes each call's outcome events and `done` record in the next transaction.

On assignment a worker first reads its dispatch-log partition to the end: that rebuilds the set
of request_ids already attempted and the tokens held, and every attempt without a done (a crash
between 3 and 5) is settled `unknown` — never called again, its token held for good. The worker
keeps no copy of user state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from schemas.codec import SchemaError
from schemas.decision import DecisionRecord, decode_decision_record
from schemas.events import encode_event
from schemas.topics import Topics
from services.common.deadletter import dead_letter_record
from services.common.kafka import fencing_producer
from services.common.runtime import now_ms
from services.dispatcher.config import CrashPoint, DispatcherConfig
from services.dispatcher.credentials import PageTokens
from services.dispatcher.delivery.dispatchlog import (
    Attempt,
    LogRecord,
    TokenUse,
    apply_token,
    encode_record,
    prune,
    request_key,
    scan_partition,
    token_use,
)
from services.dispatcher.delivery.graph import Answer, Deliverer
from services.dispatcher.delivery.outcome import (
    Settlement,
    attempt_for,
    not_sent,
    settle,
    token_taken,
    unknown_after_crash,
)
from services.dispatcher.metrics import METRICS
from windowgate.core.decide import still_valid
from windowgate.core.rulebook import RuleBook
from windowgate.core.timeconst import HOUR_MS
from windowgate.core.timestamps import ms_to_iso
from windowgate.meta.send_api import CannotSend, GraphCall, build_call

log = logging.getLogger(__name__)

SERVICE = "dispatcher"


def crash_here(config: DispatcherConfig, point: CrashPoint, request_ids: Iterable[str]) -> None:
    """Test hook (DISPATCHER_CRASH_AT): die by SIGKILL at `point`, as a kill -9 would."""
    if config.crash_at != point:
        return
    if config.crash_request is not None and config.crash_request not in set(request_ids):
        return
    log.warning("DISPATCHER_CRASH_AT=%s: SIGKILL now", point)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class Job:
    """One request to deliver: its committed attempt, the call, the decision to re-check."""

    record: DecisionRecord
    attempt: Attempt
    call: GraphCall
    access_token: str


@dataclass
class Plan:
    """What one transaction writes, planned from a batch without touching the worker's state."""

    jobs: list[Job] = field(default_factory=list)
    settled: list[Settlement] = field(default_factory=list)
    dead: list[bytes] = field(default_factory=list)
    keys: dict[bytes, int] = field(default_factory=dict)
    tokens: dict[bytes, TokenUse] = field(default_factory=dict)  # held from this transaction on
    released: list[TokenUse] = field(default_factory=list)  # given back by settled requests
    next_offset: int | None = None


@dataclass(frozen=True, slots=True)
class Deps:
    """What every partition worker of one dispatcher shares."""

    config: DispatcherConfig
    topics: Topics
    rules: RuleBook
    deliverer: Deliverer
    clock: Callable[[], int] = now_ms
    page_tokens: PageTokens = field(default_factory=dict)  # credentials: delivery's alone


class PartitionWorker:
    """Delivers the decisions of one partition; see the module docstring for the protocol."""

    def __init__(self, deps: Deps, partition: int) -> None:
        self.deps = deps
        self.config = deps.config
        self.partition = partition
        self.tp = TopicPartition(deps.topics.decisions, partition)
        self.queue: deque[ConsumerRecord[bytes, bytes]] = deque()
        self.settled: list[Settlement] = []
        self.in_flight: set[asyncio.Task[None]] = set()
        self.seen: dict[bytes, int] = {}
        self.tokens: dict[bytes, TokenUse] = {}
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()
        self.stopping = False
        self.fenced = False
        self.producer: AIOKafkaProducer | None = None
        self.task: asyncio.Task[None] | None = None
        self._last_prune = 0

    @property
    def transactional_id(self) -> str:
        return f"{self.config.group}-p{self.partition}"

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self._main(), name=f"dispatch p{self.partition}")

    def feed(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        self.queue.extend(records)
        self.wake.set()

    async def stop(self, grace_s: float) -> None:
        """Stop taking decisions; let calls in flight finish (up to `grace_s`) and record them."""
        self.stopping = True
        self.queue.clear()
        if self.in_flight:
            _, pending = await asyncio.wait(self.in_flight, timeout=grace_s)
            for task in pending:  # their outcome stays open: the next owner settles it unknown
                task.cancel()
        self.wake.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.task, timeout=grace_s)
        await self._close_producer()

    async def _new_producer(self) -> AIOKafkaProducer:
        producer = fencing_producer(self.config.bootstrap, self.transactional_id)
        await producer.start()  # init_transactions: fences the previous owner, aborts its txn
        return producer

    async def _close_producer(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _main(self) -> None:
        try:
            self.producer = await self._new_producer()
            await self._recover()
            self.ready.set()
            await self._loop()
        except ProducerFenced:
            self.fenced = True
            log.warning("partition %d: fenced by a newer owner; stopping", self.partition)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("partition %d: worker failed", self.partition)
            raise

    async def _recover(self) -> None:
        """Rebuild the attempted set; settle `unknown` every attempt that has no done."""
        started = time.monotonic()
        scan = await scan_partition(self.config.bootstrap, self.config.dispatch_log, self.partition)
        self.seen, self.tokens = scan.seen, scan.tokens
        now = self.deps.clock()
        prune(self.seen, now - self.config.log_retention_h * HOUR_MS)
        prune(self.tokens, now - self.config.log_retention_h * HOUR_MS)
        orphans = [unknown_after_crash(a, now) for a in scan.open.values()]
        if orphans:
            log.warning(
                "partition %d: %d attempt(s) without outcome from a previous run: unknown",
                self.partition,
                len(orphans),
            )
            METRICS.outcomes.labels("unknown").inc(len(orphans))
            await self._commit(Plan(settled=orphans))
        log.info(
            "partition %d: dispatch log read (%d records, %d request_ids, %d tokens held) "
            "in %.2f s",
            self.partition,
            scan.records,
            len(self.seen),
            len(self.tokens),
            time.monotonic() - started,
        )

    # ---- the loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            take = bool(self.queue) and not self.stopping and not self._full()
            if not take and not self.settled:
                if self.stopping and not self.in_flight:
                    return
                self.wake.clear()
                await self.wake.wait()
                continue
            records: list[ConsumerRecord[bytes, bytes]] = []
            while take and self.queue and len(records) < self.config.batch:
                records.append(self.queue.popleft())
            settled, self.settled = self.settled, []
            plan = self._plan(records)
            plan.settled[:0] = settled
            plan.released = self._released(settled)
            await self._commit_with_retry(plan)
            self._launch(plan)

    def _full(self) -> bool:
        return len(self.in_flight) >= self.config.in_flight

    def _plan(self, records: list[ConsumerRecord[bytes, bytes]]) -> Plan:
        plan = Plan()
        now = self.deps.clock()
        for record in records:
            plan.next_offset = record.offset + 1
            METRICS.decisions.inc()
            try:
                decided = decode_decision_record(record.value or b"")
            except SchemaError as exc:
                log.warning(
                    "partition %d offset %d: bad decision: %s", record.partition, record.offset, exc
                )
                plan.dead.append(
                    dead_letter_record(
                        SERVICE,
                        f"undecodable decision: {exc}",
                        record.value or b"",
                        now,
                        {
                            "topic": record.topic,
                            "partition": record.partition,
                            "offset": record.offset,
                        },
                    )
                )
                continue
            self._plan_one(plan, decided, now)
        return plan

    def _plan_one(self, plan: Plan, decided: DecisionRecord, now: int) -> None:
        decision = decided.decision
        if not decision.allowed or decision.duplicate:
            METRICS.skipped.labels("refused" if not decision.allowed else "duplicate").inc()
            return
        key = request_key(decision.page_id, decision.user_id, decision.request_id)
        if key in self.seen or key in plan.keys:
            METRICS.skipped.labels("already_attempted").inc()
            log.info("request %s was already attempted: not sent again", decision.request_id)
            return
        plan.keys[key] = now
        attempt = attempt_for(decision, now)
        hold = token_use(attempt, now)
        if hold is not None:  # before any path that releases the token: it may not be ours
            holder = plan.tokens.get(hold.key) or self.tokens.get(hold.key)
            if holder is not None:
                METRICS.token_taken.labels(decision.mechanism or "none").inc()
                log.warning(
                    "partition %d: request %s carries a %s token already attempted by request "
                    "%s: not sent (an upstream fault: the token was granted twice)",
                    self.partition,
                    decision.request_id,
                    decision.mechanism,
                    holder.request_id,
                )
                plan.settled.append(token_taken(attempt, now, holder.request_id))
                return
        if not still_valid(decision, now):
            plan.settled.append(not_sent(attempt, now, _expired(decision.valid_until, now)))
            return
        page = self.deps.rules.page(decision.page_id)
        access_token = self.deps.page_tokens.get(decision.page_id)
        if not access_token:
            detail = (
                f"page {decision.page_id} has no access_token in the pages file "
                "(WINDOWGATE_PAGES): nothing was sent"
            )
            plan.settled.append(not_sent(attempt, now, detail))
            return
        try:
            call = build_call(decided, page, self.config.graph_version)
        except CannotSend as exc:
            plan.settled.append(not_sent(attempt, now, exc.detail))
            return
        plan.jobs.append(Job(decided, attempt, call, access_token))
        if hold is not None:
            plan.tokens[hold.key] = hold

    def _released(self, settled: list[Settlement]) -> list[TokenUse]:
        """The tokens these outcomes give back that their request holds in the log (a request
        settled before its attempt holds none; a token another request holds stays held)."""
        released = []
        for settlement in settled:
            record = settlement.released
            if record is None:
                continue
            holder = self.tokens.get(record.key)
            if holder is not None and holder.request_id == record.request_id:
                released.append(record)
        return released

    # ---- transactions -------------------------------------------------------------------------

    async def _commit(self, plan: Plan) -> None:
        """One transaction: outcomes + dones, attempts, dead letters, the batch's offset."""
        producer = self.producer
        if producer is None:
            raise RuntimeError("the worker has no producer")
        topics, log_topic = self.deps.topics, self.config.dispatch_log
        started = time.monotonic()
        async with producer.transaction():
            # The offset goes first: the broker verifies (KIP-890) one request per transactional
            # id at a time, and a TxnOffsetCommit verified while a produce is being verified makes
            # the produce fail with a retried NotEnoughReplicasError; in this order they never meet.
            if plan.next_offset is not None:
                await producer.send_offsets_to_transaction(
                    {self.tp: plan.next_offset}, self.config.group
                )
            for settlement in plan.settled:
                for event in settlement.events:
                    await producer.send(topics.events, encode_event(event), key=event.key.encode())
                done = settlement.done
                await producer.send(
                    log_topic, encode_record(done), key=done.key, partition=self.partition
                )
            records: list[LogRecord] = [*plan.released, *(j.attempt for j in plan.jobs)]
            records.extend(plan.tokens.values())  # each token held with its attempt
            for record in records:
                await producer.send(
                    log_topic, encode_record(record), key=record.key, partition=self.partition
                )
            for dead in plan.dead:
                await producer.send(topics.dead_letter, dead)
        METRICS.transaction_seconds.observe(time.monotonic() - started)
        self.seen.update(plan.keys)
        for record in (*plan.released, *plan.tokens.values()):
            apply_token(self.tokens, record)
        for settlement in plan.settled:
            self.seen[settlement.done.key] = settlement.done.at
        if plan.settled:
            METRICS.settled.inc(len(plan.settled))

    async def _commit_with_retry(self, plan: Plan) -> None:
        """Retry a failed transaction (same contents) until it commits; fenced → give up."""
        delay = 0.1
        while True:
            try:
                await self._commit(plan)
                return
            except ProducerFenced:
                raise
            except KafkaError as exc:
                log.warning(
                    "partition %d: transaction failed (%s); retrying in %.1f s",
                    self.partition,
                    exc,
                    delay,
                )
                await self._close_producer()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self.producer = await self._new_producer()
                await self._resync(plan)

    async def _resync(self, plan: Plan) -> None:
        """After a new producer fenced whoever else held this partition meanwhile (a worker that
        stalled through its session timeout comes back here): re-read the log and drop every job
        another owner attempted, or whose token another request took, since the plan was made.
        Without this a woken zombie would re-fence the rightful owner and call Graph again."""
        scan = await scan_partition(self.config.bootstrap, self.config.dispatch_log, self.partition)
        held_by = {use.request_id: key for key, use in plan.tokens.items()}
        kept = []
        for job in plan.jobs:
            request_id = job.attempt.request_id
            token = held_by.get(request_id)
            holder = scan.tokens.get(token) if token is not None else None
            if job.attempt.key in scan.seen or (
                holder is not None and holder.request_id != request_id
            ):
                METRICS.skipped.labels("already_attempted").inc()
                log.warning(
                    "partition %d: request %s (or its token) was attempted by another owner "
                    "while this one was away: not sent",
                    self.partition,
                    request_id,
                )
                plan.keys.pop(job.attempt.key, None)
                continue
            kept.append(job)
        dropped = {j.attempt.request_id for j in plan.jobs} - {j.attempt.request_id for j in kept}
        plan.jobs = kept
        plan.tokens = {k: u for k, u in plan.tokens.items() if u.request_id not in dropped}
        for key, at in scan.seen.items():
            self.seen[key] = max(self.seen.get(key, 0), at)
        for record in scan.tokens.values():
            apply_token(self.tokens, record)

    # ---- calls --------------------------------------------------------------------------------

    def _launch(self, plan: Plan) -> None:
        if plan.jobs:
            crash_here(self.config, "after_attempt", (j.attempt.request_id for j in plan.jobs))
        for job in plan.jobs:
            task = asyncio.create_task(self._deliver(job))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        now = self.deps.clock()
        if now - self._last_prune > 60_000:  # forget request_ids the log has let go of
            self._last_prune = now
            prune(self.seen, now - self.config.log_retention_h * HOUR_MS)
            prune(self.tokens, now - self.config.log_retention_h * HOUR_MS)
            self.deps.deliverer.limiter.forget_idle()

    async def _deliver(self, job: Job) -> None:
        decision = job.record.decision

        def recheck() -> str | None:
            now = self.deps.clock()
            return None if still_valid(decision, now) else _expired(decision.valid_until, now)

        def answered(answer: Answer) -> None:
            METRICS.calls.labels(answer.verdict.error_class).inc()
            crash_here(self.config, "after_call", (decision.request_id,))

        try:
            delivery = await self.deps.deliverer.deliver(
                job.call, job.access_token, recheck, answered
            )
            now = self.deps.clock()
            if delivery.answer is None:
                settlement = not_sent(job.attempt, now, delivery.skipped or "not sent")
            else:
                answer = delivery.answer
                settlement = settle(
                    job.attempt,
                    answer.verdict,
                    now,
                    calls=delivery.calls,
                    graph_status=answer.status,
                    graph_body=answer.body,
                )
                if answer.verdict.action.alert:
                    log.error(
                        "page %s: %s — the page is stopped until this is fixed",
                        decision.page_id,
                        answer.verdict.detail,
                    )
        except asyncio.CancelledError:
            return  # revoked mid-call: the next owner settles the open attempt as unknown
        except Exception:  # a bug must not leave the attempt open: the call may have happened
            log.exception("delivery of %s failed unexpectedly", decision.request_id)
            settlement = unknown_after_crash(job.attempt, self.deps.clock())
        METRICS.outcomes.labels(settlement.done.status).inc()
        self.settled.append(settlement)
        self.wake.set()


def _expired(valid_until: int | None, now: int) -> str:
    until = ms_to_iso(valid_until) if valid_until is not None else "unknown"
    return (
        f"the decision was valid until {until}; at {ms_to_iso(now)} it no longer is, "
        "so nothing was sent (I6)"
    )
