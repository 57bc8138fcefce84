"""windowgate.meta.normalise: Meta webhook bodies → events, never an exception past the envelope."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import SchemaError
from schemas.events import (
    Event,
    MessageDelivered,
    MessageEcho,
    MessageEdited,
    MessageRead,
    MessageReceived,
    OtnOptin,
    PluginOptin,
    PolicyEnforcement,
    PostbackReceived,
    ReactionReceived,
    RecurringOptin,
    RecurringStatus,
    Referral,
    ReferralReceived,
    ThreadControl,
    decode_event,
    encode_event,
)
from schemas.state import UserState
from tests import fixtures_path
from windowgate.core.fold import fold
from windowgate.core.timestamps import MAX_EPOCH_MS
from windowgate.meta.normalise import (
    INTERNAL_ERROR_REASON,
    OBJECT_PLATFORMS,
    EnvelopeError,
    Normalised,
    Unsupported,
    normalise,
)

PAGE = "682498171943165"
USER = "1254459154682919"
PAGE_2 = "542998526103632"
USER_2 = "5794982867201265"
IG_ACCOUNT = "17841400000000000"
IG_USER = "6800000000000001"
MID_01 = "m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6AC8fplwlqLP_5cgXIbu7I3rBN0P"
MID_02 = "mid.1457764197618:41d102a3e1ae206a38"
MID_REACTED = "mid.1458668856218:ed81099e15d3f4f233"
IG_MID = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx"

EXPECTED: dict[str, tuple[Event, ...]] = {
    "01-quick-reply.json": (
        MessageReceived(
            page_id=PAGE,
            user_id=USER,
            timestamp=1502905976377,
            dedup_key=f"msg:{MID_01}",
            mid=MID_01,
            text="Green",
            quick_reply_payload="DEVELOPER_DEFINED_PAYLOAD_FOR_PICKING_GREEN",
        ),
    ),
    "02-message-from-ad.json": (
        MessageReceived(
            page_id=PAGE,
            user_id=USER,
            timestamp=1458692752478,
            dedup_key=f"msg:{MID_02}",
            mid=MID_02,
            text="hello, world!",
            referral=Referral(
                source="ADS", type="OPEN_THREAD", ref="spring-sale", ad_id="6302572858686"
            ),
        ),
    ),
    "03-reaction.json": (
        ReactionReceived(
            page_id=PAGE,
            user_id=USER,
            timestamp=1458668856463,
            dedup_key=f"rx:{PAGE}:{USER}:{MID_REACTED}:react:love:1458668856463",
            action="react",
            mid=MID_REACTED,
            reaction="love",
            emoji="❤️",
        ),
    ),
    "04-read.json": (
        MessageRead(
            page_id=PAGE,
            user_id=USER,
            timestamp=1458668856463,
            dedup_key=f"read:{PAGE}:{USER}:1458668856253",
            watermark=1458668856253,
        ),
    ),
    # No element timestamp: the entry's `time` stands in.
    "05-delivery.json": (
        MessageDelivered(
            page_id=PAGE,
            user_id=USER,
            timestamp=1458668856500,
            dedup_key=f"dlv:{PAGE}:{USER}:1458668856253",
            watermark=1458668856253,
            mids=(MID_REACTED,),
        ),
    ),
    # The page sent it: the user is the recipient, app_id arrives as a number.
    "06-echo.json": (
        MessageEcho(
            page_id=PAGE,
            user_id=USER,
            timestamp=1457764197627,
            dedup_key=f"echo:{MID_02}",
            mid=MID_02,
            app_id="1517776481860111",
        ),
    ),
    "07-postback-mme.json": (
        PostbackReceived(
            page_id=PAGE,
            user_id=USER,
            timestamp=1458692752478,
            dedup_key="pb:m_postback_1",
            payload="GET_STARTED",
            title="Get Started",
            mid="m_postback_1",
            referral=Referral(
                source="SHORTLINK", type="OPEN_THREAD", ref="REF-PARAMETER-INFORMATION"
            ),
        ),
    ),
    # Timestamp in seconds; the `lead` block next to the referral is auxiliary data.
    "08-lead-referral-seconds.json": (
        ReferralReceived(
            page_id=PAGE_2,
            user_id=USER_2,
            timestamp=1665424533000,
            dedup_key=f"ref:{PAGE_2}:{USER_2}:1665424533000:ADS:",
            referral=Referral(source="ADS", type="LEAD_COMPLETE", ad_id="6302572858686"),
        ),
    ),
    "09-otn-optin.json": (
        OtnOptin(
            page_id=PAGE,
            user_id=USER,
            timestamp=1458692752478,
            dedup_key="otn:otn-token-0001",
            token="otn-token-0001",
            topic="back-in-stock:adidas-sl72",
        ),
    ),
    # Timestamp as a digit string.
    "10-rn-optin.json": (
        RecurringOptin(
            page_id=PAGE,
            user_id=USER,
            timestamp=1700000000000,
            dedup_key="rn:rn-token-0001:1700000000000",
            token="rn-token-0001",
            topic="weekly-deals",
            title="Weekly deals",
            frequency="DAILY",
            timezone="Europe/Amsterdam",
            expires_at=1715552000000,
            token_status="NOT_REFRESHED",
        ),
    ),
    # "STOP NOTIFICATIONS" (Meta's doc spelling, with a space) is STOP.
    "11-rn-stop-space-spelling.json": (
        RecurringStatus(
            page_id=PAGE,
            user_id=USER,
            timestamp=1700500000000,
            dedup_key="rns:rn-token-0001:STOP:1700500000000",
            token="rn-token-0001",
            status="STOP",
            topic="weekly-deals",
            title="Weekly deals",
        ),
    ),
    # Page-wide: user_id "".
    "12-policy-enforcement-block.json": (
        PolicyEnforcement(
            page_id=PAGE,
            user_id="",
            timestamp=1458692752478,
            dedup_key=f"pe:{PAGE}:block:1458692752478",
            action="block",
            reason=(
                "The bot violated our Platform Policies "
                "(https://developers.facebook.com/policy/#messengerplatform)."
            ),
        ),
    ),
    "13-standby-message.json": (
        MessageReceived(
            page_id=PAGE,
            user_id=USER,
            timestamp=1458692752478,
            dedup_key="msg:mid.standby.1",
            mid="mid.standby.1",
            text="is anyone there?",
            standby=True,
        ),
    ),
    "14-batch-two-entries.json": (
        MessageReceived(
            page_id=PAGE,
            user_id=USER,
            timestamp=1502905976377,
            dedup_key="msg:m_batch_1",
            mid="m_batch_1",
            text="one",
        ),
        MessageReceived(
            page_id=PAGE_2,
            user_id=USER_2,
            timestamp=1502905976378,
            dedup_key="msg:m_batch_2",
            mid="m_batch_2",
            text="two",
        ),
        PostbackReceived(
            page_id=PAGE_2,
            user_id=USER_2,
            timestamp=1502905976390,
            dedup_key="pb:m_batch_3",
            payload="YES",
            title="Yes",
            mid="m_batch_3",
        ),
    ),
    "15-instagram-message.json": (
        MessageReceived(
            page_id=IG_ACCOUNT,
            user_id=IG_USER,
            timestamp=1700000000000,
            platform="instagram",
            dedup_key=f"msg:{IG_MID}",
            mid=IG_MID,
            text="hi from instagram",
        ),
    ),
}


def webhook_dir() -> Path:
    return fixtures_path.fixtures_dir("meta-webhooks")


def raw_fixture(name: str) -> bytes:
    return fixtures_path.fixture_bytes("meta-webhooks", name)


def fixture_body(name: str) -> Any:
    return orjson.loads(raw_fixture(name))


def envelope(*elements: Any, obj: str = "page", list_name: str = "messaging") -> dict[str, Any]:
    return {
        "object": obj,
        "entry": [{"id": PAGE, "time": 1700000000999, list_name: list(elements)}],
    }


def element(**kinds: Any) -> dict[str, Any]:
    """A messaging element from USER to PAGE at 1700000000000 carrying `kinds`."""
    return {"sender": {"id": USER}, "recipient": {"id": PAGE}, "timestamp": 1700000000000, **kinds}


def only_event(body: Any) -> Event:
    result = normalise(body)
    assert result.unsupported == ()
    assert len(result.events) == 1, result.events
    return result.events[0]


def only_unsupported(body: Any) -> Unsupported:
    result = normalise(body)
    assert result.events == ()
    assert len(result.unsupported) == 1, result.unsupported
    return result.unsupported[0]


# ---- the fixtures --------------------------------------------------------------------------------


def test_every_fixture_has_expectations() -> None:
    on_disk = {p.name for p in webhook_dir().glob("*.json")}
    assert on_disk == set(EXPECTED), "a fixture was added or removed: update EXPECTED"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses_to_exact_events(name: str) -> None:
    result = normalise(fixture_body(name))
    assert result == Normalised(events=EXPECTED[name])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_events_survive_the_wire(name: str) -> None:
    for event in normalise(fixture_body(name)).events:
        assert decode_event(encode_event(event)) == event


def test_fixture_specifics() -> None:
    """The oddities the brief names, asserted on their own so a failure reads plainly."""
    assert only_event(fixture_body("08-lead-referral-seconds.json")).timestamp == 1665424533000
    assert only_event(fixture_body("10-rn-optin.json")).timestamp == 1700000000000
    stop = only_event(fixture_body("11-rn-stop-space-spelling.json"))
    assert isinstance(stop, RecurringStatus)
    assert stop.status == "STOP"
    assert only_event(fixture_body("12-policy-enforcement-block.json")).user_id == ""
    standby = only_event(fixture_body("13-standby-message.json"))
    assert isinstance(standby, MessageReceived)
    assert standby.standby is True
    batch = normalise(fixture_body("14-batch-two-entries.json")).events
    assert [(e.KIND, e.page_id) for e in batch] == [
        ("message", PAGE),
        ("message", PAGE_2),
        ("postback", PAGE_2),
    ]
    assert only_event(fixture_body("15-instagram-message.json")).platform == "instagram"
    echo = only_event(fixture_body("06-echo.json"))
    assert isinstance(echo, MessageEcho)
    assert echo.user_id == USER != PAGE
    delivery = only_event(fixture_body("05-delivery.json"))
    assert delivery.timestamp == 1458668856500  # the entry's time


# ---- shapes from other projects' test suites (webhooks/ beside this file) ------------------------

LOCAL_WEBHOOKS = Path(__file__).parent / "webhooks"
LOCAL_EXPECTED: dict[str, tuple[Event, ...] | str] = {
    # Instagram's messaging_seen: a read of that mid at the element's time.
    "instagram-read-mid-only.json": (
        MessageRead(
            page_id=IG_ACCOUNT,
            user_id=IG_USER,
            timestamp=1700000060000,
            platform="instagram",
            dedup_key=f"readmid:{IG_MID}",
            watermark=1700000060000,
        ),
    ),
    "recipient-other-page.json": f"`recipient.id` '{PAGE_2}' is not the entry's page {PAGE}",
    "sender-not-meta-id.json": "`sender.id` 'abc5678' is not a Meta id",
    "timestamp-zero.json": (
        MessageReceived(
            page_id=PAGE,
            user_id=USER,
            timestamp=1700000000100,  # the entry's time, not 1970
            dedup_key="msg:m_ts_zero_1",
            mid="m_ts_zero_1",
            text="when?",
        ),
    ),
    "timestamp-zero-no-entry-time.json": "no usable `timestamp`",
}
"""Each local body → its exact events, or a fragment of the reason it is dead-lettered for."""


def local_body(name: str) -> Any:
    return orjson.loads((LOCAL_WEBHOOKS / name).read_bytes())


def test_every_local_fixture_has_expectations_and_a_readme_line() -> None:
    on_disk = {p.name for p in LOCAL_WEBHOOKS.glob("*.json")}
    assert on_disk == set(LOCAL_EXPECTED), "a local fixture was added or removed: update it here"
    readme = (LOCAL_WEBHOOKS / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in on_disk)


@pytest.mark.parametrize("name", sorted(LOCAL_EXPECTED))
def test_local_fixture(name: str) -> None:
    expected = LOCAL_EXPECTED[name]
    if isinstance(expected, str):
        item = only_unsupported(local_body(name))
        assert expected in item.reason
        assert item.path == "entry[0].messaging[0]"
    else:
        assert normalise(local_body(name)) == Normalised(events=expected)
        for event in expected:
            assert decode_event(encode_event(event)) == event


def test_instagram_read_folds_without_opening_the_window() -> None:
    read = only_event(local_body("instagram-read-mid-only.json"))
    state = fold(UserState(page_id=IG_ACCOUNT, user_id=IG_USER, platform="instagram"), read)
    assert state.last_opener_at is None


def test_instagram_read_redelivered_is_one_fact_and_reads_of_two_mids_are_two() -> None:
    first = only_event(local_body("instagram-read-mid-only.json"))
    again = only_event(local_body("instagram-read-mid-only.json"))
    other = only_event(envelope(element(read={"mid": "another-mid"})))
    assert first.dedup_key == again.dedup_key != other.dedup_key


def test_a_read_with_a_watermark_keeps_it_even_with_a_mid() -> None:
    read = only_event(envelope(element(read={"watermark": 1699999999000, "mid": "m"})))
    assert isinstance(read, MessageRead)
    assert (read.watermark, read.dedup_key) == (1699999999000, f"read:{PAGE}:{USER}:1699999999000")


@pytest.mark.parametrize(
    "kinds",
    [
        {"postback": {"payload": "P"}},
        {"reaction": {"mid": "m", "action": "react"}},
        {"referral": {"source": "SHORTLINK", "ref": "r"}},
        {"optin": {"type": "one_time_notif_req", "payload": "t", "one_time_notif_token": "x"}},
        {"optin": {"ref": "R", "user_ref": "U"}},
        {"policy-enforcement": {"action": "block"}},
        {"pass_thread_control": {"new_owner_app_id": "1"}},
    ],
)
def test_any_kind_addressed_to_another_page_is_dead_lettered(kinds: dict[str, Any]) -> None:
    elem = {**element(**kinds), "recipient": {"id": PAGE_2}}
    assert "not the entry's page" in only_unsupported(envelope(elem)).reason
    assert only_event(envelope(element(**kinds))).page_id == PAGE  # addressed right: accepted


def test_an_unusable_recipient_is_not_the_page_either() -> None:
    elem = {**element(message={"mid": "m"}), "recipient": {"user_ref": "x"}}
    assert "not the entry's page" in only_unsupported(envelope(elem)).reason


def test_an_echo_is_addressed_to_the_user_and_its_user_must_be_a_meta_id() -> None:
    echo = {"sender": {"id": PAGE}, "recipient": {"id": USER}, "timestamp": 1, "message": {}}
    echo["message"] = {"mid": "m", "is_echo": True}
    assert only_event(envelope(echo)).user_id == USER
    echo["recipient"] = {"id": "user-1"}
    assert "`recipient.id` 'user-1' is not a Meta id" in only_unsupported(envelope(echo)).reason


@pytest.mark.parametrize("sender", ["abc5678", "1254459154682919x", "-1", "１２３", "12 34"])
def test_senders_that_are_not_meta_ids_are_dead_lettered(sender: str) -> None:
    elem = {**element(message={"mid": "m"}), "sender": {"id": sender}}
    item = only_unsupported(envelope(elem))
    assert "is not a Meta id" in item.reason
    assert item.user_id == sender  # the dead letter still says who it claimed to be


def test_a_plugin_optin_user_ref_need_not_be_digits_but_a_sender_must() -> None:
    optin = {"ref": "R", "user_ref": "ref-abc"}
    elem = {"recipient": {"id": PAGE}, "timestamp": 1700000000000, "optin": optin}
    assert only_event(envelope(elem)).user_id == "ref-abc"
    elem["sender"] = {"id": "abc5678"}
    assert "is not a Meta id" in only_unsupported(envelope(elem)).reason


@pytest.mark.parametrize("zero", [0, "0", 0.0])
def test_a_zero_timestamp_is_no_time(zero: object) -> None:
    with_entry_time = only_event(envelope({**element(message={"mid": "m"}), "timestamp": zero}))
    assert with_entry_time.timestamp == 1700000000999  # envelope()'s entry time
    read = {"sender": {"id": USER}, "timestamp": zero, "read": {"watermark": 1458668856253}}
    body = {"object": "page", "entry": [{"id": PAGE, "time": 0, "messaging": [read]}]}
    assert only_event(body).timestamp == 1458668856253  # no time at all: the watermark


# ---- dedup keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_redelivery_has_the_same_dedup_keys(name: str) -> None:
    first = [e.dedup_key for e in normalise(fixture_body(name)).events]
    again = [e.dedup_key for e in normalise(fixture_body(name)).events]
    assert first == again
    assert all(first)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dedup_keys_do_not_depend_on_key_order(name: str) -> None:
    def reverse(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: reverse(node[k]) for k in reversed(node)}
        if isinstance(node, list):
            return [reverse(x) for x in node]
        return node

    body = fixture_body(name)
    assert {e.dedup_key for e in normalise(reverse(body)).events} == {
        e.dedup_key for e in normalise(body).events
    }


def test_batch_events_have_distinct_dedup_keys() -> None:
    keys = [e.dedup_key for e in normalise(fixture_body("14-batch-two-entries.json")).events]
    assert len(keys) == 3
    assert len(set(keys)) == 3


def test_all_fixture_facts_have_distinct_dedup_keys() -> None:
    """02's message and 06's echo share a mid, 03 reacts to 05's mid: still different facts."""
    keys = [e.dedup_key for name in sorted(EXPECTED) for e in normalise(fixture_body(name)).events]
    assert len(keys) == len(set(keys))


