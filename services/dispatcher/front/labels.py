"""`PUT` / `DELETE /v1/pages/{page_id}/users/{user_id}/labels/{label}` (DESIGN.md §4.6).

A label is event-sourced like every other fact: the route publishes a `LabelAdded` /
`LabelRemoved` event (source `api`, timestamp now) to `<prefix>events`, keyed by the user, with
acks=all, and answers once the broker has it. The window worker that owns the user folds it (the
single writer, I1); the answer means "accepted into the log", and the user query shows the label
as soon as the window has folded it. Labels are a set, so a PUT repeated is one label and a
DELETE of a label the user does not have changes nothing: both are safe to retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from schemas.events import LabelAdded, LabelRemoved, event_key
from windowgate.core.labels import label_problem
from windowgate.core.rulebook import RuleBook

log = logging.getLogger(__name__)

USER_ID_MAX = 256
"""Longer than any id Meta issues (page-scoped ids are ~16 digits), short enough for a key."""

LabelEvent = LabelAdded | LabelRemoved
PublishEvent = Callable[[LabelEvent], Awaitable[None]]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _invalid(field: str, detail: str, status: int = 400) -> web.Response:
    error = "not_found" if status == 404 else "invalid_request"
    return _json({"error": error, "field": field, "detail": detail}, status)


class LabelRoutes:
    """The two label routes; `publish` writes one event to `<prefix>events` (acks=all)."""

    def __init__(
        self,
        *,
        rules: RuleBook,
        publish: PublishEvent,
        clock: Callable[[], int],
        wait_s: float,
        retry_after: str,
    ) -> None:
        self.rules = rules
        self.publish = publish
        self.clock = clock
        self.wait_s = wait_s
        self.retry_after = retry_after

    async def put(self, request: web.Request) -> web.Response:
        return await self._change(request, add=True)

    async def delete(self, request: web.Request) -> web.Response:
        return await self._change(request, add=False)

    def _problem(self, page_id: str, user_id: str, label: str) -> web.Response | None:
        """400 naming the bad field, or 404 for a page the pages file does not list (the
        dispatcher could not message its users anyway: it has no token for it)."""
        problem = label_problem(label)
        if problem is not None:
            return _invalid("label", f"label {problem}")
        if len(user_id) > USER_ID_MAX or not user_id.isprintable() or ":" in user_id:
            return _invalid(
                "user_id", f"user_id must be printable, without ':', at most {USER_ID_MAX} long"
            )
        if page_id not in self.rules.pages:
            return _invalid(
                "page_id", f"page {page_id!r} is not in the pages file (WINDOWGATE_PAGES)", 404
            )
        return None

    async def _change(self, request: web.Request, add: bool) -> web.Response:
        info = request.match_info
        page_id, user_id, label = info["page_id"], info["user_id"], info["label"]
        refused = self._problem(page_id, user_id, label)
        if refused is not None:
            return refused
        now = self.clock()
        kind = LabelAdded if add else LabelRemoved
        event = kind(
            page_id=page_id,
            user_id=user_id,
            timestamp=now,
            dedup_key=f"{kind.KIND}:api:{label}:{now}",
            label=label,
            source="api",
        )
        try:
            # a producer waits (and retries) for a broker that is down: answer within the wait
            await asyncio.wait_for(self.publish(event), self.wait_s)
        except Exception as exc:  # TimeoutError or the producer's own: not in the log
            log.warning("could not publish %s for %s: %r", kind.KIND, event.key, exc)
            return _json(
                {
                    "error": "unavailable",
                    "detail": f"the label change was not accepted ({exc!r}); retry after "
                    f"{self.retry_after} s (retrying is safe)",
                },
                503,
                {"Retry-After": self.retry_after},
            )
        user = f"/v1/pages/{page_id}/users/{user_id}"
        return _json(
            {
                "page_id": page_id,
                "user_id": user_id,
                "label": label,
                "action": "added" if add else "removed",
                "source": "api",
                "timestamp": now,
                "status": "accepted",
                "key": event_key(page_id, user_id),
                "detail": "accepted into the events log; the window service folds it into the "
                f"user's labels, shown by GET {user} (window service)",
            }
        )
