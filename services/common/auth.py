"""Bearer-token check for the /v1 endpoints (WINDOWGATE_API_TOKENS), in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_ok(header: str | None, tokens: Iterable[str]) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    given = header[len("Bearer ") :].strip().encode()
    ok = False
    for token in tokens:
        ok |= hmac.compare_digest(given, token.encode())  # no early exit: timing says nothing
    return ok


def bearer_middleware(tokens: tuple[str, ...], prefix: str = "/v1/") -> Callable[..., object]:
    """401 for a missing or wrong token on paths under `prefix`; no tokens configured → 401 too."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(prefix) and not bearer_ok(
            request.headers.get("Authorization"), tokens
        ):
            return web.json_response(
                {"error": "unauthorized", "detail": "send Authorization: Bearer <token>"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return middleware