def test_reaction_and_unreact_of_one_message_are_different_facts() -> None:
    react = element(reaction={"mid": "m1", "action": "react", "reaction": "love"})
    unreact = element(reaction={"mid": "m1", "action": "unreact", "reaction": "love"})
    later = {**react, "timestamp": 1700000000001}
    keys = {only_event(envelope(e)).dedup_key for e in (react, unreact, later)}
    assert len(keys) == 3


def test_reads_differ_by_watermark_and_postbacks_without_mid_by_payload() -> None:
    read_1 = only_event(envelope(element(read={"watermark": 1700000000000})))
    read_2 = only_event(envelope(element(read={"watermark": 1700000000500})))
    assert read_1.dedup_key != read_2.dedup_key
    pb_a = only_event(envelope(element(postback={"payload": "A"})))
    pb_b = only_event(envelope(element(postback={"payload": "B"})))
    assert pb_a.dedup_key == f"pb:{PAGE}:{USER}:1700000000000:A"
    assert pb_a.dedup_key != pb_b.dedup_key


def test_message_edits_are_keyed_by_edit_number() -> None:
    first = only_event(envelope(element(message_edit={"mid": "m1", "text": "a", "num_edit": 1})))
    second = only_event(envelope(element(message_edit={"mid": "m1", "text": "b", "num_edit": 2})))
    unnumbered = only_event(envelope(element(message_edit={"mid": "m1", "text": "c"})))
    assert first == MessageEdited(
        page_id=PAGE,
        user_id=USER,
        timestamp=1700000000000,
        dedup_key="edit:m1:1",
        mid="m1",
        text="a",
    )
    assert second.dedup_key == "edit:m1:2"
    assert unnumbered.dedup_key == "edit:m1:1700000000000"


