"""Meta's rules as dated data, resolved for one page, platform and moment.

`decide` never branches on a date or a tag name: it asks the rule book which rule of a kind is in
force and, when none is, why not (the refusal reason). A new Meta rule is an edit of
`rules/meta.json` plus tests.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, get_args

import orjson

from schemas.codec import SchemaError
from schemas.types import PLATFORMS, Platform, RefusedReason
from windowgate.core.pages import PageConfig
from windowgate.core.timestamps import ms_to_iso, parse_iso_ms

RULE_KINDS = (
    "window",
    "ad_window",
    "human_agent",
    "message_tag",
    "utility",
    "otn",
    "recurring",
    "recurring_cooldown",
    "marketing",
    "otn_request",
    "recurring_request",
    "private_reply",
)
# Integer parameters `decide` reads from a kind's rules, checked when the file is loaded so that a
# typo in the data is a load error naming the field, not a failed decision.
_INT_PARAMS: dict[str, tuple[str, ...]] = {"recurring_request": ("per_title", "days")}
_RULE_KEYS = frozenset(
    {
        "id",
        "kind",
        "platforms",
        "tags",
        "effective_from",
        "effective_until",
        "enabled",
        "switchable",
        "regions",
        "excluded_regions",
        "outside_regions_reason",
        "page_params",
        "params",
        "source",
        "summary",
    }
)
_REFUSED_REASONS = frozenset(get_args(RefusedReason))


class RulesError(SchemaError):
    """The rules file or a page's override is malformed; the message names the field."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One dated rule. `tag` is set for message tags (one Rule per tag of the file's `tags`)."""

    id: str
    kind: str
    platforms: frozenset[Platform]
    tag: str | None = None
    effective_from: int | None = None
    effective_until: int | None = None
    enabled: bool = True
    switchable: bool = False
    regions: frozenset[str] | None = None
    excluded_regions: frozenset[str] | None = None
    outside_regions_reason: RefusedReason = "region_excluded"
    page_params: frozenset[str] = frozenset()
    params: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    summary: str = ""

    def in_force(self, at: int) -> bool:
        return (self.effective_from is None or self.effective_from <= at) and (
            self.effective_until is None or at < self.effective_until
        )

    def int_param(self, name: str) -> int:
        value = self.params.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RulesError(f"{self.id}.params.{name}", "expected an integer")
        return value

    def months_for(self, frequency: str | None) -> int | None:
        table = self.params.get("expiry_months")
        if not isinstance(table, dict) or frequency is None:
            return None
        months = table.get(frequency)
        return months if isinstance(months, int) else None

    def describe(self) -> dict[str, Any]:
        """The rule as the CLI prints it (dates as ISO days)."""
        out: dict[str, Any] = {"id": self.id, "kind": self.kind}
        if self.tag:
            out["tag"] = self.tag
        out["platforms"] = sorted(self.platforms)
        starts, ends = self.effective_from, self.effective_until
        out["effective_from"] = ms_to_iso(starts) if starts is not None else None
        out["effective_until"] = ms_to_iso(ends) if ends is not None else None
        out["enabled"] = self.enabled
        if self.regions is not None:
            out["regions"] = sorted(self.regions)
        if self.excluded_regions is not None:
            out["excluded_regions"] = sorted(self.excluded_regions)
        if self.params:
            out["params"] = dict(self.params)
        out["source"] = self.source
        out["summary"] = self.summary
        return out


@dataclass(frozen=True, slots=True)
class Lookup:
    """The rule in force, or the refusal reason and a sentence saying why none is."""

    rule: Rule | None
    reason: RefusedReason | None = None
    detail: str = ""


def _date(value: Any, path: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RulesError(path, "expected an ISO date such as 2026-04-27")
    try:
        return parse_iso_ms(value)
    except ValueError as exc:
        raise RulesError(path, f"not an ISO date: {value!r}") from exc


def _str_set(value: Any, path: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(path, "expected a list of strings")
    return frozenset(value)


def _parse_rule(raw: Any, path: str) -> list[Rule]:
    if not isinstance(raw, dict):
        raise RulesError(path, "expected an object")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise RulesError(path, f"unknown keys {sorted(unknown)}")
    rule_id, kind = raw.get("id"), raw.get("kind")
    if not isinstance(rule_id, str) or not rule_id:
        raise RulesError(f"{path}.id", "is required")
    if kind not in RULE_KINDS:
        raise RulesError(f"{path}.kind", f"expected one of {', '.join(RULE_KINDS)}, got {kind!r}")
    platforms = _str_set(raw.get("platforms"), f"{path}.platforms") or frozenset()
    if not platforms or not platforms <= set(PLATFORMS):
        raise RulesError(f"{path}.platforms", f"expected a non-empty subset of {list(PLATFORMS)}")
    tags = _str_set(raw.get("tags"), f"{path}.tags")
    if (kind == "message_tag") != (tags is not None):
        raise RulesError(f"{path}.tags", "message_tag rules (and only they) list their tags")
    outside = raw.get("outside_regions_reason", "region_excluded")
    if outside not in _REFUSED_REASONS:
        raise RulesError(f"{path}.outside_regions_reason", f"not a refusal reason: {outside!r}")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise RulesError(f"{path}.params", "expected an object")
    for flag in ("enabled", "switchable"):
        if not isinstance(raw.get(flag, False), bool):
            raise RulesError(f"{path}.{flag}", "expected true or false")
    base = Rule(
        id=rule_id,
        kind=kind,
        platforms=frozenset(p for p in PLATFORMS if p in platforms),
        effective_from=_date(raw.get("effective_from"), f"{path}.effective_from"),
        effective_until=_date(raw.get("effective_until"), f"{path}.effective_until"),
        enabled=raw.get("enabled", True),
        switchable=raw.get("switchable", False),
        regions=_str_set(raw.get("regions"), f"{path}.regions"),
        excluded_regions=_str_set(raw.get("excluded_regions"), f"{path}.excluded_regions"),
        outside_regions_reason=outside,
        page_params=_str_set(raw.get("page_params"), f"{path}.page_params") or frozenset(),
        params=params,
        source=str(raw.get("source", "")),
        summary=str(raw.get("summary", "")),
    )
    for name in _INT_PARAMS.get(kind, ()):
        value = base.int_param(name)  # raises RulesError naming <id>.params.<name>
        if value < 1:
            raise RulesError(f"{rule_id}.params.{name}", "expected a positive integer")
    if tags is None:
        return [base]
    return [replace(base, tag=tag) for tag in sorted(tags)]


def _apply_override(rule: Rule, override: Mapping[str, Any], path: str) -> Rule:
    """A page may switch a `switchable` rule and set the params the rule names in `page_params`."""
    unknown = set(override) - {"enabled", "params"}
    if unknown:
        raise RulesError(
            path, f"a page may override only 'enabled' and 'params', not {sorted(unknown)}"
        )
    if "enabled" in override:
        enabled = override["enabled"]
        if not isinstance(enabled, bool):
            raise RulesError(f"{path}.enabled", "expected true or false")
        if enabled != rule.enabled and not rule.switchable and enabled:
            raise RulesError(f"{path}.enabled", f"{rule.id} cannot be switched on by a page")
        rule = replace(rule, enabled=enabled)
    if "params" in override:
        params = override["params"]
        if not isinstance(params, dict):
            raise RulesError(f"{path}.params", "expected an object")
        bad = set(params) - rule.page_params
        if bad:
            raise RulesError(
                f"{path}.params",
                f"{rule.id} lets a page set only {sorted(rule.page_params) or 'no params'}, "
                f"not {sorted(bad)}",
            )
        rule = replace(rule, params={**rule.params, **params})
    return rule


def _region_in(region: str, wanted: frozenset[str], groups: Mapping[str, frozenset[str]]) -> bool:
    return region in wanted or any(region in groups.get(name, ()) for name in wanted)


RuleSlot = tuple[tuple[str, str | None, str, str], int]


@dataclass
class _Memo:
    """Answers `RuleBook` already worked out: per page, the rule index; per (kind, tag, platform,
    page) and interval between rule dates, the lookup. Filled on first use; never changes one."""

    index: dict[str, dict[tuple[str, str | None], tuple[Rule, ...]]] = field(default_factory=dict)
    bounds: dict[tuple[str, str | None, str, str], list[int]] = field(default_factory=dict)
    lookups: dict[RuleSlot, Lookup] = field(default_factory=dict)
    tags: dict[RuleSlot, tuple[Rule, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleBook:
    """All rule versions plus the pages' settings, fixed at construction: every answer is a
    function of them and the instant asked about, so `decide` stays pure. `memo` only remembers
    answers already computed (decide asks the same few questions for every request)."""

    version: str
    rules: tuple[Rule, ...]
    region_groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    pages: Mapping[str, PageConfig] = field(default_factory=dict)
    memo: _Memo = field(default_factory=_Memo, compare=False, repr=False)

    def __post_init__(self) -> None:
        for page in self.pages.values():
            self._page_rules(page.page_id)  # validate every override now, not at the first send

    def page(self, page_id: str) -> PageConfig:
        return self.pages.get(page_id) or PageConfig(page_id=page_id)

    def with_pages(self, pages: Mapping[str, PageConfig]) -> RuleBook:
        return RuleBook(self.version, self.rules, self.region_groups, pages)

    def _page_rules(self, page_id: str) -> dict[tuple[str, str | None], tuple[Rule, ...]]:
        return _index(self, page_id)

    def lookup(
        self, kind: str, platform: Platform, page_id: str, at: int, tag: str | None = None
    ) -> Lookup:
        """The enabled rule of `kind` in force for this page at `at`, or why there is none.

        The answer only changes at the rule versions' dates, so it is cached per interval between
        them: `decide` calls this several times per request on the hot path.
        """
        page_key = page_id if page_id in self.pages else ""
        key = (kind, tag, platform, page_key)
        bounds = self.memo.bounds.get(key)
        if bounds is None:
            versions = self._page_rules(page_id).get((kind, tag), ())
            dates = {
                d for r in versions for d in (r.effective_from, r.effective_until) if d is not None
            }
            bounds = self.memo.bounds[key] = sorted(dates)
        slot = (key, bisect_right(bounds, at))
        found = self.memo.lookups.get(slot)
        if found is None:
            found = self.memo.lookups[slot] = self._lookup(kind, platform, page_id, at, tag)
        return found

    def _lookup(
        self, kind: str, platform: Platform, page_id: str, at: int, tag: str | None
    ) -> Lookup:
        versions = self._page_rules(page_id).get((kind, tag), ())
        what = f"tag {tag}" if tag else kind.replace("_", " ")
        if not versions:
            return Lookup(None, "invalid_request", f"no rule knows {what}")
        on_platform = [r for r in versions if platform in r.platforms]
        if not on_platform:
            return Lookup(None, "platform_unsupported", f"{what} is not available on {platform}")
        dated = [r for r in on_platform if r.in_force(at)]
        if not dated:
            ended = [
                r for r in on_platform if r.effective_until is not None and r.effective_until <= at
            ]
            if ended:
                last = max(ended, key=lambda r: r.effective_until or 0)
                reason: RefusedReason = "tag_retired" if tag else "mechanism_ended"
                until = ms_to_iso(last.effective_until or 0)
                return Lookup(None, reason, f"{what} ended on {until} ({last.id})")
            first = min(r.effective_from or 0 for r in on_platform)
            return Lookup(
                None, "mechanism_ended", f"{what} is not in force before {ms_to_iso(first)}"
            )
        region = self.page(page_id).region
        in_region = [r for r in dated if self._region_allows(r, region)]
        if not in_region:
            rule = dated[0]
            where = f"region {region}" if region else "a page whose region is not configured"
            return Lookup(
                None, rule.outside_regions_reason, f"{what} is not allowed for {where} ({rule.id})"
            )
        enabled = [r for r in in_region if r.enabled]
        if not enabled:
            rule = in_region[0]
            return Lookup(
                None, "mechanism_disabled", f"{rule.id} ({what}) is switched off for this page"
            )
        return Lookup(enabled[0])

    def _region_allows(self, rule: Rule, region: str | None) -> bool:
        if rule.regions is not None and (
            region is None or not _region_in(region, rule.regions, self.region_groups)
        ):
            return False
        return not (
            rule.excluded_regions is not None
            and (region is None or _region_in(region, rule.excluded_regions, self.region_groups))
        )

    def tags(self, platform: Platform, page_id: str, at: int) -> tuple[Rule, ...]:
        """Message-tag rules usable now (for alternatives), cached like `lookup`."""
        key = ("message_tag", None, platform, page_id if page_id in self.pages else "")
        index = self._page_rules(page_id)
        tags = [tag for kind, tag in index if kind == "message_tag" and tag is not None]
        bounds = self.memo.bounds.get(key)
        if bounds is None:
            dates = {
                d
                for tag in tags
                for r in index[("message_tag", tag)]
                for d in (r.effective_from, r.effective_until)
                if d is not None
            }
            bounds = self.memo.bounds[key] = sorted(dates)
        slot = (key, bisect_right(bounds, at))
        found = self.memo.tags.get(slot)
        if found is None:
            hits = (self.lookup("message_tag", platform, page_id, at, tag).rule for tag in tags)
            found = self.memo.tags[slot] = tuple(rule for rule in hits if rule is not None)
        return found

    def in_force_at(self, at: int) -> list[Rule]:
        return [r for r in self.rules if r.in_force(at)]


def _index(book: RuleBook, page_id: str) -> dict[tuple[str, str | None], tuple[Rule, ...]]:
    """Rule versions by (kind, tag) with this page's overrides applied; built once per page."""
    page = book.pages.get(page_id)
    overrides = page.rule_overrides if page else {}
    cache_key = page_id if overrides else ""
    index = book.memo.index.get(cache_key)
    if index is None:
        known = {r.id for r in book.rules}
        for rule_id in overrides:
            if rule_id not in known:
                raise RulesError(f"pages.{page_id}.rules.{rule_id}", "no such rule")
        grouped: dict[tuple[str, str | None], list[Rule]] = {}
        for rule in book.rules:
            override = overrides.get(rule.id)
            if override is not None:
                rule = _apply_override(rule, override, f"pages.{page_id}.rules.{rule.id}")
            grouped.setdefault((rule.kind, rule.tag), []).append(rule)
        index = {k: tuple(v) for k, v in grouped.items()}
        book.memo.index[cache_key] = index
    return index


