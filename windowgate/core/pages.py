"""Per-page settings (DESIGN.md §4.2 pages file): permissions, region, rule overrides.

The same file holds each page's access token, a credential: the policy never needs one, so a
PageConfig holds none and the rule book (which every window worker and the core carry) neither.
Only the dispatcher reads the tokens (`services.dispatcher.credentials`), from the same file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import orjson

from schemas.codec import SchemaError
from windowgate.core.labels import LABEL_TRIGGERS, LabelRule, label_problem


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
    label_rules: tuple[LabelRule, ...] = ()

    human_agent_proof: HumanAgentProof = "header"
    """How a proxy send tagged HUMAN_AGENT proves a human wrote it (README, the Graph proxy)."""
    personas: Mapping[str, str] = field(default_factory=dict)
    """persona_id → the human who writes as that persona (human_agent_proof "persona")."""


HumanAgentProof = Literal["header", "persona", "trust_tag"]
HUMAN_AGENT_PROOFS: tuple[HumanAgentProof, ...] = ("header", "persona", "trust_tag")

_KNOWN_KEYS = frozenset({"access_token", "human_agent", "region", "ad_account_id", "rules"})
_KNOWN_KEYS |= {"label_rules"}  # segments (README, Labels)
_KNOWN_KEYS |= {"human_agent_proof", "personas"}  # the proxy's HUMAN_AGENT proof
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
        proof, personas = _human_agent_proof(entry, where)
        _opt_str(entry, TOKEN_KEY, where)  # checked, never kept
        pages[page_id] = PageConfig(
            page_id=page_id,
            human_agent=human_agent,
            region=region.upper() if region else None,
            ad_account_id=_opt_str(entry, "ad_account_id", where),
            rule_overrides=overrides,
            label_rules=parse_label_rules(entry.get("label_rules", []), f"{where}.label_rules"),
            human_agent_proof=proof,
            personas=personas,
        )
    return pages


_RULE_KEYS = frozenset({"when", "prefix", "regex", "label", "remove"})


def parse_label_rules(data: Any, where: str) -> tuple[LabelRule, ...]:
    """A page's `label_rules`, checked now (a bad regex names its page and index) so a mistake
    stops the service at start, not at the first tap of a button."""
    if not isinstance(data, list):
        raise PagesError(where, 'expected a list of {"when", "prefix" | "regex", "label"}')
    return tuple(_label_rule(rule, f"{where}[{index}]") for index, rule in enumerate(data))


def _label_rule(rule: Any, where: str) -> LabelRule:
    if not isinstance(rule, dict):
        raise PagesError(where, "expected an object")
    unknown = set(rule) - _RULE_KEYS
    if unknown:
        raise PagesError(where, f"unknown keys {sorted(unknown)}; known: {sorted(_RULE_KEYS)}")
    problem = label_problem(rule.get("label"))
    if problem is not None:
        raise PagesError(f"{where}.label", problem)
    when = rule.get("when", "any")
    if when not in LABEL_TRIGGERS:
        raise PagesError(f"{where}.when", f"expected one of {list(LABEL_TRIGGERS)}, got {when!r}")
    remove = rule.get("remove", False)
    if not isinstance(remove, bool):
        raise PagesError(f"{where}.remove", "expected true or false")
    if ("prefix" in rule) == ("regex" in rule):
        raise PagesError(where, 'expected exactly one of "prefix" and "regex"')
    prefix = _opt_str(rule, "prefix", where)
    source = _opt_str(rule, "regex", where)
    pattern: re.Pattern[str] | None = None
    if source is not None:
        try:
            pattern = re.compile(source)
        except re.error as exc:
            raise PagesError(f"{where}.regex", f"not a regular expression: {exc}") from exc
    elif prefix is None:
        raise PagesError(f"{where}.prefix", "expected a string")
    return LabelRule(label=rule["label"], when=when, prefix=prefix, regex=pattern, remove=remove)


def _human_agent_proof(
    entry: Mapping[str, Any], where: str
) -> tuple[HumanAgentProof, dict[str, str]]:
    """The page's `human_agent_proof` and `personas`, checked: persona proof needs personas."""
    proof = entry.get("human_agent_proof", "header")
    if proof not in HUMAN_AGENT_PROOFS:
        raise PagesError(
            f"{where}.human_agent_proof", f"expected one of {', '.join(HUMAN_AGENT_PROOFS)}"
        )
    personas = entry.get("personas", {})
    if not isinstance(personas, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in personas.items()
    ):
        raise PagesError(f"{where}.personas", 'expected {"<persona_id>": "<human>"}')
    if proof == "persona" and not personas:
        raise PagesError(f"{where}.personas", 'human_agent_proof "persona" needs personas')
    return cast(HumanAgentProof, proof), dict(personas)


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