# ---- the envelope --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], ""),
        ("page", ""),
        (None, ""),
        (42, ""),
        ({}, "object"),
        ({"object": "user", "entry": []}, "object"),
        ({"object": "whatsapp_business_account", "entry": []}, "object"),
        ({"object": ["page"], "entry": []}, "object"),
        ({"object": "page"}, "entry"),
        ({"object": "page", "entry": {"id": PAGE}}, "entry"),
        ({"object": "page", "entry": "x"}, "entry"),
        ({"object": "page", "entry": [{"id": PAGE, "messaging": []}, {}, 7]}, "entry[2]"),
        ({"object": "instagram", "entry": [None]}, "entry[0]"),
    ],
)
def test_envelope_errors(body: Any, field: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        normalise(body)
    assert isinstance(caught.value, SchemaError)
    assert caught.value.field == field
    assert caught.value.problem


def test_accepted_objects_and_their_platforms() -> None:
    assert OBJECT_PLATFORMS == {"page": "messenger", "instagram": "instagram"}
    assert normalise({"object": "page", "entry": []}) == Normalised()


def test_numeric_page_and_user_ids_are_stringified() -> None:
    body = {
        "object": "page",
        "entry": [
            {
                "id": 682498171943165,
                "messaging": [
                    {"sender": {"id": 1254459154682919}, "timestamp": 1, "message": {"mid": "m"}}
                ],
            }
        ],
    }
    event = only_event(body)
    assert (event.page_id, event.user_id, event.timestamp) == (PAGE, USER, 1000)


# ---- unsupported, never an exception -----------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["account_linking", "game_play", "app_roles", "checkout_update", "brand_new_meta_thing"],
)
def test_unknown_kinds_are_unsupported(kind: str) -> None:
    item = only_unsupported(envelope(element(**{kind: {"status": "linked"}})))
    assert kind in item.reason
    assert item.path == "entry[0].messaging[0]"
    assert (item.page_id, item.user_id) == (PAGE, USER)
    assert item.raw == element(**{kind: {"status": "linked"}})


