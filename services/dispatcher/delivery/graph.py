"""The Graph Send API over HTTP, and the retry policy around one delivery.

`GraphClient.post` makes exactly one HTTP call and classifies its answer (graph_errors). A failure
before the connection exists means the request never left: `unreachable`, safe to retry. Anything
after it — a timeout, a dropped connection, a 5xx — is ambiguous: the message may have been
delivered, so it is `unknown` and never retried (I5, R-OTN-4).

`Deliverer.deliver` waits for the page's rate-limit slot and a free connection, re-checks the
decision's validity just before every call (I6), and retries only the classes whose action says so
(definite pre-delivery rejections), with exponential backoff and a cap. A call is admitted to the
page's rate window only once it holds a connection, so it is sent when it is counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
import yarl

from services.dispatcher.delivery.ratelimit import PageRateLimiter
from windowgate.meta.graph_errors import GraphVerdict, classify, classify_transport
from windowgate.meta.send_api import GraphCall

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    """One call's classified answer, with Meta's HTTP status and JSON body when there was one."""

    verdict: GraphVerdict
    status: int | None = None
    body: dict[str, Any] | None = None


class Sender(Protocol):
    async def post(self, call: GraphCall, access_token: str) -> Answer: ...


class GraphClient:
    """One aiohttp session to `GRAPH_API_URL`; the page token as `Authorization: Bearer`."""

    def __init__(self, base_url: str, timeout_s: float, connections: int = 100) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 5.0))
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, yarl.URL] = {}
        self._headers: dict[str, dict[str, str]] = {}

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.connections, keepalive_timeout=10)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                auto_decompress=True,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, path: str) -> yarl.URL:
        url = self._urls.get(path)
        if url is None:  # built once per page: URL parsing is a real cost at thousands per second
            if len(self._urls) > 10_000:
                self._urls.clear()
            url = self._urls[path] = yarl.URL(self.base_url + path)
        return url

    def _auth(self, access_token: str) -> dict[str, str]:
        """The token travels in a header, never in the URL: URLs end up in errors and logs."""
        headers = self._headers.get(access_token)
        if headers is None:
            if len(self._headers) > 10_000:
                self._headers.clear()
            headers = self._headers[access_token] = {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {access_token}",
            }
        return headers

    async def post(self, call: GraphCall, access_token: str) -> Answer:
        if self._session is None:
            await self.start()
        assert self._session is not None
        try:
            async with self._session.post(
                self._url(call.path), data=orjson.dumps(call.body), headers=self._auth(access_token)
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            return Answer(classify_transport("connect", type(exc).__name__))
        except (TimeoutError, aiohttp.SocketTimeoutError):
            return Answer(classify_transport("timeout", "timed out"))
        except aiohttp.ClientError as exc:
            what = f"{type(exc).__name__}: {exc}".replace(access_token, "[token]")
            return Answer(classify_transport("broken", what))
        body: Any
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        return Answer(classify(status, body), status, body if isinstance(body, dict) else None)


@dataclass(frozen=True, slots=True)
class Delivery:
    """The final answer for one request (`answer`), how many calls it took, or why none was made."""

    answer: Answer | None
    calls: int
    skipped: str | None = None


Sleep = Callable[[float], Awaitable[None]]


class Deliverer:
    def __init__(
        self,
        sender: Sender,
        limiter: PageRateLimiter,
        *,
        max_retries: int,
        backoff_s: float,
        backoff_cap_s: float,
        cooldown_retry_s: float = 0.0,
        connections: int = 100,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.sender = sender
        self.slots = asyncio.Semaphore(connections)
        self.limiter = limiter
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.cooldown_retry_s = cooldown_retry_s
        self.sleep = sleep

    def backoff(self, retry: int) -> float:
        return float(min(self.backoff_s * 2 ** (retry - 1), self.backoff_cap_s))

    async def deliver(
        self,
        call: GraphCall,
        access_token: str,
        recheck: Callable[[], str | None],
        on_answer: Callable[[Answer], None] | None = None,
    ) -> Delivery:
        """Call until a final answer; `recheck()` returns why the send is no longer allowed."""
        calls = 0
        retries = 0
        cooled = False
        last: Answer | None = None
        while True:
            await self.limiter.pace(call.page_id, call.rate_class)
            # a free connection first, then the rate window: the call leaves at once when admitted
            async with self.slots:
                await self.limiter.admit_now(call.page_id, call.rate_class)
                why_not = recheck()
                if why_not is not None:
                    return Delivery(last, calls, why_not)
                answer = await self.sender.post(call, access_token)
            calls += 1
            last = answer
            if on_answer is not None:
                on_answer(answer)
            retry = answer.verdict.action.retry
            if retry == "backoff" and retries < self.max_retries:
                retries += 1
                delay = self.backoff(retries)
                log.info(
                    "graph call definitely rejected (%s); retry %d in %.2f s",
                    answer.verdict.error_class,
                    retries,
                    delay,
                )
                await self.sleep(delay)
                continue
            if retry == "cooldown" and self.cooldown_retry_s > 0 and not cooled:
                cooled = True
                await self.sleep(self.cooldown_retry_s)
                continue
            return Delivery(answer, calls)
