"""The window worker's HTTP server: queries answered by whichever worker owns the user.

A user's state lives only in the worker that owns its partition (I1: no second copy), so a
worker asked about a user it does not own forwards the request to the owner and relays the
answer (one hop: a forwarded request is answered or refused with 503, never forwarded again).
The owner is looked up in the partition assignment the group's leader shares with every worker
(`services.common.partitioned.CopartitionedAssignor`, `Backend.owner_of`).

`GET /v1/pages/{page_id}/reach` asks every worker for the per-partition counts of the partitions
it owns (`/v1/internal/...`) and sums them; partitions nobody could answer for are listed and the
answer says `complete: false`.

Routes: `GET /healthz`, `GET /metrics`, and under `/v1/` (bearer token, WINDOWGATE_API_TOKENS):
`pages/{page_id}/users/{user_id}`, `pages/{page_id}/reach`, `internal/pages/{page_id}/reach`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol, cast

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from schemas.broadcast import BroadcastSpec, spec_from_wire
from schemas.codec import SchemaError
from schemas.events import event_key
from schemas.state import PageState
from services.common.auth import bearer_middleware

log = logging.getLogger(__name__)

HOP_HEADER = "X-Windowgate-Forwarded"
SERVED_BY_HEADER = "X-Windowgate-Served-By"
FORWARD_TIMEOUT_S = 5.0
DRY_RUN_PATH = "/v1/internal/broadcasts/dry-run"


class Backend(Protocol):
    """What the HTTP layer needs from a worker (a fake in the unit tests)."""

    @property
    def self_url(self) -> str: ...

    @property
    def partitions(self) -> int: ...

    def ready(self) -> str | None:
        """None when queries can be answered; else why not (rebalancing, recovering)."""

    def owner_of(self, key: bytes) -> str | None: ...

    def partition_owners(self) -> Mapping[int, str]: ...

    def user_view(self, page_id: str, user_id: str) -> dict[str, Any]: ...

    def reach_partials(self, page_id: str) -> dict[int, dict[str, int]]: ...

    def page_state(self, page_id: str) -> PageState | None: ...

    def reach_view(
        self,
        page_id: str,
        partials: Mapping[int, Mapping[str, int]],
        errors: Mapping[str, str],
    ) -> dict[str, Any]: ...

    def metrics(self) -> tuple[bytes, str]: ...

    def dry_run_partials(self, spec: BroadcastSpec) -> dict[str, Any]:
        """A broadcast's dry run over the partitions this worker owns and has indexed:
        `{"audience", "by_mechanism", "refused", "partitions"}` (`broadcasts.DryRun.wire`)."""
        ...


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _unavailable(detail: str) -> web.Response:
    return _json({"error": "unavailable", "detail": detail}, 503, {"Retry-After": "1"})


class QueryApi:
    """The aiohttp application; `session` is used to reach the other workers."""

    def __init__(self, backend: Backend, tokens: tuple[str, ...]) -> None:
        self.backend = backend
        self.tokens = tokens
        self.session: aiohttp.ClientSession | None = None

    def application(self) -> web.Application:
        app = web.Application(middlewares=[cast(Middleware, bearer_middleware(self.tokens))])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/pages/{page_id}/users/{user_id}", self.user)
        app.router.add_get("/v1/pages/{page_id}/reach", self.reach)
        app.router.add_get("/v1/internal/pages/{page_id}/reach", self.reach_partials)
        app.router.add_post(DRY_RUN_PATH, self.dry_run)
        app.on_startup.append(self._open_session)
        app.on_cleanup.append(self._close_session)
        return app

    async def _open_session(self, _: web.Application) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S))

    async def _close_session(self, _: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def dry_run(self, request: web.Request) -> web.Response:
        return await DryRunApi(self).handle(request)

    async def healthz(self, request: web.Request) -> web.Response:
        why_not = self.backend.ready()
        body = {"status": "ok" if why_not is None else "starting", "detail": why_not}
        return _json(body, status=200 if why_not is None else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.backend.metrics()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def user(self, request: web.Request) -> web.Response:
        page_id = request.match_info["page_id"]
        user_id = request.match_info["user_id"]
        why_not = self.backend.ready()
        if why_not is not None:
            return _unavailable(why_not)
        owner = self.backend.owner_of(event_key(page_id, user_id).encode())
        me = self.backend.self_url
        if owner is None:
            return _unavailable("no worker owns this user's partition right now (rebalancing)")
        if owner == me:
            return _json(self.backend.user_view(page_id, user_id), headers={SERVED_BY_HEADER: me})
        if request.headers.get(HOP_HEADER):
            return _unavailable(f"this worker no longer owns the user; {owner} does")
        return await self._forward(owner, request)

    async def _forward(self, owner: str, request: web.Request) -> web.Response:
        assert self.session is not None
        headers = {HOP_HEADER: self.backend.self_url}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        try:
            async with self.session.get(f"{owner}{request.rel_url}", headers=headers) as answer:
                body = await answer.read()
                relayed = {SERVED_BY_HEADER: answer.headers.get(SERVED_BY_HEADER, owner)}
                if "Retry-After" in answer.headers:
                    relayed["Retry-After"] = answer.headers["Retry-After"]
                return web.Response(
                    body=body,
                    status=answer.status,
                    content_type=answer.content_type,
                    headers=relayed,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not reach the owner %s: %r", owner, exc)
            return _unavailable(f"the worker that owns this user ({owner}) did not answer")

    async def reach_partials(self, request: web.Request) -> web.Response:
        why_not = self.backend.ready()
        if why_not is not None:
            return _unavailable(why_not)
        partials = self.backend.reach_partials(request.match_info["page_id"])
        return _json({"partitions": {str(p): c for p, c in partials.items()}})

    async def reach(self, request: web.Request) -> web.Response:
        page_id = request.match_info["page_id"]
        why_not = self.backend.ready()
        if why_not is not None:
            return _unavailable(why_not)
        by_owner: dict[str, set[int]] = {}
        for partition, url in self.backend.partition_owners().items():
            by_owner.setdefault(url, set()).add(partition)
        owners = sorted(by_owner)
        answers = await asyncio.gather(
            *(self._partials_of(url, page_id, request) for url in owners)
        )
        partials: dict[int, dict[str, int]] = {}
        errors: dict[str, str] = {}
        for url, (counts, error) in zip(owners, answers, strict=True):
            if error is not None:
                errors[url] = error
            for partition in by_owner[url] & set(counts):  # only what the router says it owns
                partials[partition] = counts[partition]
        return _json(self.backend.reach_view(page_id, partials, errors))

    async def _partials_of(
        self, url: str, page_id: str, request: web.Request
    ) -> tuple[dict[int, dict[str, int]], str | None]:
        if url == self.backend.self_url:
            return self.backend.reach_partials(page_id), None
        assert self.session is not None
        headers = {HOP_HEADER: self.backend.self_url}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        try:
            async with self.session.get(
                f"{url}/v1/internal/pages/{page_id}/reach", headers=headers
            ) as answer:
                if answer.status != 200:
                    return {}, f"HTTP {answer.status}"
                data = orjson.loads(await answer.read())
            return {int(p): dict(c) for p, c in data["partitions"].items()}, None
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            return {}, f"{type(exc).__name__}: {exc}"


def _bad_request(field: str, detail: str) -> web.Response:
    return _json({"error": "invalid_request", "field": field, "detail": detail}, 400)


def _spec_of(body: bytes) -> BroadcastSpec:
    """The dry run's body: a BroadcastSpec's wire form (a `dry_run` flag, if the front passes the
    caller's body along, is allowed and ignored)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SchemaError("", f"the body is not JSON: {exc}") from exc
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "dry_run"}
    return spec_from_wire(data)


