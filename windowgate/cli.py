"""The `windowgate` command line (DESIGN.md §4.1).

    windowgate decide --webhooks FILE --request FILE [--now ISO8601] [--rules FILE] [--pages FILE]
    windowgate rules [--at DATE] [--json]
    windowgate rules diff FROM TO [--json]
    windowgate broadcast create|status|pause|resume|cancel|list ...   (the HTTP API, DESIGN.md §4.6)

`decide` is the offline gateway: no broker, no services, the same pure core they use. Here, at the
edge, the wall clock is read (the default of `--now` and `--at`) and handed to the core, which
never reads it. Malformed input exits 2 with one message naming the file, the line and the field;
refused decisions are answers, not errors (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn, Protocol, TextIO

import orjson

from schemas.codec import SchemaError
from schemas.decision import encode_decision
from schemas.events import Event
from schemas.request import SendRequest, request_from_wire
from windowgate.client import GatewayError, HttpError, HttpGateway
from windowgate.core.pages import load_pages
from windowgate.core.rulebook import Rule, RuleBook, load_rules
from windowgate.core.timestamps import ms_to_iso, parse_iso_ms
from windowgate.offline import OfflineGateway

PROG = "windowgate"
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILED = 1


class InputError(Exception):
    """Malformed user input: `windowgate: <where>: <problem>` on stderr, exit 2."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}" if where else problem)


class _ParserExit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(status)


class _Parser(argparse.ArgumentParser):
    """argparse that returns from `main` instead of calling sys.exit (tests call `main`)."""

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _ParserExit(status)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# ---- helpers -------------------------------------------------------------------------------------


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _parse_time(text: str, what: str) -> int:
    try:
        return parse_iso_ms(text)
    except ValueError as exc:
        raise InputError(
            what, f"{exc} (expected e.g. 2026-04-27 or 2026-04-27T09:30:00Z)"
        ) from None


def _day(ms: int) -> str:
    """An ISO time, shortened to the date at UTC midnight (how rule dates are written)."""
    iso = ms_to_iso(ms)
    return iso.removesuffix("T00:00:00Z")


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read the {what} file: {exc.strerror or exc}") from None


def _json_lines(path: str, what: str) -> Iterator[tuple[str, Any]]:
    """(where, parsed JSON) for every non-blank line; `where` is "<path> line <n>"."""
    data = _read(path, what)
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark from some editors
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            yield where, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(
                where,
                f"not valid JSON ({exc.msg} at column {exc.colno}); "
                f"the {what} file holds one whole JSON document per line",
            ) from None


def _warn(message: str) -> None:
    sys.stderr.write(f"{PROG}: warning: {message}\n")


def _load_book(rules_path: str | None, pages_path: str | None) -> RuleBook:
    pages = None
    if pages_path is not None:
        try:
            pages = load_pages(pages_path)
        except SchemaError as exc:
            raise _file_error("pages", pages_path, exc) from None
    try:
        return load_rules(rules_path, pages)
    except SchemaError as exc:
        # Page overrides are checked against the rules: name the file the mistake is in.
        if pages_path is not None and exc.field.startswith("pages."):
            raise _file_error("pages", pages_path, exc) from None
        raise _file_error("rules", rules_path, exc) from None


def _file_error(what: str, path: str | None, exc: SchemaError) -> InputError:
    """A field error names its file; a whole-file error ("cannot read ...") names it already."""
    if not exc.field:
        return InputError("", exc.problem)
    return InputError(f"{what} file {path or '(packaged)'}", str(exc))


# ---- windowgate decide ---------------------------------------------------------------------------

LATER_SHOWN = 5
"""How many of the webhook events later than `now` are listed one by one."""


def _warn_later(later: list[tuple[str, Event]], now: int, what: str) -> None:
    """The events after `now`: not folded, since the state at `now` cannot know of them."""
    count = len(later)
    _warn(
        f"{count} webhook event{'s' if count > 1 else ''} later than {what} "
        f"({ms_to_iso(now)}) not folded:"
    )
    for where, event in later[:LATER_SHOWN]:
        who = f"user {event.user_id}" if event.user_id else "the page"
        _warn(
            f"{where}: {event.KIND} of {who} on page {event.page_id} "
            f"at {ms_to_iso(event.timestamp)} ({event.dedup_key})"
        )
    if count > LATER_SHOWN:
        _warn(f"... and {count - LATER_SHOWN} more")


