"""Reach aggregates: how many users of a page each mechanism can reach *now*, without a scan.

`GET /v1/pages/{page_id}/reach` must answer for a million-user page in milliseconds, so nothing
is computed per call. Instead every worker keeps, for the partitions it owns, counters that are
updated when a user's state changes:

- `user_facts(state, now, rules)` turns one user's state into *facts*: `(label, until)` pairs,
  read off `windowgate.core.decide.assess` (the same verdicts the user endpoint and `decide` give,
  never a second copy of the rules): "reachable by RESPONSE until 10:42", "holds an OTN token for
  topic X until next May", ... `until` is the verdict's `valid_until` (None: no end).
- An `ExpiringCounter` per (page, partition, label) counts facts whose `until` is still ahead.
  A heap of the distinct `until` times lets "count at now" expire what ended since the last call
  in O(expired · log n): a window that closes drops out of "reachable now" on time, with no event.
  "Expiring within 7 days" is the difference of two counters, the second shifted by 7 days.
- State changes arrive through `mark` (the agents call it after a write) and are applied by
  `flush`, off the fold path and coalesced per user (the worker flushes every
  `WINDOW_REACH_FLUSH_S`).
- Counters only ever drop a fact on time; what starts counting later is found by re-assessing
  the user at the exact instant one of its verdicts can change (`Verdict.changes_at`: a grant
  ends and another token may take over, a cooldown ends), and every user when a rule of the rule
  book starts or ends. Between those instants `assess` and the counters agree by construction.
- Partitions come and go with rebalances: `drop_partition` forgets one at once, and the worker
  rescans a newly assigned partition from its table before reporting it (`complete_partition`).

Each worker reports per-partition counts; the endpoint sums them over the partition owners the
faust router knows, and says whether every partition was covered (`services.window.web`).
"""

from __future__ import annotations

import heapq
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from schemas.state import UserState
from windowgate.core.decide import Verdict, assess
from windowgate.core.rulebook import RuleBook
from windowgate.core.timeconst import DAY_MS

EXPIRING_SOON_MS = 7 * DAY_MS

Fact = tuple[str, int | None]


class ExpiringCounter:
    """Counts values that expire at `until` (epoch ms, or None: never); `count(now)` is the number
    of values with `until > now`. Values are added and removed by their `until`."""

    __slots__ = ("_heap", "_multiplicity", "forever", "live", "swept")

    def __init__(self) -> None:
        self.forever = 0
        self.live = 0  # values with until > swept
        self.swept = -1  # every value with until <= swept has been counted out
        self._multiplicity: dict[int, int] = {}
        self._heap: list[int] = []

    def add(self, until: int | None) -> None:
        if until is None:
            self.forever += 1
            return
        if until <= self.swept:
            return
        count = self._multiplicity.get(until, 0)
        if count == 0:
            heapq.heappush(self._heap, until)
        self._multiplicity[until] = count + 1
        self.live += 1

    def remove(self, until: int | None) -> None:
        if until is None:
            self.forever -= 1
            return
        if until <= self.swept:
            return  # counted out already
        count = self._multiplicity[until]
        if count == 1:
            del self._multiplicity[until]  # its heap entry is dropped lazily
        else:
            self._multiplicity[until] = count - 1
        self.live -= 1
        if len(self._heap) > 2 * len(self._multiplicity) + 64:
            self._heap = list(self._multiplicity)
            heapq.heapify(self._heap)

    def count(self, now: int) -> int:
        heap = self._heap
        while heap and heap[0] <= now:
            self.live -= self._multiplicity.pop(heapq.heappop(heap), 0)
        self.swept = max(self.swept, now)
        return self.forever + self.live

    def __bool__(self) -> bool:
        return bool(self.forever or self._multiplicity)


def _label(kind: str, name: str) -> str:
    return sys.intern(f"{kind}:{name}")


