"""`decide(state, request, now, rules) -> Decision`: may this message be sent now, how, and why.

Pure: the time, the state and the rules are all passed in. Each mechanism has one evaluator that
returns a `Verdict`; `decide` picks the evaluator the request's purpose names (or the `auto`
order of DESIGN.md §4.4), and `assess` runs them all, for alternatives and for the window
service's queries, so every answer about a mechanism comes from the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schemas.decision import Alternative, Decision
from schemas.request import SendRequest
from schemas.state import OtnToken, PageState, RecurringToken, UserState
from schemas.types import Mechanism, OptinTemplate, Platform, Purpose, Reason, RecipientKind
from windowgate.core.fold import REMEMBERED_OPTIN_ASKS
from windowgate.core.message import OptinRequest, message_problem, optin_request
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import Lookup, Rule, RuleBook
from windowgate.core.timeconst import DAY_MS, HOUR_MS, add_months
from windowgate.core.timestamps import ms_to_iso


@dataclass(frozen=True, slots=True)
class Verdict:
    """One mechanism's answer: allowed (with the rule and until when) or refused (with why).

    With the same state and rules, time alone changes what a verdict allows only at `valid_until`
    (the grant ends; another token may take over) and at `usable_from` (something the evaluator
    prefers comes out of a cooldown); `changes_at` is the earlier of the two. Rules starting or
    ending are the rule book's dates, not the verdict's.
    """

    allowed: bool
    reason: Reason
    detail: str
    mechanism: Mechanism | None = None
    rule: str | None = None
    valid_until: int | None = None
    tag: str | None = None
    token: str | None = None
    topic: str | None = None
    usable_from: int | None = None
    """When a cooldown ends on a token this evaluator would grant then (on a refusal: the refusal
    lapses; on a grant: a token preferred to the granted one becomes usable). None: no such end."""

    @property
    def changes_at(self) -> int | None:
        """The first instant at which time alone may change what this verdict allows (None: never
        before an event or a rule's start or end)."""
        ends = self.valid_until if self.allowed else None
        if ends is None or self.usable_from is None:
            return ends if ends is not None else self.usable_from
        return min(ends, self.usable_from)

    # `dataclasses.replace` looks the fields up on every call: too slow for the refusal path,
    # which amends a few verdicts per decision. These copy the slots directly.

    def _copy(self, detail: str, valid_until: int | None, usable_from: int | None) -> Verdict:
        return Verdict(
            self.allowed,
            self.reason,
            detail,
            self.mechanism,
            self.rule,
            valid_until,
            self.tag,
            self.token,
            self.topic,
            usable_from,
        )

    def with_detail(self, detail: str) -> Verdict:
        return self._copy(detail, self.valid_until, self.usable_from)

    def with_valid_until(self, valid_until: int | None) -> Verdict:
        return self._copy(self.detail, valid_until, self.usable_from)

    def with_usable_from(self, usable_from: int | None) -> Verdict:
        return self._copy(self.detail, self.valid_until, usable_from)


@dataclass(frozen=True, slots=True)
class Context:
    state: UserState
    now: int
    rules: RuleBook
    page: PageConfig
    platform: Platform

    def lookup(self, kind: str, tag: str | None = None) -> Lookup:
        return self.rules.lookup(kind, self.platform, self.page.page_id, self.now, tag)


def _refuse(reason: Reason, detail: str, mechanism: Mechanism | None = None) -> Verdict:
    return Verdict(False, reason, detail, mechanism)


def _from_lookup(lookup: Lookup, mechanism: Mechanism | None) -> Verdict:
    return _refuse(lookup.reason or "invalid_request", lookup.detail, mechanism)


def _at(ms: int | None) -> str:
    return ms_to_iso(ms) if ms is not None else "never"


# ---- one evaluator per mechanism ---------------------------------------------------------------


def window_verdict(ctx: Context, mechanism: Mechanism = "RESPONSE") -> Verdict:
    """R-WIN-1 (and R-WIN-4 when the page switched it on): open until the last opener + 24 h."""
    found = ctx.lookup("window")
    if found.rule is None:
        return _from_lookup(found, mechanism)
    state = ctx.state
    opener = state.last_opener_at
    if opener is None:
        return _refuse("window_closed", "the user has never opened a conversation", mechanism)
    open_until = opener + found.rule.int_param("hours") * HOUR_MS
    rule_id = found.rule.id
    ad = ctx.lookup("ad_window")
    if ad.rule is not None and state.ad_referral_at is not None:
        ad_until = state.ad_referral_at + ad.rule.int_param("days") * DAY_MS
        if ad_until > open_until:
            open_until, rule_id = ad_until, ad.rule.id
    if state.meta_closed_at is not None and state.meta_closed_at >= opener:
        return _refuse(
            "window_closed",
            f"Meta reported the window closed at {_at(state.meta_closed_at)}, after the last "
            f"user action at {_at(opener)}",
            mechanism,
        )
    if ctx.now >= open_until:
        return _refuse(
            "window_closed",
            f"the last user action was at {_at(opener)}; the window closed at {_at(open_until)}",
            mechanism,
        )
    reason: Reason = "window_open"
    detail = f"the user acted at {_at(opener)}; free messaging until {_at(open_until)} ({rule_id})"
    return Verdict(True, reason, detail, mechanism, rule_id, open_until)


def human_agent_verdict(ctx: Context, human_author: str | None) -> Verdict:
    """R-TAG-HA: a named human, a permitted page, within the rule's days of the last message."""
    found = ctx.lookup("human_agent")
    if found.rule is None:
        return _from_lookup(found, "HUMAN_AGENT")
    if not ctx.page.human_agent:
        return _refuse(
            "human_agent_not_permitted",
            f"page {ctx.page.page_id} has no Human Agent permission in the pages file",
            "HUMAN_AGENT",
        )
    if not human_author:
        return _refuse(
            "human_author_missing",
            "HUMAN_AGENT is only for a human's manual reply: name the human in human_author",
            "HUMAN_AGENT",
        )
    last = ctx.state.last_message_at
    if last is None:
        return _refuse(
            "human_agent_window_closed", "the user has never sent a message", "HUMAN_AGENT"
        )
    until = last + found.rule.int_param("days") * DAY_MS
    if ctx.now >= until:
        return _refuse(
            "human_agent_window_closed",
            f"the user's last message was at {_at(last)}; HUMAN_AGENT closed at {_at(until)}",
            "HUMAN_AGENT",
        )
    days = found.rule.int_param("days")
    detail = (
        f"human reply by {human_author} within {days} days of the user's last message "
        f"({_at(last)}), until {_at(until)}"
    )
    return Verdict(
        True, "human_agent_window", detail, "HUMAN_AGENT", found.rule.id, until, "HUMAN_AGENT"
    )


def otn_verdict(ctx: Context, topic: str | None, named: str | None = None) -> Verdict:
    """R-OTN: the oldest unexpired, unused token of `topic` (or exactly the `named` one);
    refused with the most useful reason."""
    found = ctx.lookup("otn")
    if found.rule is None:
        return _from_lookup(found, "OTN")
    if named is not None:
        return _named_otn_verdict(
            ctx, found.rule.id, found.rule.int_param("token_days"), named, topic
        )
    if not topic:
        return _refuse("invalid_request", "an OTN send must name its topic", "OTN")
    lifetime = found.rule.int_param("token_days") * DAY_MS
    tokens = [t for t in ctx.state.otn if t.topic == topic]
    usable: OtnToken | None = None
    expired = spent = 0
    for token in tokens:
        if token.status != "available":
            spent += 1
        elif ctx.now >= token.created_at + lifetime:
            expired += 1
        else:
            usable = token
            break
    if usable is not None:
        until = usable.created_at + lifetime
        detail = (
            f"one-time token for {topic!r} from {_at(usable.created_at)}, valid until {_at(until)}"
        )
        return Verdict(
            True, "otn_token", detail, "OTN", found.rule.id, until, None, usable.token, topic
        )
    if expired:
        days = found.rule.int_param("token_days")
        return _refuse("token_expired", f"every token for {topic!r} is over {days} days old", "OTN")
    if spent:
        return _refuse("token_spent", f"every token for {topic!r} has been used", "OTN")
    return _refuse("no_token_for_topic", f"the user has no one-time token for {topic!r}", "OTN")


def _one_time_refusal(token: OtnToken, what: str, used: Reason, mechanism: Mechanism) -> Verdict:
    """Why a one-time token (an OTN token, a comment's private reply) that is not available
    cannot be used: which request holds it, and whether Meta may have delivered it."""
    how = {"reserved": "reserved by", "unknown": "possibly delivered (unknown outcome) by"}
    held = how.get(token.status, "used by")
    by = f" request {token.request_id}" if token.request_id else " a send (Meta said so)"
    return _refuse(used, f"{what} is {held}{by}", mechanism)


def _named_otn_verdict(
    ctx: Context, rule_id: str, token_days: int, named: str, topic: str | None
) -> Verdict:
    """Exactly the token the request names (issue 14.3): refused, never swapped for another."""
    token = next((t for t in ctx.state.otn if t.token == named), None)
    if token is None:
        return _refuse(
            "token_not_found", "the named token is not one of this user's one-time tokens", "OTN"
        )
    if topic and topic != token.topic:
        return _refuse(
            "token_topic_mismatch",
            f"the named token is for {token.topic!r}, not {topic!r}",
            "OTN",
        )
    if token.status != "available":
        return _one_time_refusal(
            token, f"the named token for {token.topic!r}", "token_spent", "OTN"
        )
    until = token.created_at + token_days * DAY_MS
    if ctx.now >= until:
        return _refuse(
            "token_expired",
            f"the named token for {token.topic!r} from {_at(token.created_at)} expired at "
            f"{_at(until)}",
            "OTN",
        )
    detail = (
        f"the named one-time token for {token.topic!r} from {_at(token.created_at)}, valid until "
        f"{_at(until)}"
    )
    return Verdict(True, "otn_token", detail, "OTN", rule_id, until, None, token.token, token.topic)


def private_reply_verdict(ctx: Context, target: str) -> Verdict:
    """R-WIN-5: one private reply per comment / visitor post of this user, within the rule's
    days of it (`target` is its comment_id or post_id)."""
    found = ctx.lookup("private_reply")
    if found.rule is None:
        return _from_lookup(found, "PRIVATE_REPLY")
    comment = next((t for t in ctx.state.comments if t.token == target), None)
    what = "post" if comment is not None and comment.topic == "post_id" else "comment"
    if comment is None:
        return _refuse(
            "no_comment",
            f"no comment or visitor post {target!r} by this user is known (from the page's "
            "feed webhook)",
            "PRIVATE_REPLY",
        )
    if comment.status != "available":
        return _one_time_refusal(
            comment,
            f"the private reply to {what} {target!r}",
            "private_reply_used",
            "PRIVATE_REPLY",
        )
    days = found.rule.int_param("days")
    until = comment.created_at + days * DAY_MS
    if ctx.now >= until:
        return _refuse(
            "private_reply_expired",
            f"the {what} {target!r} was made at {_at(comment.created_at)}; a private reply was "
            f"possible until {_at(until)} ({found.rule.id}: {days} days)",
            "PRIVATE_REPLY",
        )
    detail = (
        f"one private reply (private_reply_to {target!r}) to the {what} made at "
        f"{_at(comment.created_at)}, until {_at(until)} ({found.rule.id})"
    )
    return Verdict(
        True, "private_reply", detail, "PRIVATE_REPLY", found.rule.id, until, None, target
    )


def _token_expiry(token: RecurringToken, months: int | None) -> int | None:
    if token.expires_at is not None:
        return token.expires_at
    if months is None:
        return None
    start = token.refreshed_at if token.token_status == "REFRESHED" and token.refreshed_at else None
    return add_months(start or token.created_at, months)


def _subscription_verdict(
    ctx: Context,
    topic: str | None,
    mechanism: Mechanism,
    lookup: Lookup,
    cooldown_ms: int,
) -> Verdict:
    """The shared checks of recurring and marketing tokens: STOP, expiry, cooldown."""
    if lookup.rule is None:
        return _from_lookup(lookup, mechanism)
    rule = lookup.rule
    tokens = [t for t in ctx.state.recurring if topic is None or t.matches(topic)]
    about = f"{topic!r}" if topic else "any topic"
    if not tokens:
        return _refuse(
            "no_token_for_topic", f"the user has no subscription token for {about}", mechanism
        )
    refusals: list[Verdict] = []
    lifts: int | None = None  # the first cooldown end of a token before the one granted
    for token in tokens:
        expiry = _token_expiry(token, rule.months_for(token.frequency))
        if token.stopped:
            refusals.append(
                _refuse(
                    "opted_out", f"the user stopped {about} at {_at(token.stopped_at)}", mechanism
                )
            )
        elif expiry is not None and ctx.now >= expiry:
            refusals.append(
                _refuse(
                    "token_expired", f"the token for {about} expired at {_at(expiry)}", mechanism
                )
            )
        elif token.last_sent_at is not None and ctx.now < token.last_sent_at + cooldown_ms:
            next_at = token.last_sent_at + cooldown_ms
            if (expiry is None or next_at < expiry) and (lifts is None or next_at < lifts):
                lifts = next_at
            refusals.append(
                _refuse(
                    "cooldown",
                    f"last sent at {_at(token.last_sent_at)}; next send from {_at(next_at)}",
                    mechanism,
                )
            )
        else:
            reason: Reason = "recurring_token" if mechanism == "RECURRING" else "marketing_token"
            detail = f"subscription token for {token.title or token.topic or about} ({rule.id})"
            return Verdict(
                True,
                reason,
                detail,
                mechanism,
                rule.id,
                expiry,
                None,
                token.token,
                token.topic,
                usable_from=lifts,
            )
    return refusals[0].with_usable_from(lifts)


def recurring_verdict(ctx: Context, topic: str | None) -> Verdict:
    """R-RN-*: legacy recurring notifications (ended 2026-02-10 outside AU/EU/JP/KR/UK)."""
    cooldown = ctx.lookup("recurring_cooldown")
    hours = cooldown.rule.int_param("hours") if cooldown.rule else 24
    return _subscription_verdict(ctx, topic, "RECURRING", ctx.lookup("recurring"), hours * HOUR_MS)


def marketing_verdict(ctx: Context, topic: str | None) -> Verdict:
    """R-MM: the paid Marketing Message API; needs the page's ad account."""
    found = ctx.lookup("marketing")
    if found.rule is not None and not ctx.page.ad_account_id:
        return _refuse(
            "page_not_configured",
            f"page {ctx.page.page_id} has no ad_account_id in the pages file",
            "MARKETING",
        )
    hours = found.rule.int_param("cooldown_hours") if found.rule else 24
    return _subscription_verdict(ctx, topic, "MARKETING", found, hours * HOUR_MS)


def utility_verdict(ctx: Context, message: dict[str, Any] | None) -> Verdict:
    """R-UTIL: only an approved utility template, named in message.template.name."""
    found = ctx.lookup("utility")
    if found.rule is None:
        return _from_lookup(found, "UTILITY")
    template = (message or {}).get("template")
    name = template.get("name") if isinstance(template, dict) else None
    if not isinstance(name, str) or not name:
        return _refuse("invalid_request", "a UTILITY send needs message.template.name", "UTILITY")
    return Verdict(
        True, "utility_template", f"approved utility template {name!r}", "UTILITY", found.rule.id
    )


def tag_verdict(ctx: Context, tag: str | None, human_author: str | None) -> Verdict:
    """A Meta message tag in force for the platform; HUMAN_AGENT goes to its own rule."""
    if not tag:
        return _refuse("invalid_request", "purpose 'tag' needs a tag", "MESSAGE_TAG")
    if tag == "HUMAN_AGENT":
        return human_agent_verdict(ctx, human_author)
    found = ctx.lookup("message_tag", tag)
    if found.rule is None:
        return _from_lookup(found, "MESSAGE_TAG")
    until = None
    if "days" in found.rule.params:
        last = ctx.state.last_message_at
        until = (last or 0) + found.rule.int_param("days") * DAY_MS
        if last is None or ctx.now >= until:
            return _refuse(
                "window_closed",
                f"{tag} is allowed only within {found.rule.params['days']} days of the "
                "user's last message",
                "MESSAGE_TAG",
            )
    return Verdict(
        True,
        "message_tag",
        f"tag {tag} ({found.rule.id})",
        "MESSAGE_TAG",
        found.rule.id,
        until,
        tag,
    )


# ---- preconditions, purposes, alternatives ----------------------------------------------------


def _blocked(ctx: Context, page_state: PageState | None) -> Verdict | None:
    if page_state is not None and page_state.restricted:
        why = page_state.block_reason or "policy enforcement"
        return _refuse(
            "page_restricted", f"the page is restricted since {_at(page_state.blocked_at)}: {why}"
        )
    state = ctx.state
    if state.unavailable_at is not None and (
        state.last_opener_at is None or state.unavailable_at >= state.last_opener_at
    ):
        return _refuse(
            "user_unavailable",
            f"Meta reported the user unavailable at {_at(state.unavailable_at)}; "
            "waiting for them to write again",
        )
    if state.standby_at is not None and (
        state.primary_at is None or state.standby_at >= state.primary_at
    ):
        return _refuse(
            "thread_owned_by_other_app", "another app owns this thread (handover protocol)"
        )
    return None


def _auto(ctx: Context, request: SendRequest) -> Verdict:
    window = window_verdict(ctx)
    if window.allowed:
        return window
    if request.human_author:
        human = human_agent_verdict(ctx, request.human_author)
        if human.allowed or not (request.topic or request.token):
            return human
    if request.topic or request.token:
        return otn_verdict(ctx, request.topic, request.token)
    return window


_PURPOSES: dict[str, Callable[[Context, SendRequest], Verdict]] = {
    "auto": _auto,
    "response": lambda ctx, r: window_verdict(ctx, "RESPONSE"),
    "update": lambda ctx, r: window_verdict(ctx, "UPDATE"),
    "human_agent": lambda ctx, r: human_agent_verdict(ctx, r.human_author),
    "otn": lambda ctx, r: otn_verdict(ctx, r.topic, r.token),
    "recurring": lambda ctx, r: recurring_verdict(ctx, r.topic),
    "marketing": lambda ctx, r: marketing_verdict(ctx, r.topic),
    "utility": lambda ctx, r: utility_verdict(ctx, r.message),
    "tag": lambda ctx, r: tag_verdict(ctx, r.tag, r.human_author),
}


def assess(
    state: UserState,
    now: int,
    rules: RuleBook,
    page_state: PageState | None = None,
    platform: Platform | None = None,
) -> list[Verdict]:
    """Every mechanism's verdict for this user now: one per OTN topic and subscription token."""
    ctx = Context(state, now, rules, rules.page(state.page_id), platform or state.platform)
    blocked = _blocked(ctx, page_state)
    if blocked is not None:
        return [blocked]
    return _assess(ctx)


def _assess(ctx: Context) -> list[Verdict]:
    """`assess` for a user no precondition blocks."""
    state, now, rules = ctx.state, ctx.now, ctx.rules
    human = human_agent_verdict(ctx, "a human")
    utility = utility_verdict(ctx, {"template": {"name": "approved"}})
    verdicts = [
        window_verdict(ctx),
        human.with_detail(f"a human's manual reply, named in human_author ({human.detail})")
        if human.allowed
        else human,
        utility.with_detail("an approved utility template in message.template.name")
        if utility.allowed
        else utility,
    ]
    verdicts += [otn_verdict(ctx, topic) for topic in dict.fromkeys(t.topic for t in state.otn)]
    verdicts += [private_reply_verdict(ctx, comment.token) for comment in state.comments]
    for token in state.recurring:
        verdicts.append(recurring_verdict(ctx, token.topic or token.title))
        verdicts.append(marketing_verdict(ctx, token.topic or token.title))
    for rule in rules.tags(ctx.platform, state.page_id, now):
        verdicts.append(tag_verdict(ctx, rule.tag, None))
    return verdicts


def _alternatives(
    ctx: Context, page_state: PageState | None, asked: Verdict
) -> tuple[Alternative, ...]:
    """The other mechanisms `assess` allows now (its context: the user's page, as `assess` has)."""
    state = ctx.state
    if ctx.page.page_id != state.page_id:
        ctx = Context(state, ctx.now, ctx.rules, ctx.rules.page(state.page_id), ctx.platform)
    if _blocked(ctx, page_state) is not None:
        return ()  # a blocked user has no alternatives: `assess` says only why it is blocked
    found = []
    for verdict in _assess(ctx):
        if (
            verdict.allowed
            and verdict.mechanism is not None
            and (verdict.mechanism != asked.mechanism or verdict.topic != asked.topic)
        ):
            found.append(
                Alternative(
                    mechanism=verdict.mechanism,
                    detail=verdict.detail,
                    topic=verdict.topic,
                    tag=verdict.tag,
                    valid_until=verdict.valid_until,
                )
            )
    return tuple(found)


def decide(
    state: UserState,
    request: SendRequest,
    now: int,
    rules: RuleBook,
    page_state: PageState | None = None,
) -> Decision:
    """The decision for `request` at `now`; a request_id already decided gets its first decision."""
    for past in state.decisions:
        if past.request_id == request.request_id:
            return past.as_duplicate()
    ctx = Context(state, now, rules, rules.page(request.page_id), request.platform)
    verdict = _precheck(ctx, request, page_state) or _addressed(ctx, request)
    ask = optin_request(request.message) if verdict is None else None
    if verdict is None:
        verdict = (
            _PURPOSES[request.purpose](ctx, request)
            if ask is None
            else optin_request_verdict(ctx, request.purpose, ask)
        )
    unsendable = _unsendable(verdict, request.message, request.sender_action is not None)
    verdict = unsendable or verdict
    if (
        verdict.allowed
        and request.send_by is not None
        and (verdict.valid_until is None or request.send_by < verdict.valid_until)
    ):
        verdict = verdict.with_valid_until(request.send_by)
    alternatives = () if verdict.allowed or unsendable else _alternatives(ctx, page_state, verdict)
    if ask is not None:
        alternatives = _optin_alternatives(alternatives, verdict)
    return Decision(
        request_id=request.request_id,
        page_id=request.page_id,
        user_id=request.user_id,
        decided_at=now,
        allowed=verdict.allowed,
        reason=verdict.reason,
        detail=verdict.detail,
        rules_version=rules.version,
        mechanism=verdict.mechanism,
        tag=verdict.tag,
        valid_until=verdict.valid_until,
        alternatives=alternatives,
        platform=request.platform,
        rule=verdict.rule,
        token=verdict.token,
        topic=verdict.topic if ask is None else ask.key,
        optin_request=ask.template if ask is not None else None,
        recipient=_recipient(state, request, verdict),
    )


def _precheck(ctx: Context, request: SendRequest, page_state: PageState | None) -> Verdict | None:
    if request.send_by is not None and ctx.now >= request.send_by:
        return _refuse("deadline_passed", f"send_by {_at(request.send_by)} has passed")
    if request.purpose == "tag" and not request.tag:
        return _refuse("invalid_request", "purpose 'tag' needs a tag")
    return _blocked(ctx, page_state)


def still_valid(decision: Decision, now: int) -> bool:
    """I6: just before the Graph call, is an allowed decision still inside its validity?"""
    return decision.allowed and (decision.valid_until is None or now < decision.valid_until)


def _unsendable(
    verdict: Verdict, message: dict[str, Any] | None, sender_action: bool = False
) -> Verdict | None:
    """Allowed means sendable: a grant whose body Meta would refuse is `invalid_request`, naming
    the field, before its token is reserved (the same check send_api runs before the call). No
    alternatives then: no mechanism can carry that body. A sender action (typing, mark_seen)
    carries no message at all."""
    if not verdict.allowed:
        return None
    if sender_action:
        if message is None:
            return None
        return _refuse(
            "invalid_request", "message: a sender_action carries none", verdict.mechanism
        )
    problem = message_problem(message, verdict.mechanism)
    if problem is None:
        return None
    return _refuse("invalid_request", problem.sentence, verdict.mechanism)


# ---- opt-in requests (DESIGN.md §4.6; platform-rules §3, R-RN-3) -------------------------------

_OPTIN_KINDS: dict[OptinTemplate, str] = {
    "one_time_notif_req": "otn_request",
    "notification_messages": "recurring_request",
}
_WINDOW_PURPOSES: dict[str, Mechanism] = {
    "auto": "RESPONSE",
    "response": "RESPONSE",
    "update": "UPDATE",
}


def optin_request_verdict(ctx: Context, purpose: Purpose, ask: OptinRequest) -> Verdict:
    """Asking for permission is a window send: RESPONSE or UPDATE inside the 24 h window, never a
    token, a tag or a template (those are what the user is being asked to allow), and for
    recurring messages at most the rule's count per user and title in its period (R-RN-3)."""
    found = ctx.lookup(_OPTIN_KINDS[ask.template])
    mechanism = _WINDOW_PURPOSES.get(purpose)
    if found.rule is None:
        return _from_lookup(found, mechanism)
    rule = found.rule
    what = f"a {ask.template} opt-in request"
    if mechanism is None:
        return _refuse(
            "optin_request_purpose",
            f"{what} is sent only as a RESPONSE or UPDATE inside the 24 h window, never with "
            f"purpose {purpose!r} ({rule.id})",
        )
    window = window_verdict(ctx, mechanism)
    if not window.allowed:
        if window.reason != "window_closed":
            return window
        return _refuse(
            "optin_request_outside_window",
            f"{what} is sent only inside the 24 h window ({rule.id}): {window.detail}",
            mechanism,
        )
    if ask.template == "notification_messages":
        limited = _ask_limit(ctx, rule, ask.title, mechanism)
        if limited is not None:
            return limited
    return Verdict(
        True,
        window.reason,
        f"{what} inside the window ({rule.id}); {window.detail}",
        mechanism,
        rule.id,
        window.valid_until,
        topic=ask.key,
    )


def _ask_limit(ctx: Context, rule: Rule, title: str, mechanism: Mechanism) -> Verdict | None:
    """R-RN-3: refused when `per_title` requests with this title fall in the last `days` days."""
    per, days = rule.int_param("per_title"), rule.int_param("days")
    period = days * DAY_MS
    since = ctx.now - period
    asks = ctx.state.optin_asks
    recent = sorted(a.at for a in asks if a.title == title and a.at > since)
    if len(recent) >= per:
        next_at = recent[-per] + period
        return _refuse(
            "optin_request_limit",
            f"{rule.id} allows {per} recurring opt-in request(s) per user and title in {days} "
            f"days; {title!r} was asked at {_at(recent[-1])}; the next one from {_at(next_at)}",
            mechanism,
        ).with_usable_from(next_at)
    if len(asks) >= REMEMBERED_OPTIN_ASKS and asks[0].at > since:
        next_at = asks[0].at + period
        return _refuse(
            "optin_request_limit",
            f"the user was sent {len(asks)} recurring opt-in requests in {days} days, as many as "
            f"windowgate remembers: it cannot tell whether {title!r} was one of those it forgot "
            f"({rule.id}); the next one from {_at(next_at)}",
            mechanism,
        ).with_usable_from(next_at)
    return None


def _optin_alternatives(
    alternatives: tuple[Alternative, ...], verdict: Verdict
) -> tuple[Alternative, ...]:
    """Only a window send can carry an opt-in request, and none can past the weekly limit."""
    if verdict.reason == "optin_request_limit":
        return ()
    return tuple(a for a in alternatives if a.mechanism in ("RESPONSE", "UPDATE"))


# ---- requests that name what they spend or how they address the user (issue 14) ---------------

_ADDRESSED_PURPOSES: dict[str, frozenset[str]] = {
    "token": frozenset({"auto", "otn"}),
    "private_reply_to": frozenset({"auto", "response"}),
    "by_user_ref": frozenset({"auto", "response", "update"}),
}
"""The purposes each addressing field makes sense with; any other is an invalid request."""


def _addressed(ctx: Context, request: SendRequest) -> Verdict | None:
    """A private reply (R-WIN-5) or a send by user_ref (R-WIN-2, the window the plugin opt-in
    opened); None for the rest, which their purpose decides (a named `token` included)."""
    if request.private_reply_to is None and not request.by_user_ref and request.token is None:
        return None  # the common case, on the hot path: no list built
    named = [
        name
        for name in ("token", "private_reply_to", "by_user_ref")
        if getattr(request, name) not in (None, False)
    ]
    if len(named) > 1:
        return _refuse("invalid_request", f"{' and '.join(named)} cannot be combined")
    name = named[0]
    if request.purpose not in _ADDRESSED_PURPOSES[name]:
        allowed = " or ".join(sorted(_ADDRESSED_PURPOSES[name]))
        return _refuse("invalid_request", f"{name} needs purpose {allowed}, not {request.purpose}")
    if request.private_reply_to is not None:
        return private_reply_verdict(ctx, request.private_reply_to)
    if request.by_user_ref:
        return window_verdict(ctx, "UPDATE" if request.purpose == "update" else "RESPONSE")
    return None


def _recipient(state: UserState, request: SendRequest, verdict: Verdict) -> RecipientKind | None:
    """How an allowed decision's Graph call addresses the user, when not by recipient.id."""
    if not verdict.allowed:
        return None
    if verdict.mechanism == "PRIVATE_REPLY":
        comment = next((t for t in state.comments if t.token == verdict.token), None)
        return "post_id" if comment is not None and comment.topic == "post_id" else "comment_id"
    return "user_ref" if request.by_user_ref else None