def test_unsupported_paths_point_at_the_element_and_good_elements_survive() -> None:
    body = {
        "object": "page",
        "entry": [
            {"id": PAGE, "messaging": [element(message={"mid": "ok-1"})]},
            {
                "id": PAGE_2,
                "messaging": [
                    element(account_linking={}),
                    {**element(message={"mid": "ok-2"}), "recipient": {"id": PAGE_2}},
                ],
                "standby": ["not an element"],
            },
        ],
    }
    result = normalise(body)
    assert [e.dedup_key for e in result.events] == ["msg:ok-1", "msg:ok-2"]
    assert [(u.path, u.page_id) for u in result.unsupported] == [
        ("entry[1].messaging[0]", PAGE_2),
        ("entry[1].standby[0]", PAGE_2),
    ]


@pytest.mark.parametrize(
    ("elem", "words"),
    [
        ({"sender": {"id": USER}, "timestamp": 1}, "no event"),
        (element(message="hello"), "`message`"),
        (element(message={"text": "no mid"}), "mid"),
        ({"timestamp": 1, "message": {"mid": "m"}}, "sender"),
        (
            {"sender": {"id": PAGE}, "timestamp": 1, "message": {"mid": "m", "is_echo": 1}},
            "recipient",
        ),
        (element(reaction={"mid": "m", "action": "love"}), "react"),
        (element(reaction={"action": "react"}), "mid"),
        (element(read={}), "watermark"),
        (element(delivery={"watermark": "soon"}), "watermark"),
        (element(optin={"type": "one_time_notif_req", "payload": "x"}), "one_time_notif_token"),
        (element(optin={"type": "notification_messages"}), "notification_messages_token"),
        (
            element(
                optin={
                    "type": "notification_messages",
                    "notification_messages_token": "t",
                    "notification_messages_status": "PAUSE",
                }
            ),
            "STOP",
        ),
        (element(optin={"type": "marketing_messages", "ref": "x"}), "marketing_messages"),
        ({"timestamp": 1, "optin": {"ref": "x"}}, "user_ref"),
        (element(**{"policy-enforcement": {"action": "warn"}}), "block"),
        (element(pass_thread_control=None), "pass_thread_control"),
        (element(referral="ADS"), "referral"),
    ],
)
def test_malformed_elements_are_unsupported(elem: dict[str, Any], words: str) -> None:
    item = only_unsupported(envelope(elem))
    assert words in item.reason
    assert item.raw is not None


