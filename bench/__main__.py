"""`python -m bench`: the pure core's speed and state size, each beside a same-run reference.

In-process, one thread (pinned to one core where the OS allows), inputs built from Meta's webhook
fixtures with the user ids, mids, tokens and timestamps varied so that state grows like real
traffic: many users, a few events each, spread over days, with the gateway's own decisions folded
in. Every figure is printed next to a reference measured in the same run on the same data, so a
slow machine shows as a slow reference, not as a slow gateway. Nothing here asserts a speed: the
targets are printed for the reader to compare.

    python -m bench            # full run (about a minute)
    python -m bench --quick    # a few seconds, smaller population, fewer repeats
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.results import Figure, print_table, shown, write_results
from schemas.codec import to_wire
from schemas.decision import encode_decision
from schemas.events import (
    Event,
    MessageReceived,
    OtnOptin,
    RequestDecided,
    TokenSpent,
    decode_event,
    encode_event,
)
from schemas.request import SendRequest
from schemas.state import UserState, encode_user_state
from windowgate.core.decide import decide
from windowgate.core.fold import empty_state, fold, is_page_event
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import RuleBook, load_rules
from windowgate.core.timeconst import DAY_MS, HOUR_MS
from windowgate.core.timestamps import ms_to_iso, parse_iso_ms
from windowgate.meta.normalise import normalise

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR_ENV = "WINDOWGATE_SHARED_DIR"

# Messenger pages (15-digit ids, as in Meta's samples) and their settings; one Instagram account.
PAGE_EU = "682498171943165"  # HUMAN_AGENT permitted, region DE: legacy recurring still allowed
PAGE_US = "542998526103632"  # region US, an ad account: marketing messages allowed
IG_ACCOUNT = "17841400000000000"
PAGES = {
    PAGE_EU: PageConfig(page_id=PAGE_EU, human_agent=True, region="DE"),
    PAGE_US: PageConfig(page_id=PAGE_US, region="US", ad_account_id="act_1234567890"),
}
TOKEN_LEN = 32
"""Meta's OTN / recurring tokens are opaque strings; 32 characters is our assumption, stated."""
TOPICS = ("back-in-stock:adidas-sl72", "price-drop:adidas-sl72", "restock:nike-air-max-90")
RN_TOPICS = ("weekly-deals", "daily-digest")
START = parse_iso_ms("2026-05-04T00:00:00Z")
SPAN = 3 * DAY_MS
"""The generated traffic covers three days; decisions are taken one hour after its end."""

# (fixture, weight per 100 bodies): deliveries, reads and echoes outnumber user messages, as on a
# busy page; opt-ins and policy events are rare. 12 (a page-wide block) is left out: it would
# refuse every request of its page and hide everything else.
MIX: tuple[tuple[str, int], ...] = (
    ("01-quick-reply.json", 14),
    ("02-message-from-ad.json", 3),
    ("03-reaction.json", 5),
    ("04-read.json", 18),
    ("05-delivery.json", 18),
    ("06-echo.json", 12),
    ("07-postback-mme.json", 6),
    ("08-lead-referral-seconds.json", 1),
    ("09-otn-optin.json", 5),
    ("10-rn-optin.json", 2),
    ("11-rn-stop-space-spelling.json", 1),
    ("13-standby-message.json", 1),
    ("14-batch-two-entries.json", 4),
    ("15-instagram-message.json", 10),
)


@dataclass(frozen=True)
class Sizes:
    bodies: int
    users: int
    requests: int
    repeats: int


FULL = Sizes(bodies=30_000, users=10_000, requests=20_000, repeats=5)
QUICK = Sizes(bodies=3_000, users=1_000, requests=2_000, repeats=3)


# ---- inputs ------------------------------------------------------------------------------------