def _cmd_decide(args: argparse.Namespace, out: TextIO) -> int:
    now = _wall_clock_ms() if args.now is None else _parse_time(args.now, "--now")
    book = _load_book(args.rules, args.pages)
    gateway = OfflineGateway(book)

    later: list[tuple[str, Event]] = []
    for where, body in _json_lines(args.webhooks, "webhooks"):
        try:
            applied = gateway.apply_webhook(body, now)
        except SchemaError as exc:
            raise InputError(where, f"not a webhook body: {exc}") from None
        for item in applied.unsupported:
            _warn(f"{where}: {item.path}: ignored: {item.reason}")
        later += [(where, event) for event in applied.later]
    if later:
        _warn_later(later, now, "--now" if args.now is not None else "the current time")

    # Read every request before deciding any, so malformed input prints no decision at all.
    requests: list[SendRequest] = []
    for where, data in _json_lines(args.request, "requests"):
        try:
            requests.append(request_from_wire(data))
        except SchemaError as exc:
            raise InputError(where, str(exc) or "not a send request") from None
    if not requests:
        _warn(f"{args.request}: no requests to decide")

    for request in requests:
        try:
            decision = gateway.decide(request, now)
        except SchemaError as exc:  # a custom rules file whose params the core cannot use
            raise _file_error("rules", args.rules, exc) from None
        out.write(encode_decision(decision).decode())
        out.write("\n")
    return EXIT_OK


# ---- windowgate rules ----------------------------------------------------------------------------


def _effective(rule: Rule) -> str:
    start, end = rule.effective_from, rule.effective_until
    if start is not None and end is not None:
        return f"{_day(start)} → {_day(end)}"
    if start is not None:
        return f"from {_day(start)}"
    if end is not None:
        return f"until {_day(end)}"
    return "always"


def _what(rule: Rule) -> str:
    what = f"tag {rule.tag}" if rule.tag else rule.kind
    if not rule.enabled:
        what += " (off" + (", page may switch on)" if rule.switchable else ")")
    return what


def _scope(rule: Rule) -> str:
    scope = ",".join(sorted(rule.platforms))
    if rule.regions is not None:
        scope += " only " + ",".join(sorted(rule.regions))
    if rule.excluded_regions is not None:
        scope += " not " + ",".join(sorted(rule.excluded_regions))
    return scope


def _table(rules: Sequence[Rule], indent: str = "") -> list[str]:
    rows = [(r.id, _what(r), _scope(r), _effective(r), r.summary) for r in rules]
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        indent
        + "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    ]


def _source(args: argparse.Namespace) -> str:
    return f"rules file {args.rules}" if args.rules else "packaged rules"


def _cmd_rules(args: argparse.Namespace, out: TextIO) -> int:
    at = _wall_clock_ms() if args.at is None else _parse_time(args.at, "--at")
    book = _load_book(args.rules, None)
    rules = book.in_force_at(at)
    if args.json:
        out.write(orjson.dumps([r.describe() for r in rules], option=orjson.OPT_INDENT_2).decode())
        out.write("\n")
        return EXIT_OK
    out.write(
        f"{len(rules)} rules in force at {ms_to_iso(at)} "
        f"(rules version {book.version}, {_source(args)}):\n"
    )
    for line in _table(rules, "  "):
        out.write(line + "\n")
    out.write("Dates are UTC; 'from' is inclusive, 'until' exclusive. --json for machine output.\n")
    return EXIT_OK


_DIFF_FIELDS = ("kind", "platforms", "enabled", "regions", "excluded_regions", "params")


def _rule_changes(before: Rule, after: Rule) -> dict[str, list[Any]]:
    """What differs between two versions of one rule, field by field (params key by key)."""
    old, new = before.describe(), after.describe()
    changes: dict[str, list[Any]] = {}
    for name in _DIFF_FIELDS:
        if name == "params":
            old_params, new_params = old.get("params") or {}, new.get("params") or {}
            for key in sorted(set(old_params) | set(new_params)):
                if old_params.get(key) != new_params.get(key):
                    changes[f"params.{key}"] = [old_params.get(key), new_params.get(key)]
        elif old.get(name) != new.get(name):
            changes[name] = [old.get(name), new.get(name)]
    return changes


