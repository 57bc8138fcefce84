"""Issue 14 points 3 and 5 outside `decide`: comment webhooks read, folded and bounded; a named
OTN token is the one reserved (a property); the offline gateway; the Graph call's recipient."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import SendRequest, TokenReleased, TokenSpent, UserState
from schemas.decision import Decision, DecisionRecord
from schemas.events import CommentReceived, decode_event, encode_event
from schemas.state import decode_user_state, encode_user_state
from services.dispatcher.front.feeds import TokenIndex, comment_horizon
from tests.unit.builders import PAGE, T0, USER, D, H, comment, decided, empty, otn, request
from windowgate.core.decide import decide
from windowgate.core.fold import REMEMBERED_COMMENTS, fold, fold_all
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import load_rules, parse_rules
from windowgate.meta.normalise import normalise
from windowgate.meta.send_api import build_call
from windowgate.offline import OfflineGateway

RULES = load_rules()
FEED = Path(__file__).resolve().parent / "meta" / "feed"
CREATED = 1764554400000  # the fixtures' created_time (seconds) in ms
IG_ACCOUNT, IG_USER = "17841405822304914", "2345678901234567"


def body(name: str) -> Any:
    return orjson.loads((FEED / name).read_bytes())


# ---- normalise: the feed fixtures --------------------------------------------------------------

FEED_EXPECTED: dict[str, CommentReceived | str] = {
    "feed-comment.json": CommentReceived(
        page_id=PAGE,
        user_id=USER,
        timestamp=CREATED,
        dedup_key="cm:1111_2222",
        post_id=f"{PAGE}_1111",
        comment_id="1111_2222",
        parent_id=f"{PAGE}_1111",
    ),
    "feed-visitor-post.json": CommentReceived(
        page_id=PAGE,
        user_id=USER,
        timestamp=CREATED,
        dedup_key=f"cm:{PAGE}_3333",
        post_id=f"{PAGE}_3333",
    ),
    "instagram-comment.json": CommentReceived(
        page_id=IG_ACCOUNT,
        user_id=IG_USER,
        timestamp=1764554460000,  # no created_time: the entry's time
        platform="instagram",
        dedup_key="cm:17865799348089039",
        post_id="17895695668004550",
        comment_id="17865799348089039",
    ),
    "feed-comment-removed.json": "feed `verb` 'remove': not a new comment or post",
    "feed-page-own-post.json": "the page's own comment or post",
    "feed-reaction.json": "feed item 'reaction' allows no private reply",
}


def test_every_feed_fixture_has_an_expectation_and_a_readme_line() -> None:
    on_disk = {p.name for p in FEED.glob("*.json")} - {"feed-comment-edited.json"}
    assert on_disk == set(FEED_EXPECTED)
    readme = (FEED / "README.md").read_text()
    assert all(f"`{p.name}`" in readme for p in FEED.glob("*.json"))


@pytest.mark.parametrize("name", sorted(FEED_EXPECTED))
def test_feed_fixture(name: str) -> None:
    expected = FEED_EXPECTED[name]
    result = normalise(body(name))
    if isinstance(expected, str):
        assert result.events == ()
        [item] = result.unsupported
        assert expected in item.reason and item.path == "entry[0].changes[0]"
        assert item.raw == body(name)["entry"][0]["changes"][0]
    else:
        assert (result.events, result.unsupported) == ((expected,), ())
        assert decode_event(encode_event(expected)) == expected


def test_an_edited_comment_is_the_same_fact() -> None:
    [first] = normalise(body("feed-comment.json")).events
    [edited] = normalise(body("feed-comment-edited.json")).events
    assert edited == first  # same key, same created_time: ingest's dedup drops it


def test_a_comment_without_its_author_or_time_is_dead_lettered() -> None:
    change = body("feed-comment.json")
    value = change["entry"][0]["changes"][0]["value"]
    del value["from"]
    [item] = normalise(change).unsupported
    assert "`from.id`" in item.reason
    untimed = body("feed-comment.json")
    del untimed["entry"][0]["time"]
    del untimed["entry"][0]["changes"][0]["value"]["created_time"]
    [item] = normalise(untimed).unsupported
    assert "created_time" in item.reason


def test_comments_sit_beside_messages_in_one_body() -> None:
    mixed = body("feed-comment.json")
    mixed["entry"][0]["messaging"] = [
        {
            "sender": {"id": USER},
            "recipient": {"id": PAGE},
            "timestamp": CREATED,
            "message": {"mid": "m1", "text": "hi"},
        }
    ]
    kinds = [type(e).__name__ for e in normalise(mixed).events]
    assert sorted(kinds) == ["CommentReceived", "MessageReceived"]


# ---- fold ---------------------------------------------------------------------------------------


def test_a_comment_is_remembered_once_and_opens_no_window() -> None:
    once = fold(empty(), comment(T0, comment_id="c1"))
    assert fold(once, comment(T0, comment_id="c1")) == once
    [right] = once.comments
    assert (right.token, right.topic, right.created_at, right.status) == (
        "c1",
        "comment_id",
        T0,
        "available",
    )
    assert once.last_opener_at is None
    assert decode_user_state(encode_user_state(once)) == once


def test_the_newest_comments_are_kept_whatever_the_order() -> None:
    many = [comment(T0 + i, comment_id=f"c{i}") for i in range(REMEMBERED_COMMENTS + 4)]
    forward = fold_all(empty(), many)
    backward = fold_all(empty(), list(reversed(many)))
    assert forward == backward
    assert [c.token for c in forward.comments] == [f"c{i}" for i in range(4, len(many))]


def test_a_reply_spent_stays_spent_and_a_released_one_is_usable_again() -> None:
    state = fold(empty(), comment(T0, comment_id="c1"))
    first = decide(state, request("p1", private_reply_to="c1"), T0 + H, RULES)
    state = fold(state, decided(first))
    assert state.comments[0].status == "reserved"
    released = fold(
        state,
        TokenReleased(page_id=PAGE, user_id=USER, timestamp=T0 + H, token="c1", request_id="p1"),
    )
    assert decide(released, request("p2", private_reply_to="c1"), T0 + H, RULES).allowed
    spent = fold(
        state,
        TokenSpent(page_id=PAGE, user_id=USER, timestamp=T0 + H, token="c1", request_id="p1"),
    )
    assert spent.comments[0].status == "spent"
    refused = decide(spent, request("p3", private_reply_to="c1"), T0 + H, RULES)
    assert (refused.reason, refused.allowed) == ("private_reply_used", False)


def test_the_7_days_are_the_rules_not_the_codes() -> None:
    """Meta changing the 7 days is an edit of R-WIN-5's params in meta.json, nothing else."""
    raw = orjson.loads(
        (Path(__file__).resolve().parents[2] / "windowgate/core/rules/meta.json").read_bytes()
    )
    [rule] = [r for r in raw["rules"] if r["id"] == "R-WIN-5"]
    assert rule["params"] == {"days": 7}
    rule["params"]["days"] = 8
    eight = parse_rules(raw)
    state = fold(empty(), comment(T0, comment_id="c1"))
    ask = request(private_reply_to="c1")
    assert not decide(state, ask, T0 + 7 * D, RULES).allowed
    assert decide(state, ask, T0 + 7 * D, eight).allowed