def test_no_timestamp_anywhere_is_unsupported() -> None:
    elem = element(message={"mid": "m"})
    del elem["timestamp"]
    body = {"object": "page", "entry": [{"id": PAGE, "messaging": [elem]}]}
    assert "timestamp" in only_unsupported(body).reason


def test_read_without_any_timestamp_falls_back_to_its_watermark() -> None:
    elem = {"sender": {"id": USER}, "read": {"watermark": 1458668856253}}
    body = {"object": "page", "entry": [{"id": PAGE, "messaging": [elem]}]}
    assert only_event(body).timestamp == 1458668856253


def test_entry_without_page_id_reports_each_element() -> None:
    body = {"object": "page", "entry": [{"messaging": [element(message={"mid": "m"}), 3]}]}
    result = normalise(body)
    assert result.events == ()
    assert [u.path for u in result.unsupported] == [
        "entry[0].messaging[0]",
        "entry[0].messaging[1]",
    ]
    assert "id" in result.unsupported[0].reason


def test_entry_with_nothing_to_read_is_unsupported() -> None:
    item = only_unsupported({"object": "page", "entry": [{"id": PAGE, "time": 1, "hop": 1}]})
    assert item.path == "entry[0]"
    assert "hop" in item.reason


def test_messaging_that_is_not_a_list_is_unsupported() -> None:
    item = only_unsupported({"object": "page", "entry": [{"id": PAGE, "messaging": {"a": 1}}]})
    assert item.path == "entry[0].messaging"