def rules_diff(book: RuleBook, start: int, end: int) -> dict[str, Any]:
    """The rules that came into force, ended, or changed (same id and tag) from `start` to `end`."""
    before: dict[tuple[str, str | None], list[Rule]] = {}
    after: dict[tuple[str, str | None], list[Rule]] = {}
    for rule in book.in_force_at(start):
        before.setdefault((rule.id, rule.tag), []).append(rule)
    for rule in book.in_force_at(end):
        after.setdefault((rule.id, rule.tag), []).append(rule)
    came: list[Rule] = []
    ended: list[Rule] = []
    changed: list[tuple[Rule, Rule, dict[str, list[Any]]]] = []
    for key in dict.fromkeys([*before, *after]):
        old, new = before.get(key, []), after.get(key, [])
        if len(old) == 1 and len(new) == 1:
            if old[0] != new[0]:
                changes = _rule_changes(old[0], new[0])
                if changes:
                    changed.append((old[0], new[0], changes))
            continue
        ended += [r for r in old if r not in new]
        came += [r for r in new if r not in old]
    return {
        "from": ms_to_iso(start),
        "to": ms_to_iso(end),
        "rules_version": book.version,
        "came_into_force": came,
        "ended": ended,
        "changed": changed,
    }


def _cmd_rules_diff(args: argparse.Namespace, out: TextIO) -> int:
    if args.at is not None:
        raise InputError("--at", "does not apply to 'rules diff', which takes FROM and TO")
    start = _parse_time(args.start, "FROM")
    end = _parse_time(args.end, "TO")
    book = _load_book(args.rules, None)
    diff = rules_diff(book, start, end)
    came: list[Rule] = diff["came_into_force"]
    ended: list[Rule] = diff["ended"]
    changed: list[tuple[Rule, Rule, dict[str, list[Any]]]] = diff["changed"]
    if args.json:
        wire = {
            **diff,
            "came_into_force": [r.describe() for r in came],
            "ended": [r.describe() for r in ended],
            "changed": [
                {
                    "id": new.id,
                    "kind": new.kind,
                    "tag": new.tag,
                    "changes": changes,
                    "before": old.describe(),
                    "after": new.describe(),
                }
                for old, new, changes in changed
            ],
        }
        out.write(orjson.dumps(wire, option=orjson.OPT_INDENT_2).decode())
        out.write("\n")
        return EXIT_OK
    out.write(
        f"Rule changes from {_day(start)} to {_day(end)} "
        f"(rules version {book.version}, {_source(args)}):\n"
    )
    out.write(f"Came into force ({len(came)}):{'' if came else ' none'}\n")
    for line in _table(came, "  + "):
        out.write(line + "\n")
    out.write(f"Ended ({len(ended)}):{'' if ended else ' none'}\n")
    for line in _table(ended, "  - "):
        out.write(line + "\n")
    out.write(f"Changed ({len(changed)}):{'' if changed else ' none'}\n")
    for _old, new, changes in changed:
        what = ", ".join(
            f"{name}: {_show(values[0])} → {_show(values[1])}" for name, values in changes.items()
        )
        out.write(f"  ~ {new.id} {_what(new)}: {what}  ({new.summary})\n")
    return EXIT_OK


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "(none)"
    return "(none)" if value is None else orjson.dumps(value).decode()


# ---- the parser ----------------------------------------------------------------------------------

_DECIDE_HELP = """\
Decide send requests offline, without a broker or any service: fold the webhooks into per-user
state, then decide every request in order against that evolving state, exactly as the gateway
would, and print one Decision JSON per request line.

An allowed OTN / recurring / marketing decision spends its token (the next request for that topic
is refused with token_spent); a repeated request_id gets its first decision back, marked
"duplicate": true. Webhook elements windowgate does not understand are reported on stderr as
warnings and skipped, and so are webhook events later than --now (the state at --now cannot know
what a user does after it). A request field windowgate does not know is an error, never ignored.

exit status: 0 when every request got a decision, allowed or refused; 2 on malformed input
(the message names the file, the line and the field)."""

