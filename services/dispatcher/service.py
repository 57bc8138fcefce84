"""The dispatcher assembled: delivery worker and HTTP API in one process (`DISPATCHER_ROLE`).

`python -m services.dispatcher` runs `main()`; tests and the benchmark build a `DispatcherService`
in-process with their own `Sender` (or the real `GraphClient` against a stand-in).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from types import TracebackType
from typing import Self

from aiohttp import web

from schemas.events import encode_event
from schemas.request import SendRequest, encode_request
from schemas.topics import Topics
from services.common.kafka import durable_producer, fencing_producer
from services.common.runtime import now_ms
from services.common.topics import ensure_topics
from services.dispatcher.config import DispatcherConfig
from services.dispatcher.credentials import PageTokens
from services.dispatcher.delivery.consumer import Dispatcher
from services.dispatcher.delivery.dispatchlog import ensure_log_topic
from services.dispatcher.delivery.graph import Deliverer, GraphClient, Sender
from services.dispatcher.delivery.ratelimit import PageRateLimiter
from services.dispatcher.delivery.worker import Deps
from services.dispatcher.front.api import DispatcherApi
from services.dispatcher.front.broadcasts import (
    BroadcastBook,
    BroadcastFront,
    CommandWriter,
    WindowDryRun,
    ensure_broadcast_topics,
)
from services.dispatcher.front.feeds import OutcomeWatcher, TokenIndex, comment_horizon
from services.dispatcher.front.labels import LabelEvent
from services.dispatcher.front.proxy_http import AttachmentUploader
from windowgate.client import DecisionWatcher
from windowgate.core.rulebook import RuleBook
from windowgate.core.timeconst import HOUR_MS

log = logging.getLogger(__name__)


class DispatcherService:
    def __init__(
        self,
        config: DispatcherConfig,
        rules: RuleBook,
        sender: Sender | None = None,
        host: str = "0.0.0.0",
        page_tokens: PageTokens | None = None,
    ) -> None:
        self.config = config
        self.rules = rules
        self.page_tokens: PageTokens = page_tokens or {}
        self.topics = Topics(config.prefix)
        self.host = host
        self.graph = GraphClient(config.graph_url, config.graph_timeout_s, config.graph_connections)
        limiter = PageRateLimiter({"text": config.rate_text, "media": config.rate_media})
        self.deliverer = Deliverer(
            sender or self.graph,
            limiter,
            max_retries=config.max_retries,
            backoff_s=config.backoff_s,
            backoff_cap_s=config.backoff_cap_s,
            cooldown_retry_s=config.cooldown_retry_s,
            connections=config.graph_connections,
        )
        self.dispatcher: Dispatcher | None = None
        self.api: DispatcherApi | None = None
        self.port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        config = self.config
        await ensure_topics(config.bootstrap, self.topics, config.partitions)
        await ensure_log_topic(
            config.bootstrap,
            config.dispatch_log,
            config.partitions,
            config.log_retention_h * HOUR_MS,
        )
        stack = self._stack
        if config.role in ("all", "worker"):
            await self.graph.start()
            stack.push_async_callback(self.graph.close)
            dispatcher = self.dispatcher = Dispatcher(
                Deps(config, self.topics, self.rules, self.deliverer, page_tokens=self.page_tokens)
            )
            await dispatcher.start()
            stack.push_async_callback(dispatcher.stop)
            self._tasks.append(asyncio.create_task(dispatcher.run(), name="dispatcher"))
        if config.role in ("all", "api"):
            await self._start_api(stack)

    async def _start_api(self, stack: contextlib.AsyncExitStack) -> None:
        config = self.config
        backfill = max(config.recent // max(config.partitions, 1), 1)
        decisions = DecisionWatcher(config.bootstrap, self.topics, config.recent, backfill)
        outcomes = OutcomeWatcher(config.bootstrap, config.dispatch_log, config.recent, backfill)
        tokens = (
            TokenIndex(config.bootstrap, self.topics.events, comment_horizon(self.rules, now_ms()))
            if config.token_index
            else None
        )
        for tail in (decisions, outcomes, tokens):
            if tail is not None:
                await tail.start()
                stack.push_async_callback(tail.stop)
        producer = durable_producer(config.bootstrap)
        await producer.start()
        stack.push_async_callback(producer.stop)
        requests_topic = self.topics.send_requests

        async def publish(request: SendRequest) -> None:
            await producer.send_and_wait(
                requests_topic, encode_request(request), key=request.key.encode()
            )

        events_topic = self.topics.events

        async def publish_event(event: LabelEvent) -> None:
            await producer.send_and_wait(events_topic, encode_event(event), key=event.key.encode())

        dispatcher = self.dispatcher
        uploader = AttachmentUploader(
            config.graph_url, config.graph_version, config.graph_timeout_s
        )
        stack.push_async_callback(uploader.close)
        broadcasts = await self._start_broadcasts(stack)
        self.api = DispatcherApi(
            rules=self.rules,
            decisions=decisions,
            outcomes=outcomes,
            tokens=tokens,
            publish=publish,
            clock=now_ms,
            api_tokens=config.api_tokens,
            wait_s=config.wait_s,
            outcome_wait_s=config.outcome_wait_s,
            ready=(lambda: dispatcher.ready()) if dispatcher is not None else (lambda: True),
            publish_event=publish_event,
            uploader=uploader,
            broadcasts=broadcasts,
            page_tokens=self.page_tokens,
        )
        runner = web.AppRunner(self.api.app(), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, self.host, config.port)
        await site.start()
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else config.port
        log.info("dispatcher HTTP API on %s:%s", self.host, self.port)

    async def _start_broadcasts(self, stack: contextlib.AsyncExitStack) -> BroadcastFront:
        """The broadcast routes' parts: both topics tailed from the start, a transactional
        producer of its own (one id per process: API processes never fence each other), and the
        window's dry run."""
        config = self.config
        await ensure_broadcast_topics(config.bootstrap, self.topics, config.partitions)
        book = BroadcastBook(config.bootstrap, self.topics)
        await book.start()
        stack.push_async_callback(book.stop)
        instance = config.instance_id or uuid.uuid4().hex[:12]
        transactional_id = f"{config.group}-broadcasts-{instance}"
        writer = CommandWriter(
            lambda: fencing_producer(config.bootstrap, transactional_id),
            self.topics.broadcast_commands,
        )
        stack.push_async_callback(writer.close)
        dry_run = WindowDryRun(
            config.window_url, config.api_tokens[0] if config.api_tokens else None, config.wait_s
        )
        stack.push_async_callback(dry_run.close)
        rules = self.rules
        return BroadcastFront(
            book=book,
            write=writer,
            dry_run=dry_run,
            pages=lambda: rules.pages,
            partitions=config.partitions,
            clock=now_ms,
            wait_s=config.wait_s,
        )

    async def wait(self) -> None:
        """Until a background task ends (it should not: that is a failure worth surfacing)."""
        if self._tasks:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        else:
            await asyncio.Event().wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self._stack.aclose()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve(config: DispatcherConfig, rules: RuleBook, page_tokens: PageTokens) -> None:
    """Run until SIGTERM / SIGINT, then stop cleanly (calls in flight finish and are recorded)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with DispatcherService(config, rules, page_tokens=page_tokens) as service:
        waiter = asyncio.create_task(service.wait())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiter, stopper):
            if task not in done:
                task.cancel()
        if waiter in done:
            waiter.result()
    log.info("dispatcher stopped")