def user_facts(
    state: UserState, now: int, rules: RuleBook, verdicts: list[Verdict] | None = None
) -> tuple[tuple[Fact, ...], int | None]:
    """What `assess` says this user can be reached by now, and until when; and the first instant
    at which time alone may change one of its verdicts (None: only an event or a rule change can),
    when the index must re-assess the user.

    Page-wide blocks are left out (the page's state is applied when the counts are read), so a
    page block or unblock does not need every user re-assessed.
    """
    facts: list[Fact] = [("users", None)]
    reach: dict[str, int | None] = {}
    tokens: dict[tuple[str, str], int | None] = {}
    recheck: int | None = None
    for verdict in assess(state, now, rules) if verdicts is None else verdicts:
        changes = verdict.changes_at
        if changes is not None and (recheck is None or changes < recheck):
            recheck = changes
        if not verdict.allowed:
            continue
        if verdict.mechanism is None:
            continue
        mechanism = verdict.mechanism
        until = verdict.valid_until
        if mechanism == "OTN" and verdict.topic is not None:
            otn, until = _otn_facts(state, verdict.topic, verdict.token, until, now, tokens)
            facts += otn
        elif verdict.token is not None:
            tokens[(mechanism, verdict.token)] = until
        if mechanism in reach:
            held = reach[mechanism]
            reach[mechanism] = None if held is None or until is None else max(held, until)
        else:
            reach[mechanism] = until
        if verdict.tag is not None and mechanism == "MESSAGE_TAG":
            facts.append((_label("tag", verdict.tag), until))
    facts += [(_label("users", name), until) for name, until in reach.items()]
    for (name, _), until in tokens.items():
        if until is not None:
            facts.append((_label("tokens", name), until))
            facts.append((_label("tokens_after_7d", name), until - EXPIRING_SOON_MS))
    return tuple(facts), recheck


def _otn_facts(
    state: UserState,
    topic: str,
    token: str | None,
    until: int | None,
    now: int,
    tokens: dict[tuple[str, str], int | None],
) -> tuple[list[Fact], int | None]:
    """The usable OTN tokens of `topic`, and until when the user can be reached on it. The verdict
    names the oldest token and its end; the others of the topic share its lifetime (the rule's
    `token_days`), read off that verdict."""
    oldest = next((t for t in state.otn if t.token == token), None)
    if oldest is None or until is None:
        return [(_label("otn_users", topic), until), (_label("otn_tokens", topic), until)], until
    lifetime = until - oldest.created_at
    facts: list[Fact] = []
    latest = until
    for held in state.otn:
        if held.topic == topic and held.status == "available":
            ends = held.created_at + lifetime
            if ends > now:
                facts.append((_label("otn_tokens", topic), ends))
                tokens[("OTN", held.token)] = ends
                latest = max(latest, ends)
    facts.append((_label("otn_users", topic), latest))
    return facts, latest


def rule_boundaries(rules: RuleBook) -> list[int]:
    """Every moment a rule starts or ends: counts computed before it may be wrong after it."""
    moments = {
        moment
        for rule in rules.rules
        for moment in (rule.effective_from, rule.effective_until)
        if moment is not None
    }
    return sorted(moments)


@dataclass(slots=True)
class _Indexed:
    page_id: str
    partition: int
    facts: tuple[Fact, ...]
    recheck_at: int | None  # the one live entry of this user in the re-check heap


Counters = dict[str, ExpiringCounter]