def test_changes_that_are_no_comment_are_unsupported_one_per_change() -> None:
    """Private replies read comments (Instagram `comments`, Pages `feed`); every other change,
    or a comment without its author, is reported once, with the field it came under."""
    changes = [
        {"field": "feed", "value": {"item": "comment", "from": {"id": USER}}},
        {"field": "comments", "value": {"id": "c1"}},
    ]
    body = {"object": "instagram", "entry": [{"id": IG_ACCOUNT, "time": 1, "changes": changes}]}
    result = normalise(body)
    assert result.events == ()
    assert [u.path for u in result.unsupported] == ["entry[0].changes[0]", "entry[0].changes[1]"]
    first, second = result.unsupported
    assert "`changes` field 'feed' not handled" in first.reason
    assert "`from.id`" in second.reason
    for item, change in zip(result.unsupported, changes, strict=True):
        assert item.raw is change
        assert item.page_id == IG_ACCOUNT
    assert result.unsupported[0].user_id == USER


# ---- each kind -----------------------------------------------------------------------------------


def test_message_details() -> None:
    event = only_event(
        envelope(
            element(
                message={
                    "mid": "m1",
                    "attachments": [{"type": "image"}, {"type": "audio"}, {"nope": 1}, "x"],
                    "reply_to": {"mid": "m0"},
                    "referral": {"source": "ADS", "ad_id": 6302572858686},
                }
            )
        )
    )
    assert event == MessageReceived(
        page_id=PAGE,
        user_id=USER,
        timestamp=1700000000000,
        dedup_key="msg:m1",
        mid="m1",
        attachment_types=("image", "audio"),
        reply_to_mid="m0",
        referral=Referral(source="ADS", ad_id="6302572858686"),
    )


def test_instagram_unsupported_content_is_still_a_message() -> None:
    body = envelope(element(message={"mid": "ig1", "is_unsupported": True}), obj="instagram")
    event = only_event(body)
    assert isinstance(event, MessageReceived)
    assert event.platform == "instagram"
    assert (event.dedup_key, event.deleted) == ("msg:ig1", False)


def test_instagram_deleted_message_is_its_own_fact_and_opens_nothing() -> None:
    body = envelope(element(message={"mid": "ig1", "is_deleted": True}), obj="instagram")
    event = only_event(body)
    assert isinstance(event, MessageReceived)
    assert (event.dedup_key, event.deleted) == ("msgdel:ig1", True)
    state = UserState(page_id=event.page_id, user_id=event.user_id)
    assert fold(state, event) == state