# ---- a named token is the one reserved (property) -----------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["restock", "sale"]), min_size=1, max_size=6),
    st.data(),
)
def test_a_named_token_is_the_one_reserved(topics: list[str], data: Any) -> None:
    """Whatever tokens the user holds and whichever they name, in any order: an allowed send
    reserves exactly the named token, and a token never goes into two allowed decisions."""
    state = fold_all(
        empty(), [otn(T0 + i * H, token=f"t{i}", topic=t) for i, t in enumerate(topics)]
    )
    names = data.draw(st.lists(st.sampled_from([f"t{i}" for i in range(len(topics))] + ["x"])))
    granted: list[str] = []
    for n, name in enumerate(names):
        decision = decide(state, request(f"r{n}", purpose="otn", token=name), T0 + D, RULES)
        before = {t.token: t.status for t in state.otn}
        state = fold(state, decided(decision))
        after = {t.token: t.status for t in state.otn}
        changed = {t for t in after if after[t] != before[t]}
        if decision.allowed:
            assert decision.token == name and changed == {name}
            granted.append(name)
        else:
            assert changed == set()
            assert decision.reason in ("token_spent", "token_not_found")
    assert len(granted) == len(set(granted))


# ---- the offline gateway behaves the same ------------------------------------------------------


def test_offline_comment_webhook_then_one_private_reply() -> None:
    gateway = OfflineGateway(RULES)
    gateway.apply_webhook(body("feed-comment.json"))
    ask = SendRequest(
        request_id="p1",
        page_id=PAGE,
        user_id=USER,
        private_reply_to="1111_2222",
        message={"text": "Yes, in blue"},
    )
    first = gateway.decide(ask, CREATED + D)
    assert (first.allowed, first.mechanism, first.recipient) == (
        True,
        "PRIVATE_REPLY",
        "comment_id",
    )
    again = gateway.decide(replace(ask, request_id="p2"), CREATED + D)
    assert (again.allowed, again.reason) == (False, "private_reply_used")
    assert "request p1" in again.detail