_DECIDE_EXAMPLE = """\
example:
  windowgate decide --webhooks hooks.jsonl --request requests.jsonl --now 2026-04-26T12:00:00Z

  requests.jsonl, one request per line:
  {"request_id": "r1", "page_id": "682498171943165", "user_id": "1254459154682919"}
  {"request_id": "r2", "page_id": "682498171943165", "user_id": "1254459154682919",
   "purpose": "otn", "topic": "back-in-stock:adidas-sl72"}"""

_RULES_HELP = """\
Show Meta's messaging rules as windowgate applies them: the rules in force at a date, or with
'rules diff FROM TO' what changed between two dates (e.g. the tags retired on 2026-04-27)."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "windowgate decides whether a Facebook page may message a user now under Meta's rules "
            "(24 h window, HUMAN_AGENT, one-time and recurring notification tokens, message tags), "
            "by which mechanism, and why."
        ),
        epilog="Run 'windowgate COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser(
        "replay",
        help="rebuild every user's state from the events topic and compare it with the live "
        "table (options: 'windowgate replay --help')",
        add_help=False,
    )
    decide = commands.add_parser(
        "decide",
        help="decide send requests offline against webhooks read from files",
        description=_DECIDE_HELP,
        epilog=_DECIDE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    decide.add_argument(
        "--webhooks",
        required=True,
        metavar="FILE",
        help="one raw webhook POST body (JSON, exactly as Meta sends it) per line, folded in "
        "file order; blank lines are ignored",
    )
    decide.add_argument(
        "--request",
        "--requests",
        dest="request",
        required=True,
        metavar="FILE",
        help="one SendRequest JSON per line (request_id, page_id, user_id, and optionally "
        "platform, purpose, topic, tag, human_author, message, send_by), decided in order",
    )
    decide.add_argument(
        "--now",
        metavar="ISO8601",
        help="the moment to decide at, e.g. 2026-04-26T12:00:00Z; a date alone is midnight UTC, "
        "no offset means UTC (default: the current time)",
    )
    decide.add_argument(
        "--rules",
        metavar="FILE",
        help="a rules file to use instead of the packaged one (windowgate/core/rules/meta.json)",
    )
    decide.add_argument(
        "--pages",
        metavar="FILE",
        help='the pages file: {"pages": {"<page_id>": {"human_agent": true, "region": "DE"}}}; '
        "a page not listed has no HUMAN_AGENT permission and an unknown region",
    )
    decide.set_defaults(handler=_cmd_decide)

    rules = commands.add_parser(
        "rules",
        help="the rules in force at a date, or what changed between two dates",
        description=_RULES_HELP,
        epilog="examples:\n  windowgate rules --at 2026-04-26\n"
        "  windowgate rules diff 2026-04-26 2026-04-27 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rules.add_argument(
        "--at", metavar="DATE", help="an ISO date or date-time, UTC (default: the current time)"
    )
    rules.add_argument("--json", action="store_true", help="machine-readable output")
    rules.add_argument("--rules", metavar="FILE", help="a rules file instead of the packaged one")
    rules.set_defaults(handler=_cmd_rules)
    rules_commands = rules.add_subparsers(dest="rules_command", metavar="{diff}")
    diff = rules_commands.add_parser(
        "diff",
        help="the rules that came into force, ended or changed between FROM and TO",
        description="The rules that came into force, that ended, and those whose parameters "
        "changed (same id and tag) between two dates.",
    )
    diff.add_argument("start", metavar="FROM", help="an ISO date or date-time, UTC")
    diff.add_argument("end", metavar="TO", help="an ISO date or date-time, UTC")
    # SUPPRESS: `rules --json diff A B` and `rules diff A B --json` both work.
    diff.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    diff.add_argument(
        "--rules",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="a rules file instead of the packaged one",
    )
    diff.set_defaults(handler=_cmd_rules_diff)
    _add_broadcast(commands)
    return parser


SERVICE_COMMANDS = ("replay",)
"""Subcommands that read Kafka: they live with their service and register themselves as entry
points of the group `windowgate.commands` (pyproject.toml), so the CLI never imports a service."""


def service_command(name: str) -> Callable[[list[str]], int]:
    found = entry_points(group="windowgate.commands", name=name)
    if not found:
        raise SystemExit(
            f"windowgate {name}: not installed (the entry point windowgate.commands:{name} is "
            "missing; run 'make install' or 'pip install -e .')"
        )
    command: Callable[[list[str]], int] = next(iter(found)).load()
    return command


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] and args_in[0] in SERVICE_COMMANDS:
        return service_command(args_in[0])(args_in[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.handler(args, sys.stdout))
    except _ParserExit as exc:
        return exc.status
    except InputError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_USAGE
    except GatewayError as exc:  # the gateway said no, or could not be reached
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_FAILED
    except BrokenPipeError:  # `windowgate rules | head`: the reader left, which is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


# ---- windowgate broadcast (the HTTP API of a running gateway) ------------------------------------

DEFAULT_URL = "http://127.0.0.1:8082"
URL_VARIABLE = "WINDOWGATE_URL"
TOKEN_VARIABLE = "WINDOWGATE_API_TOKEN"
BAR_WIDTH = 30


class BroadcastApi(Protocol):
    """What the broadcast commands need of a gateway: `HttpGateway`, or a fake in the tests."""

    async def create_broadcast(self, spec: dict[str, Any]) -> dict[str, Any]: ...
    async def broadcast(self, broadcast_id: str) -> dict[str, Any] | None: ...
    async def pause_broadcast(self, broadcast_id: str) -> dict[str, Any]: ...
    async def resume_broadcast(self, broadcast_id: str) -> dict[str, Any]: ...
    async def cancel_broadcast(self, broadcast_id: str) -> dict[str, Any]: ...
    async def list_broadcasts(self, page_id: str | None = None) -> list[dict[str, Any]]: ...
    async def close(self) -> None: ...


def open_gateway(url: str, token: str) -> BroadcastApi:
    """The gateway the broadcast commands talk to (replaced by a fake in the tests)."""
    return HttpGateway(url, token)


def _connect(args: argparse.Namespace) -> BroadcastApi:
    token = args.token or os.environ.get(TOKEN_VARIABLE, "")
    if not token:
        raise InputError("--token", f"the API token is needed: --token or {TOKEN_VARIABLE}")
    return open_gateway(args.url or os.environ.get(URL_VARIABLE) or DEFAULT_URL, token)


def _counts(counts: Any) -> str:
    if not isinstance(counts, dict) or not counts:
        return "none"
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _when(ms: Any) -> str:
    return ms_to_iso(ms) if isinstance(ms, int) and ms > 0 else "-"


def progress_line(view: dict[str, Any], width: int = BAR_WIDTH) -> str:
    """`[#####.....]  50%  500/1,000 decided · sent 480 · failed 2 · refused 20 · running`."""
    audience, decided = int(view.get("audience") or 0), int(view.get("decided") or 0)
    finished = view.get("status") in ("done", "cancelled")
    share = decided / audience if audience else (1.0 if finished else 0.0)
    filled = min(width, int(share * width))
    refused = sum((view.get("refused") or {}).values())
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {share:4.0%}  "
        f"{decided:,}/{audience:,} decided · sent {int(view.get('sent') or 0):,} · "
        f"failed {int(view.get('failed') or 0):,} · unknown {int(view.get('unknown') or 0):,} · "
        f"refused {refused:,} · {view.get('status')}"
    )


def _show_status(view: dict[str, Any], out: TextIO) -> None:
    out.write(
        f"broadcast {view.get('broadcast_id')} on page {view.get('page_id')}: "
        f"{view.get('status')}\n"
    )
    out.write(f"  {progress_line(view)}\n")
    out.write(
        f"  delivered {int(view.get('delivered') or 0):,}, read {int(view.get('read') or 0):,}; "
        f"by mechanism: {_counts(view.get('by_mechanism'))}; refused: "
        f"{_counts(view.get('refused'))}\n"
    )
    times = f"  created {_when(view.get('created_at'))}, started {_when(view.get('started_at'))}"
    times += f", finished {_when(view.get('finished_at'))}"
    if view.get("not_before"):
        times += f"; not before {view['not_before']}"
    out.write(times + "\n")


def _write_json(data: Any, out: TextIO) -> None:
    out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _print_view(view: dict[str, Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        _write_json(view, out)
    else:
        _show_status(view, out)


def _spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The POST body: --file's JSON, then the flags given on top of it."""
    spec: dict[str, Any] = {}
    if args.file:
        try:
            data = orjson.loads(_read(args.file, "broadcast"))
        except orjson.JSONDecodeError as exc:
            raise InputError(args.file, f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InputError(args.file, "expected one JSON object (the POST /v1/broadcasts body)")
        spec.update(data)
    flags = {"broadcast_id": args.id, "page_id": args.page, "purpose": args.purpose}
    flags["not_before"] = args.not_before
    spec.update({k: v for k, v in flags.items() if v is not None})
    if args.text is not None:
        spec["message"] = {"text": args.text}
    if args.message is not None:
        try:
            spec["message"] = orjson.loads(args.message)
        except orjson.JSONDecodeError as exc:
            raise InputError("--message", f"not JSON: {exc}") from None
    audience = dict(spec.get("audience") or {})
    if args.topic is not None:
        audience["topic"] = args.topic
    for name in ("labels_all", "labels_any", "labels_none", "users"):
        given = getattr(args, name)
        if given:
            audience[name] = given
    if audience:
        spec["audience"] = audience
    if args.dry_run:
        spec["dry_run"] = True
    for name in ("page_id", "message"):
        if name not in spec:
            raise InputError(f"--{'page' if name == 'page_id' else 'text'}", f"{name} is needed")
    return spec


async def _create(args: argparse.Namespace, api: BroadcastApi, out: TextIO) -> int:
    try:
        answer = await api.create_broadcast(_spec_from_args(args))
    except HttpError as exc:
        if exc.status == 400 and exc.body.get("field"):
            where = str(exc.body["field"])
            detail = str(exc.body.get("detail")).removeprefix(f"{where}: ")  # named once
            raise InputError(where, detail) from None
        raise
    if args.json:
        _write_json(answer, out)
    elif answer.get("dry_run"):
        out.write(
            f"dry run of {answer.get('broadcast_id')}: {int(answer.get('audience') or 0):,} "
            f"recipients; would send by {_counts(answer.get('by_mechanism'))}; "
            f"refused: {_counts(answer.get('refused'))} (nothing reserved or sent)\n"
        )
    else:
        broadcast_id = answer.get("broadcast_id")
        what = "created" if answer.get("created") else "already exists with this spec"
        out.write(
            f"broadcast {broadcast_id} {what}: {answer.get('status')}; follow it with "
            f"'windowgate broadcast status {broadcast_id} --follow'\n"
        )
    return EXIT_OK


async def _status(args: argparse.Namespace, api: BroadcastApi, out: TextIO) -> int:
    view = await api.broadcast(args.broadcast_id)
    if view is None:
        raise GatewayError(f"no broadcast {args.broadcast_id!r}")
    if not args.follow:
        _print_view(view, args.json, out)
        return EXIT_OK
    bar = sys.stderr if args.json else out  # --json: stdout holds only the final JSON
    tty = bar.isatty()
    last = ""
    while True:
        line = progress_line(view)
        if line != last:  # a terminal redraws one line; a log gets one line per change
            bar.write(f"\r{line}" if tty else f"{line}\n")
            bar.flush()
            last = line
        if view.get("status") in ("done", "cancelled"):
            break
        await asyncio.sleep(args.every)
        view = await api.broadcast(args.broadcast_id) or view
    if tty:
        bar.write("\n")
    _print_view(view, args.json, out)
    return EXIT_OK


async def _command(args: argparse.Namespace, api: BroadcastApi, out: TextIO) -> int:
    act = {
        "pause": api.pause_broadcast,
        "resume": api.resume_broadcast,
        "cancel": api.cancel_broadcast,
    }[args.broadcast_command]
    try:
        answer = await act(args.broadcast_id)
    except HttpError as exc:
        if exc.status == 404:
            raise GatewayError(f"no broadcast {args.broadcast_id!r}") from None
        raise
    if args.json:
        _write_json(answer, out)
    else:
        line = f"{args.broadcast_command} of {args.broadcast_id} written to "
        line += f"{answer.get('partitions')} partitions"
        if answer.get("confirmed") is True:  # a cancel: every partition has stopped deciding
            line += f"; confirmed: {answer.get('status')}, {answer.get('decided')} decided"
        elif answer.get("confirmed") is False:
            line += f"; NOT confirmed yet: {answer.get('detail')}"
        out.write(line + "\n")
    return EXIT_OK


async def _list(args: argparse.Namespace, api: BroadcastApi, out: TextIO) -> int:
    views = await api.list_broadcasts(args.page)
    if args.json:
        _write_json(views, out)
        return EXIT_OK
    if not views:
        out.write("no broadcasts\n")
    for view in views:
        out.write(
            f"{view.get('broadcast_id')}  {view.get('page_id')}  {_when(view.get('created_at'))}  "
            f"{progress_line(view, 10)}\n"
        )
    return EXIT_OK


def _cmd_broadcast(args: argparse.Namespace, out: TextIO) -> int:
    handler = {
        "create": _create,
        "status": _status,
        "pause": _command,
        "resume": _command,
        "cancel": _command,
        "list": _list,
    }[args.broadcast_command]

    async def go() -> int:
        api = _connect(args)
        try:
            return await handler(args, api, out)
        finally:
            await api.close()

    return asyncio.run(go())


def _add_broadcast(commands: Any) -> None:
    parser = commands.add_parser(
        "broadcast",
        help="create, follow, pause, resume, cancel and list broadcasts on a running gateway",
        description="Broadcasts through the dispatcher's HTTP API (DESIGN.md §4.6): one message "
        "to a page's audience (an OTN topic's token holders, labels, listed users), each "
        "recipient decided at sending time, at most one message per user per broadcast.",
    )
    sub = parser.add_subparsers(dest="broadcast_command", metavar="COMMAND", required=True)

    def leaf(name: str, help_text: str) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        command.add_argument(
            "--url", help=f"the dispatcher's HTTP API (${URL_VARIABLE}, default {DEFAULT_URL})"
        )
        command.add_argument("--token", help=f"an API token (${TOKEN_VARIABLE})")
        command.add_argument("--json", action="store_true", help="machine-readable output")
        command.set_defaults(handler=_cmd_broadcast)
        return command

    create = leaf("create", "start a broadcast (or --dry-run: count it, send nothing)")
    create.add_argument("--file", metavar="FILE", help="the POST /v1/broadcasts body as JSON")
    create.add_argument("--id", help="broadcast_id, your idempotency key (default: generated)")
    create.add_argument("--page", help="page_id")
    create.add_argument("--text", help="the message's text")
    create.add_argument("--message", metavar="JSON", help="Graph's message object instead")
    create.add_argument("--purpose", help="auto (default), otn, recurring, response, ...")
    create.add_argument("--topic", help="audience: holders of a token on this topic")
    for flag, name, text in (
        ("--label-all", "labels_all", "audience: users with this label (repeat: with all)"),
        ("--label-any", "labels_any", "audience: users with this label (repeat: any of them)"),
        ("--label-none", "labels_none", "audience: users without this label (repeatable)"),
        ("--user", "users", "audience: this user (repeatable; the page-scoped id)"),
    ):
        create.add_argument(flag, dest=name, action="append", metavar=name.upper(), help=text)
    create.add_argument("--not-before", metavar="ISO8601", help="start no earlier than this")
    create.add_argument("--dry-run", action="store_true", help="count; reserve and send nothing")
    status = leaf("status", "the status summed over the partitions")
    status.add_argument("broadcast_id")
    status.add_argument("--follow", action="store_true", help="a progress bar until it ends")
    status.add_argument("--every", type=float, default=2.0, help="seconds between polls")
    for name, text in (
        ("pause", "pause: no new recipient is decided until resume"),
        ("resume", "resume a paused broadcast"),
        ("cancel", "cancel: no recipient is decided after this answers"),
    ):
        leaf(name, text).add_argument("broadcast_id")
    listing = leaf("list", "a page's broadcasts, newest first")
    listing.add_argument("--page", help="page_id (default: every page)")