def test_standby_applies_to_every_kind_that_has_it() -> None:
    body = envelope(
        element(postback={"payload": "P", "mid": "pb1"}),
        element(reaction={"mid": "m", "action": "unreact"}),
        element(referral={"source": "SHORTLINK", "ref": "r"}),
        element(read={"watermark": 1700000000000}),
        list_name="standby",
    )
    events = normalise(body).events
    assert [e.KIND for e in events] == ["postback", "reaction", "referral", "read"]
    assert all(getattr(e, "standby", True) for e in events)


def test_plugin_optin_uses_user_ref_without_sender() -> None:
    elem = {
        "recipient": {"id": PAGE},
        "timestamp": 1700000000000,
        "optin": {"ref": "R", "user_ref": "U"},
    }
    assert only_event(envelope(elem)) == PluginOptin(
        page_id=PAGE,
        user_id="U",
        timestamp=1700000000000,
        dedup_key=f"po:{PAGE}:U:1700000000000:R",
        ref="R",
        user_ref="U",
    )
    with_sender = only_event(envelope(element(optin={"ref": "R", "user_ref": "U"})))
    assert with_sender.user_id == USER


@pytest.mark.parametrize(
    ("spelling", "status"),
    [
        ("STOP NOTIFICATIONS", "STOP"),
        ("STOP_NOTIFICATIONS", "STOP"),
        ("stop notifications", "STOP"),
        ("Stop_Notifications", "STOP"),
        ("RESUME NOTIFICATIONS", "RESUME"),
        ("RESUME_NOTIFICATIONS", "RESUME"),
        ("resume_notifications", "RESUME"),
    ],
)
def test_recurring_status_spellings(spelling: str, status: str) -> None:
    optin = {
        "type": "notification_messages",
        "notification_messages_token": "t1",
        "notification_messages_status": spelling,
    }
    event = only_event(envelope(element(optin=optin)))
    assert isinstance(event, RecurringStatus)
    assert event.status == status
    assert event.dedup_key == f"rns:t1:{status}:1700000000000"


@pytest.mark.parametrize(
    ("frequency", "expected"),
    [("WEEKLY", "WEEKLY"), ("monthly", "MONTHLY"), ("Daily", "DAILY"), ("HOURLY", None), (7, None)],
)
def test_recurring_frequency(frequency: object, expected: str | None) -> None:
    optin = {
        "type": "notification_messages",
        "notification_messages_token": "t1",
        "notification_messages_frequency": frequency,
        "token_expiry_timestamp": 1715552000,  # seconds: unit unconfirmed, normalised by magnitude
    }
    event = only_event(envelope(element(optin=optin)))
    assert isinstance(event, RecurringOptin)
    assert event.frequency == expected
    assert event.expires_at == 1715552000000


@pytest.mark.parametrize("key", ["policy-enforcement", "policy_enforcement"])
def test_policy_enforcement_both_spellings(key: str) -> None:
    elem = {"recipient": {"id": PAGE}, "timestamp": 1700000000000, key: {"action": "unblock"}}
    assert only_event(envelope(elem)) == PolicyEnforcement(
        page_id=PAGE,
        user_id="",
        timestamp=1700000000000,
        dedup_key=f"pe:{PAGE}:unblock:1700000000000",
        action="unblock",
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "pass_thread_control",
            {"new_owner_app_id": 123, "previous_owner_app_id": "456", "metadata": "m"},
            {"action": "pass", "new_owner_app_id": "123", "previous_owner_app_id": "456"},
        ),
        (
            "take_thread_control",
            {"previous_owner_app_id": 123, "new_owner_app_id": 456},
            {"action": "take", "new_owner_app_id": "456", "previous_owner_app_id": "123"},
        ),
        (
            "request_thread_control",
            {"requested_owner_app_id": 789},
            {"action": "request", "requested_owner_app_id": "789"},
        ),
    ],
)
def test_thread_control(key: str, value: dict[str, Any], expected: dict[str, Any]) -> None:
    event = only_event(envelope(element(**{key: value})))
    assert event == ThreadControl(
        page_id=PAGE,
        user_id=USER,
        timestamp=1700000000000,
        dedup_key=f"tc:{PAGE}:{USER}:{expected['action']}:1700000000000",
        **expected,
    )


def test_otn_optin_without_payload_has_an_empty_topic() -> None:
    event = only_event(
        envelope(element(optin={"type": "one_time_notif_req", "one_time_notif_token": "t"}))
    )
    assert isinstance(event, OtnOptin)
    assert (event.token, event.topic) == ("t", "")


# ---- fuzzing: nothing but EnvelopeError ever escapes --------------------------------------------