def fixtures_dir() -> Path:
    configured = os.environ.get(SHARED_DIR_ENV)
    shared = Path(configured).expanduser() if configured else REPO_ROOT.parent / "shared"
    path = shared / "fixtures" / "meta-webhooks"
    if not path.is_dir():
        sys.exit(f"bench: fixtures not found at {path}; set {SHARED_DIR_ENV} to the shared/ dir")
    return path


class Traffic:
    """Webhook bodies like the fixtures, for many users, with fresh ids and rising timestamps."""

    def __init__(self, sizes: Sizes, seed: int = 20260504) -> None:
        self.rng = random.Random(seed)
        folder = fixtures_dir()
        self.templates = {name: orjson.loads((folder / name).read_bytes()) for name, _ in MIX}
        self.names = [name for name, _ in MIX]
        self.weights = [weight for _, weight in MIX]
        self.users = [
            str(1_000_000_000_000_000 + self.rng.randrange(9 * 10**15)) for _ in range(sizes.users)
        ]
        self.ig_users = [
            str(6_800_000_000_000_000 + i * 7_919) for i in range(sizes.users // 10 or 1)
        ]
        self.serial = 0

    def token(self) -> str:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        return "".join(self.rng.choice(alphabet) for _ in range(TOKEN_LEN))

    def body(self, ts: int) -> bytes:
        name = self.rng.choices(self.names, self.weights)[0]
        body = copy.deepcopy(self.templates[name])
        instagram = body["object"] == "instagram"
        for entry in body["entry"]:
            # Messenger user ids are page-scoped (PSIDs): each user belongs to one page.
            user = self.rng.choice(self.ig_users if instagram else self.users)
            page = IG_ACCOUNT if instagram else (PAGE_EU, PAGE_US)[int(user[-1]) % 2]
            entry["id"] = page
            entry["time"] = ts + 80
            for element in entry.get("messaging", []) + entry.get("standby", []):
                self._element(element, page, user, ts)
        return orjson.dumps(body)

    def _element(self, element: dict[str, Any], page: str, user: str, ts: int) -> None:
        self.serial += 1
        mid = (
            f"m_{self.serial:012d}" + "AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6A"
        )
        echo = isinstance(element.get("message"), dict) and element["message"].get("is_echo")
        sender, recipient = (page, user) if echo else (user, page)
        if "sender" in element:
            element["sender"] = {"id": sender}
        element["recipient"] = {"id": recipient}
        if "timestamp" in element:
            old = element["timestamp"]
            element["timestamp"] = str(ts) if isinstance(old, str) else ts
        for key in ("message", "postback", "reaction"):
            if isinstance(element.get(key), dict) and "mid" in element[key]:
                element[key]["mid"] = mid
        for key in ("read", "delivery"):
            if isinstance(element.get(key), dict):
                element[key]["watermark"] = ts - 2_000
        optin = element.get("optin")
        if isinstance(optin, dict):
            if "one_time_notif_token" in optin:
                optin["one_time_notif_token"] = self.token()
                optin["payload"] = self.rng.choice(TOPICS)
            if "notification_messages_token" in optin:
                optin["notification_messages_token"] = self.token()
                optin["payload"] = self.rng.choice(RN_TOPICS)
                if "token_expiry_timestamp" in optin:
                    optin["token_expiry_timestamp"] = ts + 180 * DAY_MS

    def bodies(self, count: int) -> list[bytes]:
        step = SPAN // count
        return [self.body(START + i * step) for i in range(count)]


KINDS: tuple[tuple[str, float], ...] = (
    ("auto, in window", 0.35),
    ("auto, out of window, with topic", 0.15),
    ("otn", 0.15),
    ("human_agent", 0.10),
    ("tag", 0.10),
    ("recurring", 0.10),
    ("utility", 0.05),
)
"""What callers ask for, and how often; `pick_user` finds a user the caller would ask it for."""


def pick_kind(rng: random.Random) -> str:
    return rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]


