"""Broadcasts in one window partition, driven as `services.common.partitioned` drives it: commands,
slices in idle turns or riding on input batches, crashes (a batch rolled back, a partition restored
from what was committed), and the counts each partition publishes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.broadcast import (
    Audience,
    BroadcastCommand,
    BroadcastProgress,
    BroadcastSpec,
    decode_progress,
    encode_command,
    recipient_request_id,
)
from schemas.codec import WIRE_VERSION, dumps, to_compact_wire
from schemas.decision import (
    Decision,
    DecisionRecord,
    decode_decision_record,
    encode_decision_record,
)
from schemas.events import (
    LabelAdded,
    MessageDelivered,
    MessageRead,
    MessageReceived,
    OtnOptin,
    SendOutcome,
    UserUnavailable,
    encode_event,
)
from schemas.state import PageState
from services.common.partitioned import Outgoing
from services.window import broadcasts as broadcasts_module
from services.window import partition as partition_module
from services.window.broadcasts import Pacer, dry_run_partition
from services.window.partition import WindowPartition, WindowShared
from services.window.processing import encode_decision_fast, partition_for
from services.window.reach import ReachIndex
from services.window.store import NO_OFFSET, decode_stored_user, encode_stored_user
from tests.unit.builders import PAGE, T0, H
from windowgate.core.rulebook import load_rules

RULES = load_rules()
PARTITIONS = 4
N = 1
TOPIC = "restock"
USERS = [
    u
    for u in (f"u{i:04d}" for i in range(400))
    if partition_for(f"{PAGE}:{u}".encode(), PARTITIONS) == N
]
OTHER = next(
    u
    for u in (f"x{i}" for i in range(100))
    if partition_for(f"{PAGE}:{u}".encode(), PARTITIONS) != N
)
CHANGELOGS = ("t.users-changelog", "t.pages-changelog", "t.broadcasts-changelog")


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def key_of(user: str) -> bytes:
    return f"{PAGE}:{user}".encode()


class Gateway:
    """One partition and the log of everything it committed; `crash()` restores a new partition
    from the committed changelog records, as a new owner would after a fence."""

    def __init__(self) -> None:
        self.now = T0 + H
        self.offsets: Counter[str] = Counter()
        self.log: list[Outgoing] = []
        self.shared = WindowShared(
            bootstrap="unused:9092",
            partitions=PARTITIONS,
            events_topic="t.events",
            requests_topic="t.send-requests",
            decisions_topic="t.decisions",
            dead_letter_topic="t.dead-letter",
            users_changelog=CHANGELOGS[0],
            pages_changelog=CHANGELOGS[1],
            rules=RULES,
            clock=lambda: self.now,
            page_lookup=lambda key: None,
            on_committed=lambda n, results, users, pages: None,
            commands_topic="t.broadcast-commands",
            broadcasts_topic="t.broadcasts",
            broadcasts_changelog=CHANGELOGS[2],
        )
        self.partition = WindowPartition(N, self.shared)

    # ---- input records ----------------------------------------------------------------------

    def rec(self, topic: str, key: bytes, value: bytes) -> Rec:
        offset = self.offsets[topic]
        self.offsets[topic] += 1
        return Rec(topic, N, offset, key, value)

    def event(self, event: Any) -> Rec:
        return self.rec("t.events", event.key.encode(), encode_event(event))

    def command(
        self, kind: Any, broadcast_id: str = "b1", spec: BroadcastSpec | None = None
    ) -> Rec:
        command = BroadcastCommand(
            kind=kind, broadcast_id=broadcast_id, page_id=PAGE, at=self.now, spec=spec
        )
        return self.rec("t.broadcast-commands", broadcast_id.encode(), encode_command(command))

    def create(self, broadcast_id: str = "b1", **fields: Any) -> Rec:
        fields.setdefault("audience", Audience(topic=TOPIC))
        spec = BroadcastSpec(
            broadcast_id=broadcast_id, page_id=PAGE, message={"text": "back in stock"}, **fields
        )
        return self.command("create", broadcast_id, spec)

    # ---- turns --------------------------------------------------------------------------------

    def turn(self, *records: Rec) -> list[Outgoing]:
        """One batch (an idle turn when no records), committed."""
        outputs = self.partition.process(list(records))
        self.log += outputs
        self.partition.committed({})
        return outputs

    def lost_turn(self, *records: Rec) -> None:
        """One batch whose transaction failed: nothing it did counts."""
        self.partition.process(list(records))
        self.partition.rolled_back()

    def crash(self) -> None:
        """A new owner: restored from the committed changelogs only."""
        self.partition.released(clean=False)
        fresh = WindowPartition(N, self.shared)
        fresh._apply_changelog(
            [
                Rec(o.topic, N, i, o.key, o.value)
                for i, o in enumerate(self.log)
                if o.topic in CHANGELOGS
            ]
        )
        fresh.restored()
        self.partition = fresh

    def run_out(self, limit: int = 100) -> int:
        """Idle turns while the partition asks for one now; returns how many."""
        turns = 0
        while self.partition.wants_turn() == 0 and turns < limit:
            self.turn()
            turns += 1
        return turns

    # ---- what was committed -------------------------------------------------------------------

    def decisions(self) -> list[Decision]:
        return [
            decode_decision_record(o.value or b"").decision
            for o in self.log
            if o.topic == "t.decisions"
        ]

    def progress(self, broadcast_id: str = "b1") -> BroadcastProgress:
        key = f"{broadcast_id}:{N}".encode()
        last = [o for o in self.log if o.topic == "t.broadcasts" and o.key == key][-1]
        return decode_progress(last.value or b"")


def optin(user: str, at: int, token: str | None = None) -> OtnOptin:
    return OtnOptin(
        page_id=PAGE, user_id=user, timestamp=at, token=token or f"otn-{user}", topic=TOPIC
    )


def holders(g: Gateway, users: list[str]) -> None:
    """Users holding an OTN token on TOPIC, whose window closed long ago."""
    g.turn(*(g.event(optin(u, T0 - 30 * H)) for u in users))


def test_a_broadcast_fans_out_in_slices_one_decision_per_recipient(monkeypatch: Any) -> None:
    monkeypatch.setattr(broadcasts_module, "SLICE_USERS", 10)
    g = Gateway()
    users = USERS[:25]
    holders(g, users)
    g.turn(g.create())  # the create's own batch carries the first slice
    assert g.progress().status == "running" and g.progress().decided == 10
    assert g.progress().audience == 25  # decided + still ahead in the walk
    assert g.run_out() == 2  # 10 + 5 more keys
    decisions = g.decisions()
    assert sorted(d.user_id for d in decisions) == sorted(users)
    assert {d.request_id for d in decisions} == {recipient_request_id("b1", u) for u in users}
    assert all(d.allowed and d.mechanism == "OTN" for d in decisions)
    assert len({d.token for d in decisions}) == 25  # each its own token
    progress = g.progress()
    assert (progress.status, progress.decided, progress.audience) == ("done", 25, 25)
    assert progress.by_mechanism == {"OTN": 25} and progress.refused == {}
    assert progress.started_at == g.now and progress.finished_at == g.now
    # RequestDecided for every recipient: the events topic alone rebuilds the states
    assert sum(o.topic == "t.events" for o in g.log) == 25
    stored = g.partition.get_user(key_of(users[0]))
    assert stored is not None and stored.state.otn[0].status == "reserved"
    assert g.partition.wants_turn() is None


def test_auto_takes_the_open_window_and_keeps_the_token() -> None:
    g = Gateway()
    holders(g, USERS[:2])
    g.turn(g.event(MessageReceived(page_id=PAGE, user_id=USERS[0], timestamp=g.now - H, mid="m")))
    g.turn(g.create())
    g.run_out()
    by_user = {d.user_id: d for d in g.decisions()}
    assert by_user[USERS[0]].mechanism == "RESPONSE" and by_user[USERS[1]].mechanism == "OTN"
    stored = g.partition.get_user(key_of(USERS[0]))
    assert stored is not None and stored.state.otn[0].status == "available"


def test_pause_stops_new_slices_resume_goes_on_cancel_stops_for_good(monkeypatch: Any) -> None:
    monkeypatch.setattr(broadcasts_module, "SLICE_USERS", 5)
    g = Gateway()
    holders(g, USERS[:20])
    g.turn(g.create())
    assert len(g.decisions()) == 5
    g.turn(g.command("pause"))
    assert g.progress().status == "paused" and g.partition.wants_turn() is None
    g.turn(g.event(MessageReceived(page_id=PAGE, user_id=OTHER, timestamp=g.now, mid="m1")))
    assert len(g.decisions()) == 5  # input batches carry no slice while paused
    g.turn(g.command("resume"))  # the resume's own batch carries a slice
    assert g.progress().status == "running" and len(g.decisions()) == 10
    g.turn(g.command("cancel"))  # cancelled in the batch: no decision in it, nor after
    assert len(g.decisions()) == 10
    assert g.progress().status == "cancelled" and g.progress().finished_at == g.now
    assert g.run_out() == 0
    g.turn(g.command("resume"))
    assert g.progress().status == "cancelled" and len(g.decisions()) == 10


def test_unknown_repeated_and_garbled_commands_are_harmless() -> None:
    g = Gateway()
    holders(g, USERS[:3])
    out = g.turn(g.command("pause", "nobody"), g.command("cancel", "nobody"))
    assert not [o for o in out if o.topic in ("t.broadcasts", "t.dead-letter")]
    g.turn(g.create())
    g.run_out()
    assert len(g.decisions()) == 3
    again = g.turn(g.create())  # same broadcast_id
    g.run_out()
    assert len(g.decisions()) == 3 and not [o for o in again if o.topic == "t.decisions"]
    garbled = g.turn(g.rec("t.broadcast-commands", b"b9", b'{"kind": "launch"}'))
    assert [o.topic for o in garbled] == ["t.dead-letter"]


def test_not_before_schedules_and_the_partition_asks_for_a_turn_then() -> None:
    g = Gateway()
    holders(g, USERS[:3])
    g.turn(g.create(not_before=g.now + 60_000))
    assert g.progress().status == "scheduled"
    assert g.partition.wants_turn() == pytest.approx(60.0)
    assert g.run_out() == 0 and g.decisions() == []
    g.now += 60_000
    assert g.partition.wants_turn() == 0
    g.run_out()
    assert len(g.decisions()) == 3 and g.progress().status == "done"


def test_a_lost_batch_and_a_restore_never_decide_a_user_twice(monkeypatch: Any) -> None:
    monkeypatch.setattr(broadcasts_module, "SLICE_USERS", 7)
    g = Gateway()
    users = USERS[:30]
    holders(g, users)
    g.turn(g.create())
    g.turn()
    g.lost_turn()  # its decisions were never published, its cursor never moved
    g.crash()
    assert g.partition.wants_turn() == 0  # indexing the restored users first
    g.run_out()
    decisions = g.decisions()
    assert Counter(d.user_id for d in decisions) == Counter(users)
    assert len({d.token for d in decisions}) == 30
    assert g.progress().decided == 30 and g.progress().status == "done"


def test_the_cursor_survives_a_restore_between_slices(monkeypatch: Any) -> None:
    monkeypatch.setattr(broadcasts_module, "SLICE_USERS", 4)
    g = Gateway()
    holders(g, USERS[:10])
    g.turn(g.create())
    g.turn()
    g.crash()
    restored = g.partition.broadcasts.broadcasts["b1"]
    assert restored.cursor == sorted(key_of(u) for u in USERS[:10])[7]
    assert restored.progress.decided == 8
    g.run_out()
    assert Counter(d.user_id for d in g.decisions()) == Counter(USERS[:10])


def test_who_joins_while_it_runs_is_in_if_the_walk_has_not_passed_them(monkeypatch: Any) -> None:
    monkeypatch.setattr(broadcasts_module, "SLICE_USERS", 3)
    g = Gateway()
    ordered = sorted(USERS[:10], key=key_of)
    early, late = ordered[1:8], [ordered[0], ordered[9]]
    holders(g, early)
    g.turn(g.create())  # its slice walks ordered[1..3]
    cursor = g.partition.broadcasts.broadcasts["b1"].cursor
    assert cursor is not None and key_of(ordered[0]) < cursor < key_of(ordered[9])
    holders(g, late)  # ordered[0] is behind the cursor, ordered[9] ahead (this batch: 4..6)
    g.run_out()
    got = {d.user_id for d in g.decisions()}
    assert got == {*early, ordered[9]}


def test_labels_choose_the_audience() -> None:
    g = Gateway()
    users = USERS[:4]
    g.turn(
        *(
            g.event(MessageReceived(page_id=PAGE, user_id=u, timestamp=g.now - H, mid=u))
            for u in users
        )
    )
    g.turn(
        g.event(LabelAdded(page_id=PAGE, user_id=users[0], timestamp=T0, label="wine")),
        g.event(LabelAdded(page_id=PAGE, user_id=users[1], timestamp=T0, label="wine")),
        g.event(LabelAdded(page_id=PAGE, user_id=users[1], timestamp=T0, label="vip")),
        g.event(LabelAdded(page_id=PAGE, user_id=users[2], timestamp=T0, label="beer")),
    )
    g.turn(
        g.create(
            purpose="response",
            audience=Audience(labels_any=("wine", "beer"), labels_none=("vip",)),
        )
    )
    g.run_out()
    assert sorted(d.user_id for d in g.decisions()) == sorted([users[0], users[2]])
    assert g.progress().by_mechanism == {"RESPONSE": 2}


def test_refusals_are_counted_by_reason() -> None:
    g = Gateway()
    holders(g, USERS[:2])
    g.turn(g.event(MessageReceived(page_id=PAGE, user_id=USERS[2], timestamp=T0 - 30 * H, mid="m")))
    g.turn(g.create(purpose="response", audience=Audience()))  # every user of the page
    g.run_out()
    progress = g.progress()
    assert progress.refused == {"window_closed": 3} and progress.decided == 3


def test_outcomes_deliveries_and_reads_count_each_recipient_once() -> None:
    g = Gateway()
    holders(g, USERS[:3])
    g.turn(g.create())
    g.run_out()
    sent_at = g.now + 1_000

    def outcome(user: str, status: Any, at: int = sent_at) -> Rec:
        rid = recipient_request_id("b1", user)
        return g.event(
            SendOutcome(page_id=PAGE, user_id=user, timestamp=at, request_id=rid, status=status)
        )

    g.turn(outcome(USERS[0], "unknown"), outcome(USERS[0], "sent"), outcome(USERS[0], "sent"))
    g.turn(outcome(USERS[1], "failed"), outcome(USERS[2], "sent"))
    g.turn(
        outcome(USERS[2], "sent"),
        g.event(
            SendOutcome(
                page_id=PAGE, user_id=USERS[2], timestamp=sent_at, request_id="other", status="sent"
            )
        ),
    )
    progress = g.progress()
    assert (progress.sent, progress.failed, progress.unknown) == (2, 1, 0)
    g.turn(
        g.event(
            MessageDelivered(
                page_id=PAGE, user_id=USERS[0], timestamp=sent_at, watermark=sent_at - 5
            )
        ),
        g.event(
            MessageDelivered(page_id=PAGE, user_id=USERS[2], timestamp=sent_at, watermark=sent_at)
        ),
        g.event(
            MessageDelivered(
                page_id=PAGE, user_id=USERS[2], timestamp=sent_at, watermark=sent_at + 9
            )
        ),
        g.event(
            MessageRead(page_id=PAGE, user_id=USERS[0], timestamp=sent_at, watermark=sent_at + 9)
        ),
    )
    progress = g.progress()
    assert (progress.delivered, progress.read) == (2, 1)  # USERS[0]'s read implies its delivery
    g.crash()  # the per-recipient records come back: nothing counts twice after a restore
    g.turn(
        g.event(
            MessageRead(page_id=PAGE, user_id=USERS[0], timestamp=sent_at, watermark=sent_at + 20)
        )
    )
    g.turn(outcome(USERS[0], "sent"))
    assert g.partition.broadcasts.broadcasts["b1"].progress.read == 1
    assert g.partition.broadcasts.broadcasts["b1"].progress.sent == 2


def test_a_dry_run_counts_what_would_happen_and_reserves_nothing() -> None:
    g = Gateway()
    holders(g, USERS[:3])
    g.turn(g.event(MessageReceived(page_id=PAGE, user_id=USERS[0], timestamp=g.now - H, mid="m")))
    g.turn(g.event(MessageReceived(page_id=PAGE, user_id=USERS[3], timestamp=T0 - 30 * H, mid="n")))
    spec = BroadcastSpec(
        broadcast_id="dry", page_id=PAGE, message={"text": "hi"}, audience=Audience(topic=TOPIC)
    )
    before = dict(g.partition.users)
    p = g.partition
    slow = dry_run_partition(p.broadcasts, spec, g.now, p.peek_state, None)
    assert (slow.audience, slow.by_mechanism, slow.refused) == (3, {"OTN": 2, "RESPONSE": 1}, {})
    everyone = replace(spec, audience=Audience(), purpose="response")
    part = dry_run_partition(p.broadcasts, everyone, g.now, p.peek_state, None)
    assert (part.audience, part.by_mechanism, part.refused) == (
        4,
        {"RESPONSE": 1},
        {"window_closed": 3},
    )
    blocked = PageState(page_id=PAGE, blocked_at=T0)
    part = dry_run_partition(p.broadcasts, spec, g.now, p.peek_state, blocked)
    assert part.refused == {"page_restricted": 3}
    # the cheap path: the summaries answer without reading a state
    assess_all(g)
    fast = dry_run_partition(p.broadcasts, spec, g.now, lambda key: None, None)
    assert (fast.audience, fast.by_mechanism, fast.refused) == (3, {"OTN": 2, "RESPONSE": 1}, {})
    assert g.partition.users == before and g.log[-1].topic != "t.decisions"


def assess_all(g: Gateway, at: int | None = None) -> None:
    """Every user assessed by a reach index, whose listener keeps the dry run's summaries (as the
    worker wires it)."""
    reach = ReachIndex(RULES, lambda key: None, g.now)
    broadcasts = g.partition.broadcasts
    reach.listener = lambda key, n, state, verdicts, now: broadcasts.summarise(
        key, state, verdicts, now
    )
    for key, raw in g.partition.users.items():
        reach.mark(key, N, decode_stored_user(raw).state)
    reach.flush(g.now if at is None else at)


def test_the_dry_runs_cheap_path_answers_what_deciding_in_full_answers() -> None:
    g = Gateway()
    users = USERS[:8]
    holders(g, users[:5])  # window closed, a token each
    g.turn(
        g.event(MessageReceived(page_id=PAGE, user_id=users[0], timestamp=g.now - H, mid="a")),
        g.event(optin(users[5], T0 - 400 * 24 * H)),  # a token over a year old
        g.event(MessageReceived(page_id=PAGE, user_id=users[6], timestamp=g.now - 2 * H, mid="b")),
        g.event(UserUnavailable(page_id=PAGE, user_id=users[1], timestamp=g.now - H)),
        g.event(LabelAdded(page_id=PAGE, user_id=users[7], timestamp=T0, label="vip")),
    )
    g.turn(g.create("spent", purpose="otn"))  # users[2..4]'s tokens are used by another broadcast
    g.run_out()
    g.turn(g.event(optin(users[4], g.now - H, token="again")))  # users[4] opts in again
    assess_all(g)
    p = g.partition
    for audience, purpose in [
        (Audience(topic=TOPIC), "auto"),
        (Audience(topic=TOPIC), "otn"),
        (Audience(), "auto"),
        (Audience(), "response"),
        (Audience(labels_none=("vip",)), "auto"),
        (Audience(users=tuple(users)), "response"),
    ]:
        spec = BroadcastSpec(
            broadcast_id="dry",
            page_id=PAGE,
            message={"text": "hi"},
            audience=audience,
            purpose=purpose,
        )
        for at in (g.now, g.now + 23 * H):  # later: users[6]'s window ended since
            fast = dry_run_partition(p.broadcasts, spec, at, p.peek_state, None).wire()
            saved, p.broadcasts.summaries = p.broadcasts.summaries, {}
            full = dry_run_partition(p.broadcasts, spec, at, p.peek_state, None).wire()
            p.broadcasts.summaries = saved
            assert fast == full, (audience, purpose, at)
    everyone = BroadcastSpec(broadcast_id="d", page_id=PAGE, message={"text": "hi"})
    counted = dry_run_partition(p.broadcasts, everyone, g.now, lambda key: None, None)
    assert counted.refused == {"user_unavailable": 1, "window_closed": 5}
    assert counted.by_mechanism == {"RESPONSE": 2}


# ---- the property: at most one decision per (broadcast, user), whatever happens ----------------

Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["optin", "message", "label"]), st.integers(0, 11)),
        st.tuples(st.sampled_from(["create", "pause", "resume", "cancel"]), st.integers(0, 1)),
        st.tuples(st.sampled_from(["turn", "lost", "crash", "later"]), st.just(0)),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps)
def test_any_interleaving_decides_each_user_at_most_once_per_broadcast(plan: list[Step]) -> None:
    saved = broadcasts_module.SLICE_USERS
    broadcasts_module.SLICE_USERS = 3
    try:
        g = Gateway()
        pending: list[Rec] = []
        tokens = 0
        for kind, n in plan:
            user = USERS[n]
            if kind == "optin":
                tokens += 1
                pending.append(g.event(optin(user, g.now - H, token=f"t{tokens}")))
            elif kind == "message":
                pending.append(
                    g.event(
                        MessageReceived(
                            page_id=PAGE, user_id=user, timestamp=g.now, mid=f"m{g.now}"
                        )
                    )
                )
            elif kind == "label":
                pending.append(
                    g.event(LabelAdded(page_id=PAGE, user_id=user, timestamp=g.now, label="vip"))
                )
            elif kind == "create":
                audience = Audience(topic=TOPIC) if n == 0 else Audience(labels_all=("vip",))
                purpose: Any = "auto" if n == 0 else "response"
                pending.append(g.create(f"b{n}", audience=audience, purpose=purpose))
            elif kind in ("pause", "resume", "cancel"):
                pending.append(g.command(kind, f"b{n}"))
            elif kind == "turn":
                g.turn(*pending)
                pending = []
            elif kind == "lost":
                g.lost_turn(*pending)  # the records come again in the next batch
            elif kind == "crash":
                g.crash()
            else:
                g.now += 60_000
        g.turn(*pending)
        g.run_out(limit=200)
        decisions = g.decisions()
        per_recipient = Counter(d.request_id for d in decisions)
        assert all(n == 1 for n in per_recipient.values()), per_recipient
        used = Counter(d.token for d in decisions if d.allowed and d.token is not None)
        assert all(n == 1 for n in used.values()), used
    finally:
        broadcasts_module.SLICE_USERS = saved


# ---- the recipients' hot path: generated encoders, byte for byte the generic ones ---------------


def test_the_fast_encoders_write_what_the_generic_ones_write() -> None:
    g = Gateway()
    holders(g, USERS[:6])
    g.turn(g.event(MessageReceived(page_id=PAGE, user_id=USERS[0], timestamp=g.now - H, mid="m")))
    g.turn(g.create(audience=Audience()))  # refusals too (no token, window closed): alternatives
    g.turn(g.create("b2", purpose="response", audience=Audience()))
    g.run_out()
    decisions = g.decisions()
    assert any(d.alternatives for d in decisions) and any(d.allowed for d in decisions)
    for decision in decisions:
        for message in (None, {"text": "hi", "quick_replies": [{"title": "ok"}]}):
            for fields in (None, {"notification_type": "SILENT_PUSH"}):
                expected = encode_decision_record(DecisionRecord(decision, message, fields))
                assert encode_decision_fast(decision, message, fields) == expected
    for raw in g.partition.users.values():
        stored = decode_stored_user(raw)
        wire = to_compact_wire(stored.state)
        wire["v"] = WIRE_VERSION
        if stored.request_offset != NO_OFFSET:
            wire["ro"] = stored.request_offset
        assert encode_stored_user(stored) == dumps(wire)


def test_own_request_decided_events_read_back_are_not_folded_again(monkeypatch: Any) -> None:
    folded: list[bytes | None] = []
    real = partition_module.process_event_record

    def counted(tables: Any, key: Any, value: Any, *rest: Any) -> Any:
        folded.append(value)
        return real(tables, key, value, *rest)

    monkeypatch.setattr(partition_module, "process_event_record", counted)
    g = Gateway()
    holders(g, USERS[:3])
    out = g.turn(g.create())
    written = [o for o in out if o.topic == "t.events"]
    assert len(written) == 3
    before = dict(g.partition.users)
    echoes = [g.rec("t.events", o.key or b"", o.value or b"") for o in written]
    folded.clear()
    back = g.partition.process(echoes)
    g.partition.committed({})
    assert folded == []  # not decoded, not folded
    assert not [o for o in back if o.topic == CHANGELOGS[0]] and g.partition.users == before
    assert g.partition._echoes == {}  # each read back once
    # read again (a redelivery after the first read was forgotten): folded, and a no-op
    again = g.partition.process(echoes)
    assert not [o for o in again if o.topic == CHANGELOGS[0]] and len(folded) == 3
    g.partition.rolled_back()
    lost = g.partition.process([g.create("b2", audience=Audience(topic=TOPIC))])
    g.partition.rolled_back()  # never committed: not remembered as ours
    assert g.partition._echoes == {} and lost


def test_the_pacer_keeps_slices_apart_and_the_partition_waits_for_it() -> None:
    clock = [100.0]
    pacer = Pacer(2.0, clock=lambda: clock[0])
    assert pacer.wait() == 0
    pacer.spent(0.05)  # a 50 ms slice: 100 ms for everything else
    assert pacer.wait() == pytest.approx(0.1)
    clock[0] += 0.1
    assert pacer.wait() == 0
    g = Gateway()
    g.shared.pacer = Pacer(1.0, clock=lambda: clock[0])
    holders(g, USERS[:5])
    g.shared.pacer.spent(1.0)
    g.turn(g.create())
    assert g.decisions() == [] and g.partition.wants_turn() == pytest.approx(1.0)
    clock[0] += 1.0
    assert g.partition.wants_turn() == 0
    g.run_out()
    assert len(g.decisions()) == 5


def test_a_lost_create_leaves_no_walk_behind(monkeypatch: Any) -> None:
    monkeypatch.setattr(broadcasts_module, "SLICE_USERS", 2)
    g = Gateway()
    holders(g, USERS[:4])
    g.lost_turn(g.create())  # its slice built a walk; the transaction failed
    holders(g, USERS[4:8])  # joiners of that walk's set, committed
    g.turn(g.create())
    g.run_out()
    assert Counter(d.user_id for d in g.decisions()) == Counter(USERS[:8])


def test_labels_any_walks_the_union_of_its_labels_and_takes_late_joiners(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(broadcasts_module, "SLICE_USERS", 2)
    g = Gateway()
    ordered = sorted(USERS[:12], key=key_of)

    def label(user: str, name: str) -> Rec:
        return g.event(LabelAdded(page_id=PAGE, user_id=user, timestamp=T0, label=name))

    g.turn(
        *(
            g.event(MessageReceived(page_id=PAGE, user_id=u, timestamp=g.now - H, mid=u))
            for u in ordered
        )
    )
    g.turn(label(ordered[0], "wine"), label(ordered[1], "beer"), label(ordered[2], "wine"))
    g.turn(g.create(purpose="response", audience=Audience(labels_any=("wine", "beer"))))
    walk = g.partition.broadcasts._walks["b1"]
    assert walk.keys == [key_of(u) for u in ordered[:3]]  # the union, not the page
    assert (g.progress().decided, g.progress().audience) == (2, 3)
    g.turn(label(ordered[11], "beer"))  # ahead of the cursor: in
    g.run_out()
    assert sorted(d.user_id for d in g.decisions()) == sorted([*ordered[:3], ordered[11]])
    assert (g.progress().status, g.progress().audience) == ("done", 4)
