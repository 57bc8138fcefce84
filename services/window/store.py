"""How the window service stores a user: the folded `UserState` plus one replay marker.

The table value is the compact `UserState` JSON (readable by `decode_user_state`, which ignores
unknown keys) with one extra key, `ro`: the offset of the last `send-requests` record applied to
this user. Records of one user are applied in partition order, so a record at an offset `<= ro` is
one this user's state has already absorbed: a redelivery, not a new request (with transactions a
committed state and its input offsets move together, so this is a second line of defence). The
request step uses it to re-emit the remembered decision instead of answering "duplicate" to its
own replay (see `processing`).

`Tables` is the storage the shared fold step needs; the worker binds it to a partition's state and
its batch (`partition`), the replay and the unit tests to plain dicts.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Protocol

from schemas.codec import WIRE_VERSION, SchemaError, compact_encoder, decode_as, dumps, loads
from schemas.state import PageState, UserState, decode_page_state, encode_page_state

NO_OFFSET = -1
"""`request_offset` of a user no send request has touched yet."""


@dataclass(frozen=True, slots=True)
class StoredUser:
    state: UserState
    request_offset: int = NO_OFFSET


_encode_state = compact_encoder(UserState)
"""`to_compact_wire` for states, generated once (4x faster: every decided or folded user is
encoded once per batch, a broadcast's recipients included)."""


def encode_stored_user(stored: StoredUser) -> bytes:
    wire = _encode_state(stored.state)
    wire["v"] = WIRE_VERSION
    if stored.request_offset != NO_OFFSET:
        wire["ro"] = stored.request_offset
    return dumps(wire)


def decode_stored_user(raw: bytes) -> StoredUser:
    data = loads(raw, "stored user state")
    state = decode_as(UserState, data)
    offset = data.get("ro", NO_OFFSET)
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise SchemaError("ro", f"expected an integer offset, got {offset!r}")
    return StoredUser(state, offset)


class Tables(Protocol):
    """Per-user state by key `"<page_id>:<user_id>"` and page-wide state by key `"<page_id>:"`
    (keys as bytes: the topics' key encoding)."""

    def get_user(self, key: bytes) -> StoredUser | None: ...

    def put_user(self, key: bytes, stored: StoredUser) -> None: ...

    def get_page(self, key: bytes) -> PageState | None: ...

    def put_page(self, key: bytes, state: PageState) -> None: ...


class DecodeCache:
    """Decoded values of the last `size` raw table values, so hot users are not decoded per event.

    A hit needs the raw bytes to be *equal* to the cached ones, so a stale entry can never be
    returned: the table stays the only truth, this only skips re-decoding identical bytes.
    """

    def __init__(self, size: int = 50_000) -> None:
        self.size = size
        self._entries: dict[bytes, tuple[bytes, StoredUser]] = {}
        self.hits = 0
        self.misses = 0

    def decode(self, key: bytes, raw: bytes) -> StoredUser:
        entry = self._entries.get(key)
        if entry is not None and entry[0] == raw:
            self.hits += 1
            return entry[1]
        self.misses += 1
        stored = decode_stored_user(raw)
        self.remember(key, raw, stored)
        return stored

    def remember(self, key: bytes, raw: bytes, stored: StoredUser) -> None:
        entries = self._entries
        if key not in entries and len(entries) >= self.size:
            del entries[next(iter(entries))]  # oldest insertion first: cheap and good enough
        entries[key] = (raw, stored)

    def clear(self) -> None:
        self._entries.clear()


class BytesTables:
    """`Tables` over two byte mappings.

    The values are the exact bytes the worker stores, so the replay, the unit tests and the worker
    exercise the same encoding.
    """

    def __init__(
        self,
        users: MutableMapping[bytes, bytes],
        pages: MutableMapping[bytes, bytes],
        cache: DecodeCache | None = None,
    ) -> None:
        self.users = users
        self.pages = pages
        self.cache = cache if cache is not None else DecodeCache()

    def get_user(self, key: bytes) -> StoredUser | None:
        raw = self.users.get(key)
        return None if raw is None else self.cache.decode(key, raw)

    def put_user(self, key: bytes, stored: StoredUser) -> None:
        raw = encode_stored_user(stored)
        self.users[key] = raw
        self.cache.remember(key, raw, stored)

    def get_page(self, key: bytes) -> PageState | None:
        raw = self.pages.get(key)
        return None if raw is None else decode_page_state(raw)

    def put_page(self, key: bytes, state: PageState) -> None:
        self.pages[key] = encode_page_state(state)


class MemoryTables:
    """`Tables` over decoded objects: the replay's fast path (no re-encoding)."""

    def __init__(self) -> None:
        self.users: dict[bytes, StoredUser] = {}
        self.pages: dict[bytes, PageState] = {}

    def get_user(self, key: bytes) -> StoredUser | None:
        return self.users.get(key)

    def put_user(self, key: bytes, stored: StoredUser) -> None:
        self.users[key] = stored

    def get_page(self, key: bytes) -> PageState | None:
        return self.pages.get(key)

    def put_page(self, key: bytes, state: PageState) -> None:
        self.pages[key] = state
