"""A local stand-in for Meta's Graph Send API: records every call, answers like Meta (errors too).

For tests, benchmarks and `make run`; nothing leaves the machine.

    standin = GraphStandIn(page_tokens={"682498171943165": "page-token"}, rate_per_page=300)
    base_url = await standin.start()            # http://127.0.0.1:<free port>
    standin.script(recipient="1254459154682919", answer="error-outside-window")
    ...                                         # point GRAPH_API_URL at base_url
    standin.calls                               # every call, with its answer
    standin.double_used_tokens()                # tokens Meta would have delivered twice (I4)
    await standin.stop()

    python -m devtools.graph_standin --port 8090 [--pages pages.json] [--rate 300]
    GET /_standin/stats                         # counts, double uses, busiest second per page
    standin.uploads                             # Attachment Upload API calls: files received

What it checks, like Meta, for a sender action (`sender_action` typing_on / typing_off /
mark_seen / react / unreact, no message): a recipient id; it answers `{"recipient_id"}` only.
`POST /{v}/{node}/message_attachments` (multipart `message` + `filedata`) records the file and
answers `{"attachment_id"}`; a message whose `payload.attachment_id` it never issued is a 100.

What it checks, like Meta: the page access token (`access_token` query/form/body or a Bearer
header; wrong → 190), `recipient`, `messaging_type` (required for an `id` recipient; MESSAGE_TAG
needs `tag`), `message` (text under 2,000 characters), a one-time token used at most once, and a
per-page rate (at most `rate_per_page` calls in any sliding second, else 613/2534040).

Scripted answers (`script`) win over all of that: a fixture of shared/fixtures/graph-responses by
name, any (status, body), or a misbehaviour: `timeout` (delivered at once, success answered after
`delay_s`: too late for the caller), `disconnect` (drop the connection after reading the body),
`server_error` (HTTP 500, code 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR_ENV = "WINDOWGATE_SHARED_DIR"

PRE_DELIVERY = frozenset({"rate_limited", "auth"})
"""Answers that mean Meta rejected the call before delivering anything (I4 counts no use)."""


def graph_fixture(name: str) -> dict[str, Any]:
    """A Graph answer from shared/fixtures/graph-responses (`.json` optional)."""
    configured = os.environ.get(SHARED_DIR_ENV)
    shared = Path(configured).expanduser() if configured else REPO_ROOT.parent / "shared"
    path = (
        shared
        / "fixtures"
        / "graph-responses"
        / (name if name.endswith(".json") else name + ".json")
    )
    data = orjson.loads(path.read_bytes())
    assert isinstance(data, dict)
    return data


def error_body(code: int, message: str, subcode: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = "StandIn" + str(code)
    return {"error": error}


@dataclass
class Script:
    """A scripted answer for calls that match (`recipient` id/token, or `text` in message.text)."""

    answer: str | tuple[int, dict[str, Any]]
    recipient: str | None = None
    text: str | None = None
    times: int | None = None  # None: every matching call
    delay_s: float = 0.0
    used: int = 0

    def matches(self, recipient: str | None, text: str | None) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.recipient is not None and self.recipient != recipient:
            return False
        return self.text is None or (text is not None and self.text in text)


@dataclass
class Call:
    """One call as the stand-in saw it, and what it answered."""

    at: float
    path: str
    page_id: str | None
    body: dict[str, Any]
    status: int
    answer: dict[str, Any] | None
    outcome: str  # "ok", an error class ("window_closed", "rate_limited", ...) or a misbehaviour

    @property
    def recipient(self) -> dict[str, Any]:
        r = self.body.get("recipient")
        if isinstance(r, dict):
            return r
        data = self.body.get("messenger_delivery_data")
        return (
            {"subscription_token": data.get("subscription_token")} if isinstance(data, dict) else {}
        )

    @property
    def token(self) -> str | None:
        r = self.recipient
        for key in ("one_time_notif_token", "notification_messages_token", "subscription_token"):
            if isinstance(r.get(key), str):
                return str(r[key])
        return None

    @property
    def text(self) -> str | None:
        message = self.body.get("message")
        text = message.get("text") if isinstance(message, dict) else None
        return text if isinstance(text, str) else None

    @property
    def delivered_maybe(self) -> bool:
        """Could Meta have delivered this call? Everything but a pre-delivery rejection."""
        return self.outcome not in PRE_DELIVERY


@dataclass
class Upload:
    """One Attachment Upload API call: the file as received."""

    page_id: str
    attachment_type: str | None
    filename: str | None
    content_type: str | None
    data: bytes
    attachment_id: str


UPLOAD_BODY_LIMIT = 26 * 1024 * 1024
"""Meta takes attachments up to 25 MB; aiohttp's default cap (1 MB) would refuse them."""

