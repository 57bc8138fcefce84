"""The port between the webhook handler and Kafka: publish a batch, await every ack, or say why not.

The handler depends only on the `Publisher` protocol; `KafkaPublisher` is the real adapter (an
idempotent, acks=all producer from `durable_producer`, with the cheaper `KeyPartitioner`), and
the handler tests use an in-memory fake. The Kafka behaviour itself is tested against a real
broker.

Partial publication. `publish` either returns (every record acknowledged by all in-sync replicas)
or raises `PublishError`, and the handler then answers 503 so that Meta retries the whole body.
Some of that body's records may still reach the topic (they were handed to the producer before the
deadline and are delivered when the broker answers again). That is harmless: every event carries
the `dedup_key` of the fact it records, the fold applies a fact once (I2), and Meta's retry
publishes the same events with the same keys again. Nothing of a 503'd body counts as accepted,
and a 200 is only ever given after every record of the body was acknowledged (I7).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from schemas.topics import Topics
from services.common.kafka import durable_producer
from services.common.topics import TopicLayoutError, ensure_topics
from services.ingest.partitioner import KeyPartitioner

log = logging.getLogger(__name__)

Record = tuple[str, bytes | None, bytes]
"""(topic, key, value) of one Kafka record."""


class PublishError(Exception):
    """The batch is not (known to be) stored: the caller must not treat any of it as accepted."""


class BrokerUnavailable(PublishError):
    """No usable connection to Kafka (not connected yet, connection lost, producer failed)."""


class PublishTimeout(PublishError):
    """Kafka did not acknowledge every record before the deadline."""


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str


class Publisher(Protocol):
    """What the handler needs from a message broker."""

    async def start(self) -> None:
        """Begin connecting; must return even when the broker is down."""

    async def close(self) -> None:
        """Flush what can be flushed and release connections."""

    async def publish(self, records: Sequence[Record], timeout_s: float) -> None:
        """Return once every record is acknowledged; raise PublishError otherwise."""

    async def health(self, timeout_s: float) -> Health:
        """Whether the broker answers now."""


ProducerFactory = Callable[[str], AIOKafkaProducer]


def ingest_producer(bootstrap: str) -> AIOKafkaProducer:
    """`durable_producer` with `KeyPartitioner`: the same partitions as every other producer's,
    without aiokafka's byte-by-byte murmur2 for every event."""
    return durable_producer(bootstrap, partitioner=KeyPartitioner())


def _swallow(future: asyncio.Future[object]) -> None:
    """A delivery future nobody waits for any more: read its outcome so asyncio does not warn."""
    if not future.cancelled():
        future.exception()