def in_window(state: UserState, now: int) -> bool:
    return state.last_opener_at is not None and now < state.last_opener_at + 24 * HOUR_MS


def pick_user(rng: random.Random, kind: str, groups: dict[str, list[UserState]]) -> UserState:
    """Callers mostly ask about users the request makes sense for (their CRM knows who opted in)."""
    wanted = {
        "auto, in window": "in_window",
        "auto, out of window, with topic": "out_of_window",
        "otn": "otn",
        "recurring": "recurring",
    }.get(kind, "all")
    group = groups.get(wanted) or groups["all"]
    return rng.choice(group)


def user_groups(states: Sequence[UserState], now: int) -> dict[str, list[UserState]]:
    return {
        "all": list(states),
        "in_window": [s for s in states if in_window(s, now)],
        "out_of_window": [s for s in states if not in_window(s, now)],
        "otn": [s for s in states if s.otn],
        "recurring": [s for s in states if s.recurring],
    }


def request_for(
    rng: random.Random, kind: str, state: UserState, serial: int, now: int
) -> SendRequest:
    """A realistic request of `kind` for this user, whatever the answer will be."""
    fields: dict[str, Any] = {
        "request_id": f"req-{serial:09d}",
        "page_id": state.page_id,
        "user_id": state.user_id,
        "platform": state.platform,
        "message": {"text": "Your order has shipped"},
        "created_at": now,
    }
    topic = rng.choice(state.otn).topic if state.otn else rng.choice(TOPICS)
    if kind == "auto, out of window, with topic":
        fields["topic"] = topic
    elif kind == "otn":
        fields.update(purpose="otn", topic=topic)
    elif kind == "human_agent":
        fields.update(purpose="human_agent", human_author="agent-17@example.com")
    elif kind == "tag":
        fields.update(purpose="tag", tag=rng.choice(("ACCOUNT_UPDATE", "CUSTOMER_FEEDBACK")))
    elif kind == "recurring":
        rn = state.recurring[0].topic if state.recurring else rng.choice(RN_TOPICS)
        fields.update(purpose="recurring", topic=rn)
    elif kind == "utility":
        fields.update(purpose="utility", message={"template": {"name": "order_shipped_v2"}})
    return SendRequest(**fields)


def event_stream(bodies: list[bytes], rules: RuleBook) -> tuple[list[Event], dict[str, UserState]]:
    """The bodies' events with the gateway's own decisions interleaved (one per ~8 events).

    Built the way the services will produce it: fold as you go, decide a request at the event's
    time, append RequestDecided (and TokenSpent for an allowed token). Returns the stream and the
    states it folds to.
    """
    rng = random.Random(7)
    states: dict[str, UserState] = {}
    stream: list[Event] = []
    serial = 0
    for raw in bodies:
        for event in normalise(orjson.loads(raw)).events:
            stream.append(event)
            if is_page_event(event):
                continue
            state = fold(states.get(event.key) or empty_state(event), event)
            if rng.random() < 0.125:
                serial += 1
                request = request_for(rng, pick_kind(rng), state, serial, event.timestamp)
                decision = decide(state, request, event.timestamp, rules)
                common: dict[str, Any] = {
                    "page_id": state.page_id,
                    "user_id": state.user_id,
                    "timestamp": event.timestamp,
                    "platform": state.platform,
                }
                extra: list[Event] = [
                    RequestDecided(**common, dedup_key=f"d:{serial}", decision=decision)
                ]
                if decision.allowed and decision.token:
                    extra.append(
                        TokenSpent(**common, token=decision.token, request_id=decision.request_id)
                    )
                for follow in extra:
                    state = fold(state, follow)
                stream.extend(extra)
            states[event.key] = state
    return stream, states


# ---- timing ------------------------------------------------------------------------------------


def best_rate(count: int, run: Callable[[], object], repeats: int) -> float:
    """Items per second of the fastest of `repeats` runs (the least disturbed by the machine)."""
    times = []
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return count / min(times)


