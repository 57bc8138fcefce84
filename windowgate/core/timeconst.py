"""Durations in epoch milliseconds, the one time unit of the core."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

SECOND_MS = 1_000
HOUR_MS = 3_600 * SECOND_MS
DAY_MS = 24 * HOUR_MS


def add_months(ms: int, months: int) -> int:
    """Calendar months after `ms` (UTC), clamping the day (Jan 31 + 1 month = Feb 28/29)."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    month_index = moment.month - 1 + months
    year = moment.year + month_index // 12
    month = month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp() * 1000)