def parse_rules(data: Any, pages: Mapping[str, PageConfig] | None = None) -> RuleBook:
    if not isinstance(data, dict):
        raise RulesError("", "the rules file must be a JSON object")
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise RulesError("version", "is required")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RulesError("rules", "expected a non-empty list")
    rules: list[Rule] = []
    for i, raw in enumerate(raw_rules):
        rules.extend(_parse_rule(raw, f"rules[{i}]"))
    groups_raw = data.get("region_groups", {})
    if not isinstance(groups_raw, dict):
        raise RulesError("region_groups", "expected an object")
    groups = {
        name: _str_set(codes, f"region_groups.{name}") or frozenset()
        for name, codes in groups_raw.items()
    }
    _check_no_overlap(rules, groups)
    return RuleBook(version=version, rules=tuple(rules), region_groups=groups, pages=pages or {})


def _expand(names: frozenset[str], groups: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """The region codes a rule's list names: each code itself, and a group's members."""
    return frozenset(names).union(*(groups.get(name, frozenset()) for name in names))


def _regions_meet(a: Rule, b: Rule, groups: Mapping[str, frozenset[str]]) -> bool:
    """Could one region be in force for both? `regions` None means every region (there is always
    one neither rule excludes), and `excluded_regions` takes codes away from either."""
    excluded = _expand(a.excluded_regions or frozenset(), groups) | _expand(
        b.excluded_regions or frozenset(), groups
    )
    if a.regions is None and b.regions is None:
        return True
    if a.regions is None or b.regions is None:
        listed = a.regions if a.regions is not None else b.regions
        return bool(_expand(listed or frozenset(), groups) - excluded)
    return bool((_expand(a.regions, groups) & _expand(b.regions, groups)) - excluded)


def _check_no_overlap(rules: Iterable[Rule], groups: Mapping[str, frozenset[str]]) -> None:
    """Two versions of one (kind, tag, platform) in force at once in one region: a data bug."""
    seen: dict[tuple[str, str | None, str], list[Rule]] = {}
    for rule in rules:
        for platform in rule.platforms:
            for other in seen.get((rule.kind, rule.tag, platform), []):
                starts = max(rule.effective_from or 0, other.effective_from or 0)
                ends = min(rule.effective_until or 2**62, other.effective_until or 2**62)
                if starts < ends and _regions_meet(rule, other, groups):
                    raise RulesError(
                        "rules",
                        f"{other.id} and {rule.id} overlap for {rule.kind} {rule.tag or ''} "
                        f"on {platform}: both in force from {ms_to_iso(starts)} in a region "
                        "both cover",
                    )
            seen.setdefault((rule.kind, rule.tag, platform), []).append(rule)


def load_rules(
    path: str | Path | None = None, pages: Mapping[str, PageConfig] | None = None
) -> RuleBook:
    """The packaged rules (or `path`), with the pages' settings applied."""
    try:
        if path is None:
            raw = resources.files("windowgate.core").joinpath("rules/meta.json").read_bytes()
        else:
            raw = Path(path).read_bytes()
    except OSError as exc:
        where = path or "windowgate/core/rules/meta.json"
        raise RulesError("", f"cannot read rules file {where}: {exc.strerror or exc}") from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RulesError("", f"rules file {path or 'meta.json'} is not valid JSON: {exc}") from exc
    return parse_rules(data, pages)
