"""windowgate.core.timestamps: Meta's timestamps (ms, seconds, strings) and ISO-8601 rule dates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from windowgate.core.timestamps import MAX_EPOCH_MS, ms_to_iso, parse_iso_ms, to_epoch_ms

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1502905976377, 1502905976377),  # epoch ms passes through
        (1665424533, 1665424533000),  # seconds (fixture 08) become ms
        ("1700000000000", 1700000000000),  # digit string (fixture 10)
        ("1665424533", 1665424533000),  # digit string in seconds
        (253402300799, 253402300799000),  # seconds: the last second of year 9999
        (10**12, 10**12),  # the threshold itself: ms
        (0, 0),
        (1665424533.25, 1665424533250),  # float seconds keep their milliseconds
        (1665424533.0005, 1665424533000),  # ... rounded, not truncated into 999
        (1502905976377.0, 1502905976377),  # float ms
        (MAX_EPOCH_MS, MAX_EPOCH_MS),
        (-0.0, 0),
    ],
)
def test_to_epoch_ms_accepts_meta_spellings(value: object, expected: int) -> None:
    assert to_epoch_ms(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        -1,
        -1665424533,
        -1.5,
        "",
        " 1665424533",
        "1665424533 ",
        "1.5",
        "-5",
        "+5",
        "12a",
        "0x10",
        "²",  # str.isdigit() says yes, int() says no
        "１２３",  # full-width digits: not ASCII
        "9" * 21,  # absurdly long digit string
        "9" * 5000,  # past Python's int-from-str digit limit
        MAX_EPOCH_MS + 1,  # after year 9999
        10**12 - 1,  # below the threshold, so seconds: year 33658
        10**40,
        float("nan"),
        float("inf"),
        float("-inf"),
        1e300,
        None,
        [],
        [1665424533],
        {"timestamp": 1},
    ],
)
def test_to_epoch_ms_rejects_what_is_not_a_time(value: object) -> None:
    assert to_epoch_ms(value) is None


@given(JSON)
def test_to_epoch_ms_never_raises_and_stays_in_range(value: object) -> None:
    result = to_epoch_ms(value)
    assert result is None or (isinstance(result, int) and 0 <= result <= MAX_EPOCH_MS)


@given(st.integers(min_value=10**12, max_value=MAX_EPOCH_MS))
def test_ms_values_and_their_digit_strings_agree(ms: int) -> None:
    assert to_epoch_ms(ms) == to_epoch_ms(str(ms)) == ms


@given(st.integers(min_value=0, max_value=MAX_EPOCH_MS // 1000))
def test_seconds_values_scale_by_1000(seconds: int) -> None:
    assert to_epoch_ms(seconds) == to_epoch_ms(str(seconds)) == seconds * 1000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-04-27", 1777248000000),  # a date is its UTC midnight
        ("2026-04-27T00:00:00Z", 1777248000000),
        ("2026-04-27T00:00:00", 1777248000000),  # naive means UTC
        ("2026-04-27T02:00:00+02:00", 1777248000000),
        ("2026-04-27T00:00:00.123Z", 1777248000123),
        ("2026-02-10T12:30:00Z", 1770726600000),
        ("1970-01-01T00:00:00Z", 0),
        (" 2026-04-27 ", 1777248000000),
    ],
)
def test_parse_iso_ms(text: str, expected: int) -> None:
    assert parse_iso_ms(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "2026-04-27T25:00", "1777248000"])
def test_parse_iso_ms_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_iso_ms(text)


def test_parse_iso_ms_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_iso_ms(1777248000000)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ms", "expected"),
    [
        (1777248000000, "2026-04-27T00:00:00Z"),
        (1777248000123, "2026-04-27T00:00:00.123Z"),
        (0, "1970-01-01T00:00:00Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (MAX_EPOCH_MS, "9999-12-31T23:59:59.999Z"),
        (-62135596800000, "0001-01-01T00:00:00Z"),
    ],
)
def test_ms_to_iso(ms: int, expected: str) -> None:
    assert ms_to_iso(ms) == expected


@pytest.mark.parametrize("ms", [MAX_EPOCH_MS + 1, -62135596800001, 10**30])
def test_ms_to_iso_out_of_range_is_a_value_error(ms: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        ms_to_iso(ms)


@given(st.integers(min_value=-62135596800000, max_value=MAX_EPOCH_MS))
def test_iso_round_trip(ms: int) -> None:
    text = ms_to_iso(ms)
    assert text.endswith("Z")
    assert parse_iso_ms(text) == ms


def test_max_epoch_ms_is_the_end_of_year_9999() -> None:
    assert parse_iso_ms("9999-12-31T23:59:59.999Z") == MAX_EPOCH_MS
