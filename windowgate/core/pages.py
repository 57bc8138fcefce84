"""Per-page settings (DESIGN.md §4.2 pages file): permissions, region, rule overrides.

The same file holds each page's access token, a credential: the policy never needs one, so a
PageConfig holds none and the rule book (which every window worker and the core carry) neither.
Only the dispatcher reads the tokens (`services.dispatcher.credentials`), from the same file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from schemas.codec import SchemaError


class PagesError(SchemaError):
    """The pages file is malformed; the message names the field."""


@dataclass(frozen=True, slots=True)
class PageConfig:
    """Unlisted pages get these defaults: no HUMAN_AGENT, region unknown (most restrictive)."""

    page_id: str
    human_agent: bool = False
    region: str | None = None
    ad_account_id: str | None = None
    rule_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


_KNOWN_KEYS = frozenset({"access_token", "human_agent", "region", "ad_account_id", "rules"})
TOKEN_KEY = "access_token"
"""A page's credential in the file: checked here (a string), kept only by the dispatcher."""


def _opt_str(entry: Mapping[str, Any], key: str, path: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise PagesError(f"{path}.{key}", "expected a string")
    return value


def parse_pages(data: Any, path: str = "") -> dict[str, PageConfig]:
    if not isinstance(data, dict) or not isinstance(data.get("pages"), dict):
        raise PagesError(f"{path}pages", 'expected {"pages": {"<page_id>": {...}}}')
    pages: dict[str, PageConfig] = {}
    for page_id, entry in data["pages"].items():
        where = f"{path}pages.{page_id}"
        if not isinstance(entry, dict):
            raise PagesError(where, "expected an object")
        unknown = set(entry) - _KNOWN_KEYS
        if unknown:
            raise PagesError(
                where, f"unknown settings {sorted(unknown)}; known: {sorted(_KNOWN_KEYS)}"
            )
        human_agent = entry.get("human_agent", False)
        if not isinstance(human_agent, bool):
            raise PagesError(f"{where}.human_agent", "expected true or false")
        overrides = entry.get("rules", {})
        if not isinstance(overrides, dict) or not all(
            isinstance(v, dict) for v in overrides.values()
        ):
            raise PagesError(f"{where}.rules", 'expected {"<rule id>": {...override...}}')
        region = _opt_str(entry, "region", where)
        _opt_str(entry, TOKEN_KEY, where)  # checked, never kept
        pages[page_id] = PageConfig(
            page_id=page_id,
            human_agent=human_agent,
            region=region.upper() if region else None,
            ad_account_id=_opt_str(entry, "ad_account_id", where),
            rule_overrides=overrides,
        )
    return pages


def read_pages_file(path: str | Path) -> Any:
    """The pages file's JSON, unchecked (`parse_pages` checks it)."""
    try:
        return orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise PagesError("", f"cannot read pages file {path}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise PagesError("", f"pages file {path} is not valid JSON: {exc}") from exc


def load_pages(path: str | Path) -> dict[str, PageConfig]:
    return parse_pages(read_pages_file(path))
