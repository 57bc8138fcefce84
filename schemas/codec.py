"""Wire encoding for every schema type: orjson out, validated dataclasses in.

One generic decoder driven by the dataclasses' own annotations, so a new field is declared once and
validated everywhere. Every failure is a `SchemaError` that names the offending field by its path.

Unknown keys are a per-type choice. A type that declares `WIRE_STRICT = True` refuses them, naming
the key (input people and other services write, where a misspelt field must never be read as its
default: SendRequest). Every other type ignores them, so records a newer windowgate wrote (events,
stored states, decisions) stay readable by an older one during a rolling deploy or a replay.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import orjson

T = TypeVar("T")

WIRE_VERSION = 1


class SchemaError(ValueError):
    """Malformed wire data; `field` is the dotted path of the first bad field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


ENVELOPE_KEYS = frozenset({"v"})
"""Keys the wire puts around a strict type's own fields (the version): never unknown."""

Decoder = Callable[[Any, str], Any]
CompactEncoder = Callable[[Any], dict[str, Any]]
Plan = tuple[tuple[str, Decoder, bool, str], ...]
_PLANS: dict[type[Any], Plan] = {}
_KNOWN: dict[type[Any], frozenset[str] | None] = {}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _decoder_for(tp: Any) -> Decoder:
    origin = get_origin(tp)
    if tp is Any:
        return lambda v, p: v
    if tp is str:

        def dec_str(v: Any, p: str) -> str:
            if not isinstance(v, str):
                raise SchemaError(p, f"expected a string, got {_type_name(v)}")
            return v

        return dec_str
    if tp is bool:

        def dec_bool(v: Any, p: str) -> bool:
            if not isinstance(v, bool):
                raise SchemaError(p, f"expected true or false, got {_type_name(v)}")
            return v

        return dec_bool
    if tp is int:

        def dec_int(v: Any, p: str) -> int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise SchemaError(p, f"expected an integer, got {_type_name(v)}")
            return v

        return dec_int
    if tp is float:

        def dec_float(v: Any, p: str) -> float:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise SchemaError(p, f"expected a number, got {_type_name(v)}")
            return float(v)

        return dec_float
    if origin is Literal:
        allowed = get_args(tp)

        def dec_literal(v: Any, p: str) -> Any:
            if v not in allowed or isinstance(v, bool) != isinstance(allowed[0], bool):
                raise SchemaError(p, f"expected one of {', '.join(map(repr, allowed))}, got {v!r}")
            return v

        return dec_literal
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp!r}")
        inner = _decoder_for(args[0])
        return lambda v, p: None if v is None else inner(v, p)
    if origin is tuple:
        items = get_args(tp)
        if len(items) != 2 or items[1] is not Ellipsis:
            raise TypeError(f"only tuple[X, ...] is supported, not {tp!r}")
        item = _decoder_for(items[0])

        def dec_tuple(v: Any, p: str) -> tuple[Any, ...]:
            if not isinstance(v, list | tuple):
                raise SchemaError(p, f"expected a list, got {_type_name(v)}")
            return tuple(item(x, _join(p, i)) for i, x in enumerate(v))

        return dec_tuple
    if origin in (dict, Mapping) or tp is dict:

        def dec_object(v: Any, p: str) -> dict[str, Any]:
            if not isinstance(v, dict):
                raise SchemaError(p, f"expected an object, got {_type_name(v)}")
            return v

        return dec_object
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return lambda v, p: decode_as(tp, v, p)
    raise TypeError(f"no wire decoder for {tp!r}")


def aliases_of(cls: type[Any]) -> dict[str, str]:
    """Short wire names a stored type declares (`WIRE_ALIASES`), so stored state stays small."""
    return dict(getattr(cls, "WIRE_ALIASES", {}))


def is_strict(cls: type[Any]) -> bool:
    """Whether `cls` refuses unknown keys (it declares `WIRE_STRICT = True`)."""
    return getattr(cls, "WIRE_STRICT", False) is True


def _plan(cls: type[Any]) -> Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        hints = get_type_hints(cls)
        aliases = aliases_of(cls)
        plan = tuple(
            (
                f.name,
                _decoder_for(hints[f.name]),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                aliases.get(f.name, f.name),
            )
            for f in dataclasses.fields(cls)
            if f.init
        )
        _PLANS[cls] = plan
        _KNOWN[cls] = (
            ENVELOPE_KEYS | {name for name, *_ in plan} | {alias for *_, alias in plan}
            if is_strict(cls)
            else None
        )
    return plan


def did_you_mean(name: str, candidates: Sequence[str], *, case_sensitive: bool = True) -> str:
    """The hint ` (did you mean 'x'?)` for the candidate closest to a misspelt `name`, or ""."""
    fold = (lambda text: text) if case_sensitive else str.lower
    by_key = {fold(c): c for c in candidates}
    close = difflib.get_close_matches(fold(name), list(by_key), n=1)
    return f" (did you mean {by_key[close[0]]!r}?)" if close else ""


