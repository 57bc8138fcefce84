"""Page access tokens: credentials, loaded by the dispatcher alone.

Delivery calls Graph with them and the front's Graph proxy checks a caller's token against them;
the window, the rule book and the core never hold one (issue 10, point 6), so a state dump, a
decision or a rules error can never carry a token. They come from the pages file
(`WINDOWGATE_PAGES`), checked by the same `parse_pages` as the page settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from windowgate.core.pages import TOKEN_KEY, parse_pages, read_pages_file

PageTokens = Mapping[str, str]
"""page_id → the page's access token (pages without one are absent)."""


def page_tokens(data: Any) -> dict[str, str]:
    """The tokens of a pages document; PagesError (naming the field) if it is malformed."""
    parse_pages(data)
    return {
        page_id: entry[TOKEN_KEY]
        for page_id, entry in data["pages"].items()
        if isinstance(entry.get(TOKEN_KEY), str) and entry[TOKEN_KEY]
    }


def load_page_tokens(path: str | Path | None) -> dict[str, str]:
    """The tokens of the pages file at `path` (none without a file: nothing can be sent)."""
    return page_tokens(read_pages_file(path)) if path is not None else {}
