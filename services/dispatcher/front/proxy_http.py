"""The Graph proxy's HTTP edge: every request shape Graph accepts in, only Graph-shaped JSON out.

- Bodies: JSON, form-encoded (Meta's curl samples), multipart with `filedata` (an upload), and
  parameters in the query string; a body's parameter wins over the query string's.
- Limits: JSON and form bodies up to `JSON_LIMIT`; multipart up to Meta's attachment limit
  (`UPLOAD_LIMIT`) plus `FORM_OVERHEAD` for its other fields. Over it: a Graph-shaped 413 on the
  proxy routes, windowgate's JSON 413 on `/v1` (`body_limits`), never aiohttp's plain text.
- Uploads: the file goes to Graph's Attachment Upload API (`AttachmentUploader`), not through
  Kafka; the message is then decided and sent with `payload.attachment_id`. An upload messages no
  one, so uploading before the decision sends nothing the window would refuse.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl

import aiohttp
import orjson
from aiohttp import web

from services.common.http import LazySession
from windowgate.meta.proxy import ProxyError, graph_params, meta_error, proxy_error, too_large

log = logging.getLogger(__name__)

UPLOAD_LIMIT = 25 * 1024 * 1024
"""Meta's attachment size limit (25 MB)."""
FORM_OVERHEAD = 1024 * 1024
"""The multipart body's other fields (recipient, message, ...) beside the file."""
JSON_LIMIT = 1024 * 1024
"""JSON and form bodies: a Send API body is a few kilobytes; 1 MB is generous."""
CLIENT_MAX_SIZE = UPLOAD_LIMIT + FORM_OVERHEAD
"""aiohttp's own cap (`client_max_size`); `body_limits` applies the tighter one per request."""

