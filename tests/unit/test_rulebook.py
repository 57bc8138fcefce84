"""The dated rules: boundaries, regions, page switches, and clear errors for bad data."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.builders import at
from windowgate.core.pages import PageConfig, PagesError, parse_pages
from windowgate.core.rulebook import RulesError, load_rules, parse_rules

RULES = load_rules()


def lookup(
    kind: str,
    when: str,
    *,
    tag: str | None = None,
    platform: Any = "messenger",
    page: str = "p",
    book: Any = RULES,
) -> Any:
    return book.lookup(kind, platform, page, at(when), tag)


@pytest.mark.parametrize(
    "tag", ["ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE"]
)
def test_retired_tags_allowed_until_2026_04_27(tag: str) -> None:
    assert lookup("message_tag", "2026-04-26T23:59:59.999Z", tag=tag).rule is not None
    refused = lookup("message_tag", "2026-04-27", tag=tag)
    assert refused.rule is None
    assert refused.reason == "tag_retired"
    assert "2026-04-27" in refused.detail


def test_tags_retired_in_2020_stay_retired() -> None:
    assert lookup("message_tag", "2020-03-03", tag="SHIPPING_UPDATE").rule is not None
    assert lookup("message_tag", "2020-03-04", tag="SHIPPING_UPDATE").reason == "tag_retired"


def test_unknown_tag_is_an_invalid_request_not_a_retired_one() -> None:
    assert lookup("message_tag", "2026-01-01", tag="MADE_UP").reason == "invalid_request"


def test_recurring_cooldown_is_48h_from_2025_09_01() -> None:
    before = lookup("recurring_cooldown", "2025-08-31T23:59:59Z")
    after = lookup("recurring_cooldown", "2025-09-01")
    assert before.rule is not None and before.rule.int_param("hours") == 24
    assert after.rule is not None and after.rule.int_param("hours") == 48


def test_legacy_recurring_ends_2026_02_10_except_listed_regions() -> None:
    assert lookup("recurring", "2026-02-09").rule is not None
    ended = lookup("recurring", "2026-02-10")
    assert (ended.rule, ended.reason) == (None, "mechanism_ended")
    pages = parse_pages(
        {"pages": {"de": {"region": "DE"}, "us": {"region": "US"}, "gb": {"region": "gb"}}}
    )
    book = RULES.with_pages(pages)
    assert lookup("recurring", "2026-03-01", page="de", book=book).rule is not None  # EU group
    assert lookup("recurring", "2026-03-01", page="gb", book=book).rule is not None  # UK group
    assert lookup("recurring", "2026-03-01", page="us", book=book).reason == "mechanism_ended"


def test_marketing_excludes_regions_and_unknown_region_is_most_restrictive() -> None:
    pages = parse_pages({"pages": {"us": {"region": "US"}, "jp": {"region": "JP"}}})
    book = RULES.with_pages(pages)
    assert lookup("marketing", "2025-06-30", page="us", book=book).reason == "mechanism_ended"
    assert lookup("marketing", "2025-07-01", page="us", book=book).rule is not None
    assert lookup("marketing", "2026-01-01", page="jp", book=book).reason == "region_excluded"
    assert lookup("marketing", "2026-01-01", page="unlisted", book=book).reason == "region_excluded"


def test_platforms() -> None:
    assert lookup("otn", "2026-01-01", platform="instagram").reason == "platform_unsupported"
    assert lookup("utility", "2026-01-01", platform="instagram").reason == "platform_unsupported"
    assert lookup("human_agent", "2026-01-01", platform="instagram").rule is not None
    assert lookup("window", "2026-01-01", platform="instagram").rule is not None


def test_unconfirmed_rules_are_off_by_default_and_a_page_can_switch_them_on() -> None:
    assert lookup("ad_window", "2026-10-01").reason == "mechanism_disabled"
    pages = parse_pages({"pages": {"p": {"rules": {"R-WIN-4": {"enabled": True}}}}})
    book = RULES.with_pages(pages)
    assert lookup("ad_window", "2026-10-01", book=book).rule is not None
    assert lookup("ad_window", "2026-09-27", book=book).reason == "mechanism_ended"  # not yet
    assert lookup("ad_window", "2026-10-01", page="other", book=book).reason == "mechanism_disabled"


def test_page_may_only_override_what_the_rule_allows() -> None:
    data = {
        "version": "t",
        "rules": [
            {"id": "OFF", "kind": "otn", "platforms": ["messenger"], "enabled": False},
            {"id": "W", "kind": "window", "platforms": ["messenger"], "params": {"hours": 24}},
        ],
    }
    with pytest.raises(RulesError, match="OFF cannot be switched on"):
        parse_rules(data, parse_pages({"pages": {"p": {"rules": {"OFF": {"enabled": True}}}}}))
    with pytest.raises(RulesError, match="lets a page set only"):
        parse_rules(
            data, parse_pages({"pages": {"p": {"rules": {"W": {"params": {"hours": 48}}}}}})
        )
    with pytest.raises(RulesError, match="no such rule"):
        parse_rules(data, parse_pages({"pages": {"p": {"rules": {"NOPE": {"enabled": False}}}}}))


def test_page_may_set_the_params_a_rule_names() -> None:
    override = {"R-MM": {"params": {"cooldown_hours": 12}}}
    book = RULES.with_pages({"p": PageConfig(page_id="p", region="US", rule_overrides=override)})
    page_rule = lookup("marketing", "2026-01-01", book=book).rule
    other_rule = lookup(
        "marketing",
        "2026-01-01",
        page="q",
        book=book.with_pages({"q": PageConfig(page_id="q", region="US")}),
    )
    assert page_rule is not None and page_rule.int_param("cooldown_hours") == 12
    assert other_rule.rule is not None and other_rule.rule.int_param("cooldown_hours") == 24


def test_a_page_can_switch_a_confirmed_rule_off() -> None:
    book = RULES.with_pages(
        {"p": PageConfig(page_id="p", rule_overrides={"R-OTN": {"enabled": False}})}
    )
    assert lookup("otn", "2026-01-01", book=book).reason == "mechanism_disabled"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "version"),
        ({"version": "x", "rules": []}, "rules"),
        (
            {"version": "x", "rules": [{"id": "A", "kind": "nope", "platforms": ["messenger"]}]},
            "rules[0].kind",
        ),
        (
            {"version": "x", "rules": [{"id": "A", "kind": "otn", "platforms": ["fax"]}]},
            "rules[0].platforms",
        ),
        (
            {
                "version": "x",
                "rules": [
                    {
                        "id": "A",
                        "kind": "otn",
                        "platforms": ["messenger"],
                        "effective_from": "27/04/2026",
                    }
                ],
            },
            "rules[0].effective_from",
        ),
        (
            {
                "version": "x",
                "rules": [{"id": "A", "kind": "otn", "platforms": ["messenger"], "colour": 1}],
            },
            "rules[0]",
        ),
        (
            {
                "version": "x",
                "rules": [
                    {"id": "A", "kind": "otn", "platforms": ["messenger"]},
                    {"id": "B", "kind": "otn", "platforms": ["messenger"]},
                ],
            },
            "rules",
        ),
    ],
)
def test_malformed_rules_name_the_field(data: Any, field: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(data)
    assert caught.value.field == field


def test_malformed_pages_name_the_field() -> None:
    with pytest.raises(PagesError) as caught:
        parse_pages({"pages": {"p": {"human_agent": "yes"}}})
    assert caught.value.field == "pages.p.human_agent"
    with pytest.raises(PagesError, match="unknown settings"):
        parse_pages({"pages": {"p": {"humanagent": True}}})


def test_rules_in_force_change_on_the_retirement_day() -> None:
    before = {(r.id, r.tag) for r in RULES.in_force_at(at("2026-04-26"))}
    after = {(r.id, r.tag) for r in RULES.in_force_at(at("2026-04-27"))}
    assert before - after == {
        ("R-TAG-RETIRED", "ACCOUNT_UPDATE"),
        ("R-TAG-RETIRED", "CONFIRMED_EVENT_UPDATE"),
        ("R-TAG-RETIRED", "POST_PURCHASE_UPDATE"),
    }


def _two(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    base = {"kind": "recurring", "platforms": ["messenger"], "effective_from": "2026-01-01"}
    return {
        "version": "x",
        "region_groups": {"EU": ["FR", "DE"]},
        "rules": [{"id": "A", **base, **a}, {"id": "B", **base, **b}],
    }


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"regions": ["FR"]}, {"regions": ["EU"]}),  # a group covers the listed code
        ({}, {"regions": ["DE"]}),  # everywhere meets any listed region
        ({"excluded_regions": ["EU"]}, {"excluded_regions": ["FR"]}),  # both cover the rest
        ({"regions": ["EU"], "excluded_regions": ["FR"]}, {"regions": ["DE", "FR"]}),  # DE
    ],
)
def test_versions_in_force_together_in_a_shared_region_are_refused(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    with pytest.raises(RulesError, match="A and B overlap"):
        parse_rules(_two(a, b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"regions": ["FR"]}, {"regions": ["DE"]}),
        ({"excluded_regions": ["EU"]}, {"regions": ["EU"]}),
        ({"regions": ["EU"]}, {"excluded_regions": ["EU"]}),
        ({"effective_until": "2026-02-01"}, {"effective_from": "2026-02-01"}),
    ],
)
def test_versions_apart_in_region_or_time_load(a: dict[str, Any], b: dict[str, Any]) -> None:
    book = parse_rules(_two(a, b))
    assert {r.id for r in book.rules} == {"A", "B"}