# ---- the figures -------------------------------------------------------------------------------


def bench_normalise(bodies: list[bytes], repeats: int) -> Figure:
    loads = orjson.loads

    def parse_only() -> None:
        for raw in bodies:
            loads(raw)

    def parse_and_normalise() -> None:
        for raw in bodies:
            normalise(loads(raw))

    value = best_rate(len(bodies), parse_and_normalise, repeats)
    reference = best_rate(len(bodies), parse_only, repeats)
    return Figure(
        "normalise: webhook bodies",
        value,
        "bodies/s",
        f"orjson.loads alone: {reference:,.0f}/s",
        reference,
        "≥ 20,000/s",
        value >= 20_000,
    )


def bench_fold(stream: list[Event], repeats: int) -> tuple[Figure, dict[str, UserState]]:
    user_events = [e for e in stream if not is_page_event(e)]
    result: dict[str, UserState] = {}

    def run_fold() -> None:
        states: dict[str, UserState] = {}
        get = states.get
        for event in user_events:
            key = event.key
            state = get(key)
            states[key] = fold(state if state is not None else empty_state(event), event)
        result.clear()
        result.update(states)

    encoded = [encode_event(e) for e in user_events]

    def run_codec() -> None:
        for event in user_events:
            decode_event(encode_event(event))

    value = best_rate(len(user_events), run_fold, repeats)
    reference = best_rate(len(encoded), run_codec, repeats)
    row = Figure(
        "fold: events",
        value,
        "events/s",
        f"decode_event(encode_event(e)): {reference:,.0f}/s",
        reference,
        "≥ 200,000/s",
        value >= 200_000,
    )
    return row, result


def bench_decide(
    states: dict[str, UserState], rules: RuleBook, count: int, repeats: int
) -> tuple[Figure, dict[str, int], str]:
    rng = random.Random(11)
    now = START + SPAN + HOUR_MS
    groups = user_groups(list(states.values()), now)
    work = []
    for i in range(count):
        kind = pick_kind(rng)
        state = pick_user(rng, kind, groups)
        work.append((state, request_for(rng, kind, state, 10**8 + i, now)))
    page_states = None
    decisions = [decide(s, r, now, rules, page_states) for s, r in work]

    def run_decide() -> None:
        for state, req in work:
            decide(state, req, now, rules, page_states)

    def run_encode() -> None:
        for decision in decisions:
            encode_decision(decision)

    value = best_rate(count, run_decide, repeats)
    reference = best_rate(count, run_encode, repeats)
    split = []
    for allowed in (True, False):
        part = [w for w, d in zip(work, decisions, strict=True) if d.allowed is allowed]
        if part:

            def run_part(part: list[tuple[UserState, SendRequest]] = part) -> None:
                for state, req in part:
                    decide(state, req, now, rules, page_states)

            rate = best_rate(len(part), run_part, repeats)
            what = "allowed" if allowed else "refused (with alternatives)"
            split.append(f"{what} {rate:,.0f}/s ({len(part) * 100 / count:.0f}%)")
    outcomes: dict[str, int] = {}
    for d in decisions:
        label = f"{'allowed' if d.allowed else 'refused'} {d.reason}"
        outcomes[label] = outcomes.get(label, 0) + 1
    row = Figure(
        "decide: decisions",
        value,
        "decisions/s",
        f"encode_decision(result): {reference:,.0f}/s",
        reference,
        "≥ 100,000/s",
        value >= 100_000,
    )
    return row, outcomes, "; ".join(split)


