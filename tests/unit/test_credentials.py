"""Page access tokens are credentials: only the dispatcher loads them; the rule book (which every
window worker and the core carry) holds none (issue 10, point 6)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from services.common.runtime import load_rulebook
from services.common.settings import Settings
from services.dispatcher.credentials import load_page_tokens, page_tokens
from tests.unit.test_layout import MODULES, imports_of, within
from windowgate.core.pages import PageConfig, PagesError, parse_pages

SECRET = "EAAB-secret-page-token"
PAGES = {
    "pages": {
        "111": {"access_token": SECRET, "human_agent": True, "region": "FR"},
        "222": {"region": "US"},
    }
}


def pages_file(tmp_path: Path, data: object = PAGES) -> Path:
    path = tmp_path / "pages.json"
    path.write_bytes(orjson.dumps(data))
    return path


def test_the_rule_book_every_service_loads_holds_no_token(tmp_path: Path) -> None:
    assert "access_token" not in {f.name for f in dataclasses.fields(PageConfig)}
    settings = Settings.from_env({"WINDOWGATE_PAGES": str(pages_file(tmp_path))})
    book = load_rulebook(settings)
    assert book.page("111") == PageConfig(page_id="111", human_agent=True, region="FR")
    assert SECRET not in repr(book)  # nor in a state dump, a decision or an error that shows it


def test_the_dispatcher_reads_the_tokens_from_the_same_file(tmp_path: Path) -> None:
    assert load_page_tokens(pages_file(tmp_path)) == {"111": SECRET}
    assert load_page_tokens(None) == {}  # no pages file: nothing can be sent


def test_a_token_that_is_not_a_string_is_refused_by_both_readers() -> None:
    bad = {"pages": {"111": {"access_token": 42}}}
    for read in (parse_pages, page_tokens):
        with pytest.raises(PagesError) as caught:
            read(bad)
        assert caught.value.field == "pages.111.access_token"


def test_only_the_dispatcher_imports_the_credentials() -> None:
    importers = {
        module
        for module, path in MODULES.items()
        if "services.dispatcher.credentials" in imports_of(path)
    }
    product = {m for m in importers if not within(m, ("tests", "bench"))}
    assert product and all(within(m, ("services.dispatcher",)) for m in product), product