ATTACHMENT_TYPES = frozenset({"image", "audio", "video", "file"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BodyTooLarge(Exception):
    def __init__(self, size: int | None, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"body over {limit} bytes")


class GraphAnswered(Exception):
    """Graph itself answered a step before the send (an upload): hand its answer back."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(f"graph answered {status}")


def is_proxy_path(path: str) -> bool:
    return not path.startswith("/v1/") and path not in ("/healthz", "/metrics")


def is_multipart(request: web.Request) -> bool:
    return request.content_type == "multipart/form-data"


def body_limit(request: web.Request) -> int:
    if is_multipart(request) and is_proxy_path(request.path):
        return CLIENT_MAX_SIZE
    return JSON_LIMIT


def _graph_json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _trace() -> str:
    return f"windowgate-{uuid.uuid4().hex[:12]}"


def _too_large_answer(request: web.Request, size: int | None, limit: int) -> web.Response:
    what = "an upload" if is_multipart(request) else "a JSON or form body"
    if is_proxy_path(request.path):
        return _graph_json(proxy_error(too_large(size, limit, what), _trace()), 413)
    detail = f"the request body is over {limit} bytes"
    return _graph_json({"error": "too_large", "detail": detail}, 413)


@web.middleware
async def body_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Size limits per kind of body, and Graph-shaped JSON for every error of a proxy route
    (404, 405, 413 included), so an SDK that always calls `.json()` reads an error."""
    limit = body_limit(request)
    size = request.content_length
    if size is not None and size > limit:
        return _too_large_answer(request, size, limit)
    try:
        return await handler(request)
    except BodyTooLarge as exc:
        return _too_large_answer(request, exc.size, exc.limit)
    except web.HTTPRequestEntityTooLarge:
        return _too_large_answer(request, None, limit)
    except web.HTTPException as exc:
        if not is_proxy_path(request.path) or exc.status < 400:
            raise
        code = 100 if exc.status < 500 else 2
        message = f"(#{code}) {exc.reason}: {request.method} {request.path}"
        return _graph_json(meta_error(code, None, message, _trace()), exc.status)


async def read_capped(request: web.Request, limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as it passes `limit` (chunked bodies too)."""
    buffer = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        buffer += chunk
        if len(buffer) > limit:
            raise BodyTooLarge(None, limit)
    return bytes(buffer)


async def read_meta_body(request: web.Request) -> tuple[dict[str, Any], web.FileField | None]:
    """Meta's Send API parameters from the query string and the body, and an uploaded file."""
    query = {k: v for k, v in request.query.items() if isinstance(v, str)}
    upload: web.FileField | None = None
    if is_multipart(request):
        form: dict[str, str] = {}
        for name, value in (await request.post()).items():
            if isinstance(value, str):
                form[name] = value
            elif name == "filedata" and isinstance(value, web.FileField):
                upload = value
            elif isinstance(value, bytes | bytearray):
                form[name] = bytes(value).decode("utf-8", "replace")
            else:
                raise ProxyError(
                    100, f"(#100) windowgate takes a file only as filedata, not {name}"
                )
        return graph_params(query, form), upload
    raw = await read_capped(request, JSON_LIMIT)
    if request.content_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError as exc:
            raise ProxyError(100, "(#100) the form body is not UTF-8") from exc
        return graph_params(query, dict(pairs)), None
    params = graph_params(query)
    if not raw.strip():
        return params, None  # every parameter in the query string
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProxyError(100, f"(#100) the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProxyError(100, "(#100) the body must be a JSON object")
    params.update(data)
    return params, None


class Uploader(Protocol):
    async def upload(
        self, access_token: str, attachment: dict[str, Any], file: web.FileField | None
    ) -> tuple[int, dict[str, Any]]: ...


class AttachmentUploader(LazySession):
    """Graph's Attachment Upload API: `POST /{v}/me/message_attachments` → `attachment_id`.

    With a file: multipart `message` + `filedata`, the file streamed from aiohttp's spool; without
    one: the JSON `{"message": ...}` of an upload by URL (what fbmessenger's upload_attachment
    sends), forwarded as given."""

    def __init__(self, base_url: str, version: str, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.url = f"{base_url.rstrip('/')}/{version}/me/message_attachments"

    async def upload(
        self, access_token: str, attachment: dict[str, Any], file: web.FileField | None
    ) -> tuple[int, dict[str, Any]]:
        session = self.session()
        headers = {"Authorization": f"Bearer {access_token}"}
        data: aiohttp.FormData | bytes
        if file is not None:
            payload = attachment.get("payload")
            reusable = isinstance(payload, dict) and payload.get("is_reusable") in (True, "true")
            kind = attachment["type"]
            message = {"attachment": {"type": kind, "payload": {"is_reusable": reusable}}}
            form = aiohttp.FormData()
            form.add_field("message", orjson.dumps(message).decode())
            form.add_field(
                "filedata", file.file, filename=file.filename, content_type=file.content_type
            )
            data = form
        else:
            data = orjson.dumps({"message": {"attachment": attachment}})
            headers["Content-Type"] = "application/json"
        try:
            async with session.post(self.url, data=data, headers=headers) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("attachment upload failed: %s", type(exc).__name__)
            raise ProxyError(
                2,
                "(#2) windowgate could not upload the attachment to Graph; nothing was sent: retry",
                "upload_failed",
                503,
            ) from exc
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {}
        return status, body if isinstance(body, dict) else {}


def attachment_of(message: Any, file: web.FileField | None) -> dict[str, Any]:
    """The message's attachment an upload needs: a media type, and a URL unless a file came."""
    attachment = message.get("attachment") if isinstance(message, dict) else None
    if not isinstance(attachment, dict) or attachment.get("type") not in ATTACHMENT_TYPES:
        raise ProxyError(
            100,
            "(#100) an upload needs message.attachment.type "
            f"({', '.join(sorted(ATTACHMENT_TYPES))})",
        )
    payload = attachment.get("payload")
    if file is None and not (isinstance(payload, dict) and payload.get("url")):
        raise ProxyError(100, "(#100) an upload needs filedata or message.attachment.payload.url")
    if file is not None:
        file.file.seek(0, 2)
        size = file.file.tell()
        file.file.seek(0)
        if size > UPLOAD_LIMIT:
            raise too_large(size, UPLOAD_LIMIT, "an attachment (Meta's limit)")
    return attachment


async def upload(
    uploader: Uploader | None, access_token: str, message: Any, file: web.FileField | None
) -> tuple[int, dict[str, Any]]:
    """Graph's own answer to the upload (an upload messages no one: no decision needed)."""
    attachment = attachment_of(message, file)
    if uploader is None:
        raise ProxyError(100, "(#100) this windowgate does not take uploads", "no_uploads")
    return await uploader.upload(access_token, attachment, file)


async def uploaded_message(
    uploader: Uploader | None,
    access_token: str,
    message: dict[str, Any] | None,
    file: web.FileField,
) -> dict[str, Any]:
    """The message with its file uploaded: `payload` becomes `{"attachment_id": ...}`."""
    status, answer = await upload(uploader, access_token, message, file)
    attachment_id = answer.get("attachment_id")
    if status >= 400 and isinstance(answer.get("error"), dict):
        raise GraphAnswered(status, answer)  # Meta's own refusal of the upload
    if status != 200 or not isinstance(attachment_id, str | int):
        raise ProxyError(
            2, f"(#2) Graph's upload answer ({status}) had no attachment_id", "upload_failed", 502
        )
    assert message is not None
    attachment = message["attachment"]
    payload = {"attachment_id": str(attachment_id)}
    return {**message, "attachment": {**attachment, "payload": payload}}
