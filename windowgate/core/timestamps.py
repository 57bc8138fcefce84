"""Time values as the gateway stores them: integer epoch milliseconds, UTC, never the local clock.

Meta's `timestamp` is usually epoch ms, but its own samples carry seconds and digit strings
(platform-rules §1 "Time"), so every webhook time goes through `to_epoch_ms`. Rule dates and CLI
arguments are ISO-8601 text (`parse_iso_ms` / `ms_to_iso`). Everything here is pure: no clock reads.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

SECONDS_BELOW = 10**12
"""Values below this are epoch seconds (10**12 ms is 2001-09-09; 10**12 s is year 33658)."""

MAX_EPOCH_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: anything later is no timestamp (and would overflow datetime/int64)."""

_MAX_DIGITS = 20
"""Longer digit strings are nonsense and would trip Python's int-from-str digit limit."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_MIN_ISO_MS = -62_135_596_800_000
"""0001-01-01T00:00:00Z, the first instant ISO-8601 (and datetime) can write."""


def to_epoch_ms(value: object) -> int | None:
    """Meta's `timestamp` (int, float or digit string; seconds or ms by magnitude) as epoch ms.

    Returns None for anything that is not a plausible time: bool, negatives, NaN/inf, non-digit
    strings, other types, and values past year 9999. Never raises.
    """
    if isinstance(value, bool):  # bool is an int subclass: True is not "1 second after 1970"
        return None
    if isinstance(value, int):
        if value < 0:
            return None
        ms = value * 1000 if value < SECONDS_BELOW else value
    elif isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            return None
        ms = round(value * 1000) if value < SECONDS_BELOW else round(value)
    elif isinstance(value, str):
        # isascii() first: str.isdigit() also accepts "²" and other digits int() refuses.
        if not value or len(value) > _MAX_DIGITS or not value.isascii() or not value.isdigit():
            return None
        number = int(value)
        ms = number * 1000 if number < SECONDS_BELOW else number
    else:
        return None
    return ms if ms <= MAX_EPOCH_MS else None


def parse_iso_ms(text: str) -> int:
    """ISO-8601 date or datetime as epoch ms; naive means UTC, a trailing 'Z' is accepted.

    Raises ValueError on anything else, so a mistyped rule date fails loudly instead of shifting.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO-8601 string, got {type(text).__name__}")
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 date or datetime: {text!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed - _EPOCH) // _ONE_MS


@lru_cache(maxsize=16_384)
def ms_to_iso(ms: int) -> str:
    """Epoch ms as UTC ISO-8601 ("2026-04-27T00:00:00Z"); milliseconds shown only when non-zero.

    `parse_iso_ms(ms_to_iso(x)) == x` for every representable x.
    """
    if not _MIN_ISO_MS <= ms <= MAX_EPOCH_MS:
        raise ValueError(f"epoch ms out of range: {ms}")
    # Decision details format times on the hot path: gmtime beats datetime arithmetic several
    # times over, and the cache serves the times one decision and its alternatives repeat.
    t = time.gmtime(ms // 1000)
    base = (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    )
    millis = ms % 1000
    return f"{base}.{millis:03d}Z" if millis else f"{base}Z"