def _unknown_key(cls: type[Any], data: dict[Any, Any], known: frozenset[str], path: str) -> None:
    """Raise a SchemaError naming the first key of `data` that `cls` does not have."""
    unknown = [str(key) for key in data if key not in known]
    if not unknown:
        return
    fields = sorted(known - ENVELOPE_KEYS)
    problem = "unknown field" + did_you_mean(unknown[0], fields)
    if len(unknown) > 1:
        problem += f"; also unknown: {', '.join(unknown[1:])}"
    raise SchemaError(_join(path, unknown[0]), f"{problem}; {cls.__name__} has {', '.join(fields)}")


def decode_as(cls: type[T], data: Any, path: str = "") -> T:
    """Build `cls` from decoded JSON, checking every field; unknown keys are refused when `cls`
    is strict (`WIRE_STRICT`), ignored otherwise."""
    if not isinstance(data, dict):
        raise SchemaError(path, f"expected an object, got {_type_name(data)}")
    plan = _plan(cls)
    known = _KNOWN[cls]
    if known is not None and not known.issuperset(data):
        _unknown_key(cls, data, known, path)
    kwargs: dict[str, Any] = {}
    for name, dec, required, alias in plan:
        if name in data:
            kwargs[name] = dec(data[name], _join(path, name))
        elif alias in data:
            kwargs[name] = dec(data[alias], _join(path, alias))
        elif required:
            raise SchemaError(_join(path, name), "is required")
    try:
        return cls(**kwargs)
    except SchemaError:
        raise
    except (TypeError, ValueError) as exc:
        raise SchemaError(path, str(exc)) from exc


def to_wire(obj: Any) -> Any:
    """A dataclass as plain JSON-ready data (tuples become lists, nested dataclasses dicts)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_wire(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_wire(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    return obj


def to_compact_wire(obj: Any) -> Any:
    """Like `to_wire` but drops fields at their defaults and uses the type's short aliases."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        aliases = getattr(obj, "WIRE_ALIASES", None) or {}
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value != f.default:
                out[aliases.get(f.name, f.name)] = to_compact_wire(value)
        return out
    if isinstance(obj, tuple | list):
        return [to_compact_wire(x) for x in obj]
    return obj


_PLAIN: frozenset[type[Any]] = frozenset({str, int, float, bool, type(None)})
"""Types `to_compact_wire` returns as they are."""
_COMPACT_ENCODERS: dict[tuple[type[Any], tuple[tuple[str, Any], ...]], CompactEncoder] = {}


def _compact_value(value: Any) -> Any:
    """`to_compact_wire` of a field's value, through the per-class encoders."""
    if value.__class__ in _PLAIN:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return compact_encoder(type(value))(value)
    if isinstance(value, tuple | list):
        return [_compact_value(x) for x in value]
    return value


def compact_encoder(cls: type[Any], head: Mapping[str, Any] | None = None) -> CompactEncoder:
    """`to_compact_wire` for instances of the dataclass `cls`, as code generated once per class.

    The generic walk looks up the fields, their defaults and the aliases for every object it
    encodes, which costs the ingest path several microseconds per event. This returns a function
    that does the same (same keys in the same order, fields at their defaults left out, nested
    values through the same rules) with all of that resolved in advance. `head` are keys put first
    (an event's version and kind), as `{**head, **to_compact_wire(obj)}` would.
    `tests/unit/test_codec_fast.py` checks it against `to_compact_wire` for every event type.
    """
    head_items = tuple((head or {}).items())
    cache_key = (cls, head_items)
    encoder = _COMPACT_ENCODERS.get(cache_key)
    if encoder is not None:
        return encoder
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"compact_encoder needs a dataclass, not {cls!r}")
    aliases = getattr(cls, "WIRE_ALIASES", None) or {}
    namespace: dict[str, Any] = {
        "_PLAIN": _PLAIN,
        "_value": _compact_value,
        "_head": dict(head_items),
    }
    lines = ["def encode(obj):", "    out = _head.copy()"]
    for i, f in enumerate(dataclasses.fields(cls)):
        key = aliases.get(f.name, f.name)
        put = f"out[{key!r}] = v if v.__class__ in _PLAIN else _value(v)"
        lines.append(f"    v = obj.{f.name}")
        if f.default is dataclasses.MISSING:
            lines.append(f"    {put}")  # no default: `to_compact_wire` always keeps it
        else:
            namespace[f"_d{i}"] = f.default
            lines.append(f"    if v != _d{i}:")
            lines.append(f"        {put}")
    lines.append("    return out")
    # Only the class's own field names (identifiers) go into the code; keys are repr'd literals
    # and defaults bound names.
    exec("\n".join(lines), namespace)
    encoder = typing.cast(CompactEncoder, namespace["encode"])
    _COMPACT_ENCODERS[cache_key] = encoder
    return encoder


def loads(raw: bytes | str, what: str = "body") -> Any:
    """orjson.loads with a SchemaError that says what could not be read."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SchemaError("", f"{what} is not valid JSON: {exc}") from exc


def dumps(data: Any) -> bytes:
    return orjson.dumps(data)