INTERESTING_KEYS = [
    "object", "entry", "id", "time", "messaging", "standby", "changes", "field", "value",
    "sender", "recipient", "timestamp", "message", "postback", "reaction", "referral", "read",
    "delivery", "message_edit", "optin", "policy-enforcement", "policy_enforcement",
    "pass_thread_control", "take_thread_control", "request_thread_control", "account_linking",
    "mid", "text", "is_echo", "app_id", "quick_reply", "payload", "attachments", "type",
    "reply_to", "action", "watermark", "mids", "num_edit", "user_ref", "ref", "source", "ad_id",
    "one_time_notif_token", "notification_messages_token", "notification_messages_status",
    "notification_messages_frequency", "token_expiry_timestamp", "new_owner_app_id",
]  # fmt: skip
INTERESTING_STRINGS = [
    "page", "instagram", "react", "unreact", "block", "unblock", "one_time_notif_req",
    "notification_messages", "STOP NOTIFICATIONS", "resume_notifications", "DAILY", "ADS", "",
    "1700000000000", "1665424533", "-1", "²",
]  # fmt: skip

json_keys = st.sampled_from(INTERESTING_KEYS) | st.text(max_size=8)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=0, max_value=2 * MAX_EPOCH_MS)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(INTERESTING_STRINGS)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=6)
    ),
    max_leaves=25,
)
elements = st.dictionaries(json_keys, json_values, max_size=6)
bodies = st.fixed_dictionaries(
    {
        "object": st.sampled_from(["page", "instagram"]),
        "entry": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "id": json_scalars,
                    "time": json_scalars,
                    "messaging": st.lists(elements, max_size=4) | json_values,
                    "standby": st.lists(elements, max_size=2),
                    "changes": json_values,
                },
            ),
            max_size=3,
        ),
    }
)


def check_result(result: Normalised) -> None:
    """What every caller may rely on, whatever came in."""
    assert isinstance(result, Normalised)
    for event in result.events:
        assert isinstance(event, Event)
        assert isinstance(event.page_id, str)
        assert event.page_id
        assert isinstance(event.user_id, str)
        assert isinstance(event.timestamp, int)
        assert 0 < event.timestamp <= MAX_EPOCH_MS  # 0 is no time, never 1970
        assert event.dedup_key
        encode_event(event)  # storable: no huge ints, no odd types
    for item in result.unsupported:
        assert isinstance(item, Unsupported)
        assert item.reason
        assert item.path.startswith("entry[")
        assert not item.reason.startswith(INTERNAL_ERROR_REASON), item.reason


def normalise_or_envelope_error(body: Any) -> None:
    try:
        result = normalise(body)
    except EnvelopeError:  # the one exception allowed out (ingest turns it into HTTP 400)
        return
    check_result(result)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_any_json_value(body: Any) -> None:
    normalise_or_envelope_error(body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_fuzz_valid_envelopes_never_raise(body: dict[str, Any]) -> None:
    check_result(normalise(body))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_paths(value, (*prefix, index)))
    return found


def _retype(value: Any) -> Any:
    """The same content in another JSON type, as a sloppy producer would send it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return int(value) if value.isascii() and value.isdigit() and len(value) < 30 else [value]
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return 0


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_fuzz_mutated_fixtures(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(EXPECTED)), label="fixture")
    body: Any = fixture_body(name)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        paths = _paths(body)
        path = data.draw(st.sampled_from(paths), label="path")
        operation = data.draw(st.sampled_from(["drop", "replace", "retype"]), label="operation")
        if not path:
            body = data.draw(json_values) if operation == "replace" else _retype(body)
            continue
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        if operation == "drop":
            del parent[key]
        elif operation == "replace":
            parent[key] = data.draw(json_values, label="new value")
        else:
            parent[key] = _retype(parent[key])
    snapshot = copy.deepcopy(body)
    normalise_or_envelope_error(body)
    # normalise never mutates its input. Compared inside a list: deepcopy keeps the same NaN
    # object, and only container comparison treats an object as equal to itself (a body that is
    # NaN itself would fail `nan == nan`).
    assert [body] == [snapshot]


# ---- the fixtures-path helper --------------------------------------------------------------------


def test_missing_shared_dir_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(fixtures_path.SHARED_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(pytest.fail.Exception, match="WINDOWGATE_SHARED_DIR"):
        fixtures_path.shared_dir()


def test_shared_dir_env_var_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "fixtures" / "meta-webhooks").mkdir(parents=True)
    monkeypatch.setenv(fixtures_path.SHARED_DIR_ENV, str(tmp_path))
    assert fixtures_path.fixtures_dir("meta-webhooks") == tmp_path / "fixtures" / "meta-webhooks"