class DryRunApi:
    """`POST /v1/internal/broadcasts/dry-run`: what a broadcast would do now, over every partition.

    Scatter-gather like the reach: this worker answers for its partitions and asks every other
    owner for theirs (one hop: a forwarded request answers for its own partitions only). The answer
    sums them and names partitions nobody answered for (`complete: false`)."""

    def __init__(self, api: QueryApi) -> None:
        self.api = api

    async def handle(self, request: web.Request) -> web.Response:
        backend = self.api.backend
        why_not = backend.ready()
        if why_not is not None:
            return _unavailable(why_not)
        body = await request.read()
        try:
            spec = _spec_of(body)
        except SchemaError as exc:
            return _bad_request(exc.field, str(exc))
        if request.headers.get(HOP_HEADER):
            return _json(backend.dry_run_partials(spec))
        by_owner: dict[str, set[int]] = {}
        for partition, url in backend.partition_owners().items():
            by_owner.setdefault(url, set()).add(partition)
        owners = sorted(by_owner)
        answers = await asyncio.gather(*(self._part_of(url, spec, body, request) for url in owners))
        total: dict[str, Any] = {"audience": 0, "by_mechanism": {}, "refused": {}}
        covered: set[int] = set()
        errors: dict[str, str] = {}
        for url, (part, error) in zip(owners, answers, strict=True):
            if error is not None or part is None:
                errors[url] = error or "no answer"
                continue
            covered |= {int(p) for p in part.get("partitions", [])} & by_owner[url]
            total["audience"] += int(part.get("audience", 0))
            for name in ("by_mechanism", "refused"):
                for label, n in dict(part.get(name, {})).items():
                    total[name][label] = total[name].get(label, 0) + int(n)
        missing = sorted(set(range(backend.partitions)) - covered)
        total.update(
            broadcast_id=spec.broadcast_id,
            page_id=spec.page_id,
            complete=not missing,
            missing_partitions=missing,
            errors=errors,
        )
        return _json(total)

    async def _part_of(
        self, url: str, spec: BroadcastSpec, body: bytes, request: web.Request
    ) -> tuple[dict[str, Any] | None, str | None]:
        backend = self.api.backend
        if url == backend.self_url:
            return backend.dry_run_partials(spec), None
        session = self.api.session
        assert session is not None
        headers = {HOP_HEADER: backend.self_url, "Content-Type": "application/json"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        try:
            async with session.post(f"{url}{DRY_RUN_PATH}", data=body, headers=headers) as answer:
                if answer.status != 200:
                    return None, f"HTTP {answer.status}"
                data = orjson.loads(await answer.read())
            return (data if isinstance(data, dict) else None), None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"


class WebServer:
    """The query server: started before the worker joins its group (answering 503 until ready)."""

    def __init__(self, api: QueryApi, host: str, port: int) -> None:
        self.api = api
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.api.application(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("window queries listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