SENDER_ACTIONS = frozenset({"typing_on", "typing_off", "mark_seen", "react", "unreact"})

_CLASS_OF: dict[tuple[Any, Any], str] = {
    (10, 2018278): "window_closed",
    (551, 1545041): "user_unavailable",
    (613, 2534040): "rate_limited",
    (100, None): "invalid",
}


def _class_of(body: dict[str, Any]) -> str:
    error = body.get("error")
    if not isinstance(error, dict):
        return "ok"
    key = (error.get("code"), error.get("error_subcode"))
    return _CLASS_OF.get(key) or _CLASS_OF.get((error.get("code"), None)) or f"error_{key[0]}"


class GraphStandIn:
    def __init__(
        self,
        page_tokens: Mapping[str, str] | None = None,
        rate_per_page: float | None = None,
    ) -> None:
        self.page_tokens = dict(page_tokens or {})
        self.rate = rate_per_page
        self.calls: list[Call] = []
        self.uploads: list[Upload] = []
        self.scripts: list[Script] = []
        self._used_otn: set[str] = set()
        self._accepted: dict[str, deque[float]] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # ---- configuration --------------------------------------------------------------------------

    def script(
        self,
        answer: str | tuple[int, dict[str, Any]],
        *,
        recipient: str | None = None,
        text: str | None = None,
        times: int | None = None,
        delay_s: float = 0.0,
    ) -> Script:
        entry = Script(answer, recipient, text, times, delay_s)
        self.scripts.append(entry)
        return entry

    # ---- what happened ----------------------------------------------------------------------

    def token_uses(self) -> Counter[str]:
        """Calls per token that Meta may have delivered (rate-limit and auth rejections aside)."""
        return Counter(c.token for c in self.calls if c.token and c.delivered_maybe)

    def double_used_tokens(self) -> dict[str, int]:
        return {t: n for t, n in self.token_uses().items() if n > 1}

    def text_uses(self) -> Counter[str]:
        return Counter(c.text for c in self.calls if c.text and c.delivered_maybe)

    def calls_for(self, text: str) -> list[Call]:
        return [c for c in self.calls if c.text is not None and text in c.text]

    def calls_to(self, recipient: str) -> list[Call]:
        """Every call addressed to this user id (sender actions included)."""
        return [c for c in self.calls if c.recipient.get("id") == recipient]

    def busiest_second(self) -> dict[str, int]:
        """Per page, the most calls it answered (any outcome) within one sliding second."""
        by_page: dict[str, list[float]] = {}
        for c in self.calls:
            by_page.setdefault(c.page_id or "?", []).append(c.at)
        busiest: dict[str, int] = {}
        for page, times in by_page.items():
            times.sort()
            start = most = 0
            for end, t in enumerate(times):
                while t - times[start] >= 1.0:
                    start += 1
                most = max(most, end - start + 1)
            busiest[page] = most
        return busiest

    def stats(self) -> dict[str, Any]:
        return {
            "calls": len(self.calls),
            "outcomes": dict(Counter(c.outcome for c in self.calls)),
            "double_used_tokens": len(self.double_used_tokens()),
            "texts_sent_twice": sum(1 for n in self.text_uses().values() if n > 1),
            "busiest_second": self.busiest_second(),
            "first_at": min((c.at for c in self.calls), default=None),
            "last_at": max((c.at for c in self.calls), default=None),
        }

    # ---- the app ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=UPLOAD_BODY_LIMIT)
        app.router.add_post("/{version}/{node}/messages", self.handle)
        app.router.add_post("/{version}/{node}/message_attachments", self.handle_upload)
        app.router.add_get("/_standin/stats", self.handle_stats)
        return app

    async def handle_stats(self, request: web.Request) -> web.Response:
        """What happened so far, for a stand-in running in another process (bench, make run)."""
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.base_url = f"http://{host}:{bound[1]}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _page_for(self, node: str, token: str | None) -> str | None:
        if not self.page_tokens:
            return node if node != "me" and not node.startswith("act_") else "any"
        for page_id, page_token in self.page_tokens.items():
            if token == page_token and (node in ("me", page_id) or node.startswith("act_")):
                return page_id
        return None

    def _over_rate(self, page_id: str) -> bool:
        """More than `rate` calls of this page within the last second (sliding)?"""
        if self.rate is None:
            return False
        now = time.monotonic()
        accepted = self._accepted.setdefault(page_id, deque())
        while accepted and accepted[0] <= now - 1.0:
            accepted.popleft()
        if len(accepted) >= self.rate:
            return True
        accepted.append(now)
        return False

    @staticmethod
    async def _read(request: web.Request) -> tuple[dict[str, Any], str | None]:
        token = request.query.get("access_token")
        body: dict[str, Any] = {}
        if request.content_type == "application/x-www-form-urlencoded":
            for name, value in (await request.post()).items():
                if isinstance(value, str):
                    body[name] = orjson.loads(value) if name in ("recipient", "message") else value
        else:
            raw = await request.read()
            data = orjson.loads(raw) if raw else {}
            body = data if isinstance(data, dict) else {}
        token = token or body.get("access_token")
        auth = request.headers.get("Authorization", "")
        if not token and auth.startswith("Bearer "):
            token = auth[7:]
        return body, token if isinstance(token, str) else None

    def _validate(self, node: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if node.startswith("act_"):
            data = body.get("messenger_delivery_data")
            if not isinstance(data, dict) or not data.get("subscription_token"):
                return error_body(
                    100, "(#100) messenger_delivery_data.subscription_token is required"
                )
            if not body.get("message_id"):
                return error_body(100, "(#100) Param message_id is required", 2300001)
            return None
        recipient = body.get("recipient")
        message = body.get("message")
        if not isinstance(recipient, dict) or not recipient:
            return error_body(100, "(#100) param recipient must be non-empty.")
        if "sender_action" in body:
            if body["sender_action"] not in SENDER_ACTIONS or message is not None:
                return error_body(100, "(#100) Param sender_action is invalid")
            if "id" not in recipient:
                return error_body(100, "(#100) a sender_action needs recipient.id")
            return None
        if not isinstance(message, dict) or not message:
            return error_body(100, "(#100) Must send either message or state")
        text = message.get("text")
        if isinstance(text, str) and len(text) >= 2000:
            return error_body(100, "(#100) Length of param message[text] must be less than 2000")
        if "id" in recipient:
            kind = body.get("messaging_type")
            if kind not in ("RESPONSE", "UPDATE", "MESSAGE_TAG", "UTILITY"):
                return error_body(
                    100,
                    "(#100) Param messaging_type must be one of RESPONSE, UPDATE, MESSAGE_TAG, "
                    "UTILITY",
                )
            if kind == "MESSAGE_TAG" and not body.get("tag"):
                return error_body(
                    100, "(#100) Param tag is required with messaging_type MESSAGE_TAG"
                )
        attachment = message.get("attachment")
        payload = attachment.get("payload") if isinstance(attachment, dict) else None
        uploaded = payload.get("attachment_id") if isinstance(payload, dict) else None
        if uploaded is not None and uploaded not in {u.attachment_id for u in self.uploads}:
            return error_body(100, "(#100) Invalid attachment_id")
        otn = recipient.get("one_time_notif_token")
        if isinstance(otn, str) and otn in self._used_otn:
            return error_body(100, "(#100) The one-time notification token has been used")
        return None

    def _scripted(self, body: dict[str, Any]) -> Script | None:
        probe = Call(0, "", None, body, 0, None, "")
        recipient = probe.recipient
        who = probe.token or (str(recipient["id"]) if "id" in recipient else None)
        for entry in self.scripts:
            if entry.matches(who, probe.text):
                entry.used += 1
                return entry
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        node = request.match_info["node"]
        try:
            body, token = await self._read(request)
        except (orjson.JSONDecodeError, ValueError):
            return self._answer(
                request, node, None, {}, 400, error_body(100, "(#100) Invalid JSON")
            )
        page_id = self._page_for(node, token)
        if page_id is None:
            return self._answer(
                request, node, None, body, 400, error_body(190, "Invalid OAuth access token.")
            )
        entry = self._scripted(body)
        if entry is not None:
            return await self._play(request, node, page_id, body, entry)
        if self._over_rate(page_id):
            return self._answer(
                request, node, page_id, body, 400, graph_fixture("error-rate-limit")
            )
        invalid = self._validate(node, body)
        if invalid is not None:
            return self._answer(request, node, page_id, body, 400, invalid)
        return self._success(request, node, page_id, body)

    def _success(
        self, request: web.Request, node: str, page_id: str, body: dict[str, Any]
    ) -> web.Response:
        recipient = body.get("recipient") if isinstance(body.get("recipient"), dict) else {}
        assert isinstance(recipient, dict)
        otn = recipient.get("one_time_notif_token")
        if isinstance(otn, str):
            self._used_otn.add(otn)
        answer = {"recipient_id": str(recipient.get("id") or f"psid-{next(self._ids)}")}
        if "sender_action" not in body:  # Meta answers a sender action without a message_id
            answer["message_id"] = f"m_standin_{next(self._ids)}"
        return self._answer(request, node, page_id, body, 200, answer)

    async def handle_upload(self, request: web.Request) -> web.Response:
        """The Attachment Upload API: multipart `message` (its attachment type) and `filedata`."""
        node = request.match_info["node"]
        auth = request.headers.get("Authorization", "")
        token = request.query.get("access_token") or (auth[7:] if auth[:7] == "Bearer " else None)
        page_id = self._page_for(node, token)
        if page_id is None:
            return _json(400, error_body(190, "Invalid OAuth access token."))
        if request.content_type == "multipart/form-data":
            form = await request.post()
            raw, filedata = form.get("message"), form.get("filedata")
            if not isinstance(raw, str) or not isinstance(filedata, web.FileField):
                return _json(400, error_body(100, "(#100) Upload attachment failure."))
            message = orjson.loads(raw)
            name, ctype, data = filedata.filename, filedata.content_type, filedata.file.read()
        else:  # an upload by URL: {"message": {"attachment": {"type", "payload": {"url"}}}}
            body = orjson.loads(await request.read() or b"{}")
            message = body.get("message") if isinstance(body, dict) else None
            name, ctype, data = None, None, b""
        attachment = message.get("attachment") if isinstance(message, dict) else None
        kind = attachment.get("type") if isinstance(attachment, dict) else None
        if not isinstance(kind, str):
            return _json(400, error_body(100, "(#100) Upload attachment failure."))
        upload = Upload(page_id, kind, name, ctype, data, str(next(self._ids) + 10**15))
        self.uploads.append(upload)
        return _json(200, {"attachment_id": upload.attachment_id})

    async def _play(
        self, request: web.Request, node: str, page_id: str, body: dict[str, Any], entry: Script
    ) -> web.StreamResponse:
        answer = entry.answer
        if answer == "timeout":  # Meta delivers at once, the answer comes too late
            response = self._success(request, node, page_id, body)
            await asyncio.sleep(entry.delay_s)
            return response
        if entry.delay_s:
            await asyncio.sleep(entry.delay_s)
        if answer == "disconnect":
            self._record(request, node, page_id, body, 0, None, "disconnect")
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        if answer == "server_error":
            return self._answer(
                request,
                node,
                page_id,
                body,
                500,
                error_body(2, "An unexpected error has occurred. Please retry your request later."),
            )
        if answer == "success":
            return self._success(request, node, page_id, body)
        if isinstance(answer, str):
            return self._answer(request, node, page_id, body, 400, graph_fixture(answer))
        status, payload = answer
        return self._answer(request, node, page_id, body, status, payload)

    def _record(
        self,
        request: web.Request,
        node: str,
        page_id: str | None,
        body: dict[str, Any],
        status: int,
        answer: dict[str, Any] | None,
        outcome: str,
    ) -> None:
        self.calls.append(
            Call(time.monotonic(), request.path, page_id, body, status, answer, outcome)
        )

    def _answer(
        self,
        request: web.Request,
        node: str,
        page_id: str | None,
        body: dict[str, Any],
        status: int,
        answer: dict[str, Any],
    ) -> web.Response:
        outcome = "ok" if status == 200 else _class_of(answer)
        if outcome == "error_190":
            outcome = "auth"
        self._record(request, node, page_id, body, status, answer, outcome)
        return web.Response(
            body=orjson.dumps(answer), status=status, content_type="application/json"
        )


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def page_tokens(pages_file: str) -> dict[str, str]:
    """page_id → access_token from a pages file (DESIGN.md §4.2)."""
    data = orjson.loads(Path(pages_file).read_bytes())
    return {
        p: str(e["access_token"]) for p, e in data.get("pages", {}).items() if e.get("access_token")
    }


async def _serve(port: int, tokens: dict[str, str], rate: float | None) -> None:
    standin = GraphStandIn(tokens, rate)
    url = await standin.start("127.0.0.1", port)
    print(
        f"graph stand-in on {url} ({len(tokens)} page tokens, "
        f"rate {rate or 'unlimited'}/s per page)",
        flush=True,
    )
    seen = 0
    try:
        while True:
            await asyncio.sleep(5)
            if len(standin.calls) != seen:
                seen = len(standin.calls)
                outcomes = Counter(c.outcome for c in standin.calls)
                print(
                    f"graph stand-in: {seen} calls {dict(outcomes)}; "
                    f"double-used tokens: {len(standin.double_used_tokens())}",
                    flush=True,
                )
    finally:
        await standin.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.graph_standin", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--pages", help="pages file: only these page tokens are accepted")
    parser.add_argument("--rate", type=float, default=None, help="calls/s per page (Meta: 300)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, page_tokens(args.pages) if args.pages else {}, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
