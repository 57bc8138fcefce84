"""Dead-letter records: what a service could not process, why, and where it came from."""

from __future__ import annotations

import base64
from typing import Any

import orjson


def dead_letter_record(
    service: str,
    reason: str,
    raw: Any,
    at_ms: int,
    source: dict[str, Any] | None = None,
) -> bytes:
    """`raw` is kept as JSON when it is JSON-able, else as base64 of its bytes."""
    record: dict[str, Any] = {"service": service, "reason": reason, "at": at_ms}
    if isinstance(raw, bytes | bytearray):
        try:
            record["raw"] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            record["raw_base64"] = base64.b64encode(bytes(raw)).decode()
    else:
        record["raw"] = raw
    if source:
        record["source"] = source
    return orjson.dumps(record, default=str)
