"""A bounded set of recently acknowledged keys: makes Meta's redeliveries cheap, never correct.

Meta redelivers for up to 36 h, so most duplicates arrive long after any cache of this size has
forgotten them; downstream idempotence (every event carries its `dedup_key` and the fold applies
a fact once) is what makes duplicates harmless. This cache only saves re-producing records the
broker acknowledged a moment ago. Keys enter it only after an acknowledgement, so a body that was
answered 503 is published again in full on Meta's retry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class RecentKeys:
    """Insertion-ordered, bounded: the oldest key leaves when a new one would exceed `capacity`.

    An OrderedDict, not a dict: popping a plain dict's first key again and again leaves a trail
    of deleted slots that `next(iter(d))` has to walk; `popitem(last=False)` is O(1).
    Capacity 0 turns the cache off (everything is "new").
    """

    __slots__ = ("_capacity", "_keys")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be 0 or more, got {capacity}")
        self._capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str) -> None:
        if self._capacity == 0:
            return
        keys = self._keys
        if key in keys:
            return
        if len(keys) >= self._capacity:
            keys.popitem(last=False)
        keys[key] = None

    def update(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.add(key)