def typical_user(traffic: Traffic) -> UserState:
    """A user with an open window and two OTN tokens, built by folding the events that make it."""
    page, user = PAGE_EU, traffic.users[0]
    now = START + SPAN
    events: list[Event] = [
        MessageReceived(page_id=page, user_id=user, timestamp=now - 2 * HOUR_MS, mid="m_1"),
        OtnOptin(
            page_id=page,
            user_id=user,
            timestamp=now - 90 * 60_000,
            token=traffic.token(),
            topic=TOPICS[0],
        ),
        OtnOptin(
            page_id=page,
            user_id=user,
            timestamp=now - HOUR_MS,
            token=traffic.token(),
            topic=TOPICS[1],
        ),
    ]
    state = UserState(page_id=page, user_id=user)
    for event in events:
        state = fold(state, event)
    return state


def bench_bytes(traffic: Traffic, population: dict[str, UserState]) -> list[Figure]:
    typical = typical_user(traffic)
    size = len(encode_user_state(typical))
    full = len(orjson.dumps(to_wire(typical)))
    states = list(population.values())
    average = statistics.fmean(len(encode_user_state(s)) for s in states)
    without = statistics.fmean(len(encode_user_state(replace(s, decisions=()))) for s in states)
    return [
        Figure(
            "state: window + 2 OTN tokens",
            size,
            "B",
            f"uncompacted JSON: {full:,.0f} B",
            full,
            "≤ 300 B",
            size <= 300,
        ),
        Figure(
            f"state: average of {len(states):,} users",
            average,
            "B",
            f"same, without remembered decisions: {without:,.0f} B",
            without,
            "-",
            None,
        ),
    ]


# ---- main --------------------------------------------------------------------------------------


def pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to CPU {core}"
    return "not pinned (no sched_setaffinity here)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Speed and state size of windowgate's pure core, each beside a reference "
        "measured in the same run. Prints figures; asserts nothing about speed.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run: smaller inputs, fewer repeats"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL

    began = datetime.now(UTC)
    pinned = pin_one_core()
    print(
        f"windowgate bench{' (--quick)' if args.quick else ''}: Python {platform.python_version()} "
        f"on {platform.machine()}, one thread, {pinned}; best of {sizes.repeats} runs"
    )
    rules = load_rules().with_pages(PAGES)
    traffic = Traffic(sizes)
    bodies = traffic.bodies(sizes.bodies)
    stream, _ = event_stream(bodies, rules)
    decided = sum(isinstance(e, RequestDecided) for e in stream)
    print(
        f"inputs: {len(bodies):,} webhook bodies from {len(MIX)} fixture shapes "
        f"({sum(map(len, bodies)) / len(bodies):,.0f} B average) for {sizes.users:,} Messenger and "
        f"{len(traffic.ig_users):,} Instagram users over {ms_to_iso(START)} + 3 days; "
        f"{len(stream):,} events incl. {decided:,} decisions; {sizes.requests:,} requests.\n"
        f"ids: 15-digit page ids, 16-digit user ids, ~70-char mids; OTN/recurring tokens "
        f"{TOKEN_LEN} chars (an assumption: Meta's tokens are opaque strings).\n"
    )

    rows = [bench_normalise(bodies, sizes.repeats)]
    fold_row, population = bench_fold(stream, sizes.repeats)
    rows.append(fold_row)
    decide_row, outcomes, split = bench_decide(population, rules, sizes.requests, sizes.repeats)
    rows.append(decide_row)
    rows += bench_bytes(traffic, population)
    print_table(rows)

    mix = ", ".join(
        f"{label} {n * 100 / sizes.requests:.0f}%"
        for label, n in sorted(outcomes.items(), key=lambda kv: -kv[1])
    )
    print(f"\ndecide by outcome: {split}")
    print(f"decide mix: {mix}")
    print("Ratios are value / reference; targets are the design's, for reading, not asserted.")
    inputs = {
        "bodies": len(bodies),
        "events": len(stream),
        "users": sizes.users,
        "requests": sizes.requests,
        "repeats": sizes.repeats,
        "pinned": pinned,
        "decide_by_outcome": split,
        "decide_mix": mix,
    }
    print(f"written: {shown(write_results('core', rows, args.quick, inputs, began))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