def test_offline_named_token_a_then_b() -> None:
    gateway = OfflineGateway(RULES)
    gateway.apply_events([otn(T0, token="A"), otn(T0 + H, token="B")])
    b = gateway.decide(request("b", purpose="otn", token="B"), T0 + D)
    a = gateway.decide(request("a", purpose="otn", token="A"), T0 + D)
    assert (b.token, a.token, a.allowed) == ("B", "A", True)
    state = gateway.state(PAGE, USER)
    assert isinstance(state, UserState)
    assert [t.status for t in state.otn] == ["spent", "spent"]


# ---- the Graph call addresses what Meta expects -------------------------------------------------


def _call(**kw: Any) -> dict[str, Any]:
    decision = Decision(
        request_id="r1",
        page_id=PAGE,
        user_id=kw.pop("user_id", USER),
        decided_at=T0,
        allowed=True,
        reason="window_open",
        detail="",
        rules_version="t",
        **kw,
    )
    call = build_call(DecisionRecord(decision, {"text": "hi"}), PageConfig(page_id=PAGE), "v25.0")
    assert call.path == f"/v25.0/{PAGE}/messages"
    return call.body


def test_private_reply_recipient_is_the_comment_or_the_post() -> None:
    by_comment = _call(mechanism="PRIVATE_REPLY", token="1111_2222", recipient="comment_id")
    assert by_comment == {"recipient": {"comment_id": "1111_2222"}, "message": {"text": "hi"}}
    by_post = _call(mechanism="PRIVATE_REPLY", token=f"{PAGE}_3333", recipient="post_id")
    assert by_post["recipient"] == {"post_id": f"{PAGE}_3333"}


def test_a_user_ref_send_addresses_the_user_ref() -> None:
    sent = _call(mechanism="RESPONSE", user_id="ref-42", recipient="user_ref")
    assert sent["recipient"] == {"user_ref": "ref-42"}
    assert sent["messaging_type"] == "RESPONSE"


# ---- the proxy's index routes a comment id to its author, for the rule's days -----------------


def _record(event: CommentReceived) -> Any:
    return SimpleNamespace(value=encode_event(event))


def test_the_index_routes_comments_and_forgets_them_after_the_horizon() -> None:
    now = T0 + 30 * D
    horizon = comment_horizon(RULES, now)
    assert horizon == 8 * D  # R-WIN-5's 7 days and one more
    index = TokenIndex("unused:9092", "events", horizon, clock=lambda: now)
    fresh = comment(now - 7 * D, comment_id="fresh", user="111")
    index.on_record(_record(fresh))
    index.on_record(_record(comment(now - 8 * D - 1, comment_id="old", user="222")))
    index.on_record(_record(comment(now - H, post_id="visitor-post", user="333")))
    owner = index.lookup("fresh")
    assert owner is not None and (owner.user_id, owner.topic) == ("111", "comment_id")
    assert index.lookup("old") is None
    post = index.lookup("visitor-post")
    assert post is not None and (post.user_id, post.topic) == ("333", "post_id")


def test_the_index_prunes_comments_past_the_horizon_as_it_grows() -> None:
    clock = {"now": T0}
    index = TokenIndex("unused:9092", "events", D, clock=lambda: clock["now"])
    for i in range(10_000):
        index.remember_comment(comment(T0, comment_id=f"c{i}"))
    clock["now"] = T0 + 2 * D
    index.remember_comment(comment(T0 + 2 * D, comment_id="new"))
    assert set(index.comments) == {"new"}
