"""The broadcast records round-trip, refuse unknown keys by name, and match labels as documented."""

from __future__ import annotations

import pytest

from schemas.broadcast import (
    Audience,
    BroadcastCommand,
    BroadcastProgress,
    decode_command,
    decode_progress,
    encode_command,
    encode_progress,
    recipient_request_id,
    spec_from_wire,
)
from schemas.codec import SchemaError


def test_a_create_command_round_trips_with_its_spec() -> None:
    spec = spec_from_wire(
        {
            "broadcast_id": "b1",
            "page_id": "p1",
            "message": {"text": "back in stock"},
            "audience": {"topic": "restock", "labels_none": ["vip"]},
            "not_before": 1_790_000_000_000,
        }
    )
    command = BroadcastCommand(kind="create", broadcast_id="b1", page_id="p1", at=5, spec=spec)
    assert decode_command(encode_command(command)) == command
    progress = BroadcastProgress(
        broadcast_id="b1", page_id="p1", partition=2, status="running", refused={"cooldown": 1}
    )
    assert decode_progress(encode_progress(progress)) == progress


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        ({"broadcast_id": "b", "page_id": "p", "message": {}, "audience": {"topc": "t"}}, "topc"),
        ({"broadcast_id": "b", "page_id": "p", "message": {}, "purpse": "otn"}, "purpse"),
        ({"broadcast_id": "", "page_id": "p", "message": {}}, "broadcast_id"),
    ],
)
def test_bad_specs_name_the_field(wire: dict[str, object], field: str) -> None:
    with pytest.raises(SchemaError, match=field):
        spec_from_wire(wire)


def test_label_conditions_all_any_none() -> None:
    audience = Audience(labels_all=("a",), labels_any=("b", "c"), labels_none=("x",))
    assert audience.matches_labels(("a", "c"))
    assert not audience.matches_labels(("a",))  # none of the `any`
    assert not audience.matches_labels(("b", "c"))  # not `all`
    assert not audience.matches_labels(("a", "b", "x"))  # an excluded label
    assert Audience().matches_labels(())


def test_a_recipient_request_id_is_stable_and_distinct() -> None:
    assert recipient_request_id("b1", "u1") == recipient_request_id("b1", "u1")
    assert recipient_request_id("b1", "u1") != recipient_request_id("b1", "u2")
    assert recipient_request_id("b1", "u1") != recipient_request_id("b2", "u1")