class KafkaPublisher:
    """`Publisher` over one durable producer, (re)connected by a background task.

    The service must start, and answer 503, while the broker is down, and recover without a
    restart. So `start()` only launches a connector task: it ensures the topics (same partition
    count for every keyed topic), starts a producer and keeps it until the producer looks
    unusable; then it builds a fresh one. Unusable: a publish failed with a non-retriable Kafka
    error (e.g. a broken idempotence sequence, after which aiokafka fails every send), or every
    publish has failed for `replace_after_s` (a producer can also just hang). Short outages need
    no new producer: aiokafka reconnects by itself and, being idempotent, retries its batches
    without expiring them. Replacing one is always safe: what it still holds was never
    acknowledged to Meta, who sends it again.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        partitions: int,
        *,
        producer_factory: ProducerFactory = ingest_producer,
        first_connect_wait_s: float = 5.0,
        retry_delay_s: tuple[float, float] = (0.2, 5.0),
        connect_timeout_s: float = 10.0,
        retire_timeout_s: float = 30.0,
        replace_after_s: float = 30.0,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self._partitions = partitions
        self._factory = producer_factory
        self._first_wait_s = first_connect_wait_s
        self._retry_delay_s = retry_delay_s
        self._connect_timeout_s = connect_timeout_s
        self._retire_timeout_s = retire_timeout_s
        self._replace_after_s = replace_after_s
        self._failing_since: float | None = None
        self._producer: AIOKafkaProducer | None = None
        self._problem = f"not connected to Kafka at {bootstrap} yet"
        self._connected = asyncio.Event()
        self._broken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._connect_forever(), name="ingest-kafka-connector")
        # Give a healthy broker the chance to be ready before the first request; never block on
        # a dead one.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), self._first_wait_s)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._retire(producer)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def publish(self, records: Sequence[Record], timeout_s: float) -> None:
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable(self._problem)
        send = producer.send
        futures: list[asyncio.Future[object]] = []
        acked = False
        try:
            # One deadline for handing over and for the acks. Cancelling send() withdraws the
            # record being added; cancelling a delivery future does not stop its delivery
            # (aiokafka documents both): records handed over before the deadline may still be
            # stored later, which is harmless (see the module docstring).
            async with asyncio.timeout(timeout_s):
                for topic, key, value in records:
                    futures.append(await send(topic, value=value, key=key))
                if len(futures) == 1:
                    await futures[0]
                else:
                    await asyncio.gather(*futures)
            acked = True
            self._failing_since = None
        except TimeoutError:
            self._note_failure()
            raise PublishTimeout(
                f"Kafka did not acknowledge all {len(records)} records within {timeout_s} s "
                f"({len(futures)} handed over)"
            ) from None
        except Exception as exc:
            self._note_failure()
            raise self._failed(exc) from exc
        finally:
            if not acked:
                for future in futures:
                    future.add_done_callback(_swallow)

    async def health(self, timeout_s: float) -> Health:
        producer = self._producer
        if producer is None:
            return Health(False, self._problem)
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            return Health(False, f"Kafka at {self._bootstrap} does not answer: {_describe(exc)}")
        return Health(True, f"connected to Kafka at {self._bootstrap}")

    # ---- internals ---------------------------------------------------------------------------

    def _note_failure(self) -> None:
        """Ask for a fresh producer when nothing has succeeded for `replace_after_s`."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > self._replace_after_s and not self._broken.is_set():
            log.warning(
                "every publish failed for %.0f s: replacing the Kafka producer",
                now - self._failing_since,
            )
            self._broken.set()

    def _failed(self, exc: BaseException) -> PublishError:
        """Classify a delivery error; ask for a fresh producer when this one cannot recover."""
        if isinstance(exc, KafkaTimeoutError):
            return PublishTimeout(f"Kafka timed out: {_describe(exc)}")
        retriable = isinstance(exc, KafkaError) and exc.retriable
        fatal = not retriable and not isinstance(exc, MessageSizeTooLargeError)
        if fatal and not self._broken.is_set():
            log.warning("Kafka producer unusable, replacing it: %s", _describe(exc))
            self._broken.set()
        return BrokerUnavailable(f"Kafka did not store the records: {_describe(exc)}")

    async def _connect_forever(self) -> None:
        low, high = self._retry_delay_s
        delay = low
        while True:
            producer: AIOKafkaProducer | None = None
            try:
                await ensure_topics(
                    self._bootstrap,
                    self._topics,
                    self._partitions,
                    timeout_s=self._connect_timeout_s,
                )
                producer = self._factory(self._bootstrap)
                await producer.start()
            except asyncio.CancelledError:
                if producer is not None:
                    await self._retire(producer)
                raise
            except TopicLayoutError as exc:
                # A deployment error, not an outage: say it loudly, keep answering 503.
                self._problem = str(exc)
                log.error("Kafka topics are not usable: %s", exc)
                delay = high
            except Exception as exc:
                self._problem = f"cannot reach Kafka at {self._bootstrap}: {_describe(exc)}"
                log.warning("%s; retrying in %.1f s", self._problem, delay)
            else:
                self._broken.clear()
                self._failing_since = None
                self._producer = producer
                self._connected.set()
                log.info("connected to Kafka at %s", self._bootstrap)
                delay = low
                await self._broken.wait()
                self._producer = None
                self._connected.clear()
                self._problem = "replacing an unusable Kafka producer; reconnecting"
            if producer is not None:
                self._spawn_retire(producer)
            await asyncio.sleep(delay)
            delay = min(delay * 2, high)

    def _spawn_retire(self, producer: AIOKafkaProducer) -> None:
        task = asyncio.create_task(self._retire(producer), name="ingest-kafka-retire")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, producer: AIOKafkaProducer) -> None:
        """Stop a producer, letting it deliver what it holds for a while (it may be a dead one)."""
        try:
            await asyncio.wait_for(producer.stop(), self._retire_timeout_s)
        except Exception as exc:
            log.warning("Kafka producer did not stop cleanly: %s", _describe(exc))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