class ReachIndex:
    """Per-(page, partition) counters of the users this worker owns; see the module docstring."""

    def __init__(
        self,
        rules: RuleBook,
        read_state: Callable[[bytes], UserState | None],
        now: int,
    ) -> None:
        self.rules = rules
        self.read_state = read_state
        self._users: dict[bytes, _Indexed] = {}
        self._keys_by_partition: dict[int, set[bytes]] = {}
        self._counters: dict[tuple[str, int], Counters] = {}
        self._dirty: dict[bytes, tuple[int, UserState]] = {}
        self._rechecks: list[tuple[int, bytes]] = []
        self._stale: deque[bytes] = deque()
        self.complete: set[int] = set()
        self._boundaries = rule_boundaries(rules)
        self._next_boundary = self._boundary_after(now)
        self.listener: Callable[[bytes, int, UserState, list[Verdict], int], None] | None = None
        """Told each user's state and `assess` verdicts as they are applied, with the time they
        were assessed at (the broadcasts' dry-run summaries)."""

    # ---- updates ---------------------------------------------------------------------------------

    def mark(self, key: bytes, partition: int, state: UserState) -> None:
        """The user's state changed (applied at the next `flush`)."""
        self._dirty[key] = (partition, state)

    @property
    def pending(self) -> int:
        return len(self._dirty) + len(self._stale)

    def flush(self, now: int, limit: int | None = None) -> int:
        """Apply up to `limit` pending changes, then re-checks; returns how many were applied.

        Re-checks (a verdict that may have changed, a rule that started or ended) re-read the
        user's state from the table at their turn, so they never block the loop for long.
        """
        if self._next_boundary is not None and now >= self._next_boundary:
            self._next_boundary = self._boundary_after(now)
            self._stale.extend(self._users)
        rechecks = self._rechecks
        while rechecks and rechecks[0][0] <= now:
            at, key = heapq.heappop(rechecks)
            indexed = self._users.get(key)
            if indexed is not None and indexed.recheck_at == at:  # else superseded or dropped
                indexed.recheck_at = None
                self._stale.append(key)
        done = 0
        dirty = self._dirty
        while dirty and (limit is None or done < limit):
            key = next(iter(dirty))
            partition, state = dirty.pop(key)
            self._set(key, partition, state, now)
            done += 1
        stale = self._stale
        while stale and (limit is None or done < limit):
            key = stale.popleft()
            indexed = self._users.get(key)
            fresh = self.read_state(key) if indexed is not None else None
            if indexed is not None and fresh is not None:
                self._set(key, indexed.partition, fresh, now)
            done += 1
        return done

    def _set(self, key: bytes, partition: int, state: UserState, now: int) -> None:
        previous = self._users.get(key)
        if previous is not None:
            self._apply(previous.page_id, previous.partition, previous.facts, remove=True)
        verdicts = assess(state, now, self.rules)
        facts, recheck_at = user_facts(state, now, self.rules, verdicts)
        self._users[key] = _Indexed(state.page_id, partition, facts, recheck_at)
        if self.listener is not None:
            self.listener(key, partition, state, verdicts, now)
        self._keys_by_partition.setdefault(partition, set()).add(key)
        self._apply(state.page_id, partition, facts, remove=False)
        if recheck_at is not None:
            heapq.heappush(self._rechecks, (recheck_at, key))
            if len(self._rechecks) > 2 * len(self._users) + 64:  # superseded entries pile up
                self._rechecks = [
                    (i.recheck_at, k) for k, i in self._users.items() if i.recheck_at is not None
                ]
                heapq.heapify(self._rechecks)

    def _apply(self, page_id: str, partition: int, facts: Iterable[Fact], remove: bool) -> None:
        counters = self._counters.setdefault((page_id, partition), {})
        for label, until in facts:
            counter = counters.get(label)
            if counter is None:
                counter = counters[label] = ExpiringCounter()
            if remove:
                counter.remove(until)
            else:
                counter.add(until)

    def _boundary_after(self, now: int) -> int | None:
        return next((b for b in self._boundaries if b > now), None)

    # ---- partitions ------------------------------------------------------------------------------

    def complete_partition(self, partition: int) -> None:
        """Every user of `partition` has been marked: its counts may be reported."""
        self.complete.add(partition)

    def drop_partition(self, partition: int) -> None:
        """Forget a partition this worker no longer owns (its new owner counts it)."""
        self.complete.discard(partition)
        for key in self._keys_by_partition.pop(partition, set()):
            self._users.pop(key, None)
        for key in [k for k, (p, _) in self._dirty.items() if p == partition]:
            del self._dirty[key]
        for page_partition in [pp for pp in self._counters if pp[1] == partition]:
            del self._counters[page_partition]

    @property
    def partitions(self) -> set[int]:
        return set(self._keys_by_partition) | self.complete

    # ---- reading ---------------------------------------------------------------------------------

    def partials(self, page_id: str, now: int) -> dict[int, dict[str, int]]:
        """Counts at `now` per complete partition: `{partition: {label: count}}`."""
        out: dict[int, dict[str, int]] = {}
        for partition in sorted(self.complete):
            counters = self._counters.get((page_id, partition), {})
            counts = {label: c.count(now) for label, c in counters.items()}
            out[partition] = {label: n for label, n in counts.items() if n}
        return out

    def users(self) -> int:
        return len(self._users)

    def facts(self, key: bytes) -> tuple[Fact, ...] | None:
        """The user's facts as of the last flush (None: not indexed): the dry run's cheap path."""
        indexed = self._users.get(key)
        return None if indexed is None else indexed.facts


def combine(partials: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum per-partition counts into page totals."""
    total: dict[str, int] = {}
    for counts in partials:
        for label, n in counts.items():
            total[label] = total.get(label, 0) + n
    return total
