"""Every Graph Send API answer, classified as data (platform-rules.md §7): meaning and action.

Pure. `classify` turns one answer (HTTP status and parsed body) or one transport failure into a
`GraphVerdict`: the class of the answer and the `Action` the dispatcher takes — retry or not, the
delivery status it records, what happens to the token, and which fact is folded back into the
user's (or the page's) state. Adding a Meta error code is a row in `RULES`, not a new branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ErrorClass = Literal[
    "ok",  # Meta accepted the message
    "window_closed",  # 10/2018278, 10/2534022, code 10 "outside of allowed window"
    "invalid",  # 100 and friends: the request itself is wrong; no retry
    "opted_out",  # 10/1893015: the user stopped notifications for this topic
    "user_unavailable",  # 551, 200/1545041, 10/2018108: blocked or unavailable
    "page_restricted",  # 10/1893063, 2022: stop every send of the page
    "auth",  # 190: the page token is invalid: stop the page, alert
    "thread_owned",  # 2018300, 2018321: another app owns the thread
    "rate_limited",  # 4, 613, 613/2534040: definitely not delivered; back off and retry
    "rn_cooldown",  # 4/2018354: minimum delay between notifications; retried only after it
    "unreachable",  # the connection was never made: the request was not sent; retry
    "transient",  # code 1/2, 5xx, a timeout, a broken connection: ambiguous, never retried
    "rejected",  # another error Meta answered with a 4xx: definite, not retried
]

Retry = Literal["no", "backoff", "cooldown"]
Status = Literal["sent", "failed", "unknown"]
TokenFate = Literal["spend", "release", "keep", "unknown", "opt_out"]
Fact = Literal["window_closed", "user_unavailable", "page_restricted", "thread_owned", "opted_out"]


@dataclass(frozen=True, slots=True)
class Action:
    """What the dispatcher does with an answer of one class.

    `token`: `spend` on delivery; `release` only where Meta definitely rejected the request before
    delivery (R-OTN-4: rate limit, auth, never sent); `unknown` for ambiguous outcomes (never used
    again); `keep` — the token stays reserved and is never granted again: whether Meta burns a
    token on a failed send is UNCONFIRMED, so the safe side of I4 is taken.
    """

    status: Status
    retry: Retry
    token: TokenFate
    fact: Fact | None = None
    alert: bool = False


ACTIONS: dict[ErrorClass, Action] = {
    "ok": Action("sent", "no", "spend"),
    "window_closed": Action("failed", "no", "keep", "window_closed"),
    "invalid": Action("failed", "no", "keep"),
    "opted_out": Action("failed", "no", "opt_out", "opted_out"),
    "user_unavailable": Action("failed", "no", "keep", "user_unavailable"),
    "page_restricted": Action("failed", "no", "keep", "page_restricted", alert=True),
    "auth": Action("failed", "no", "release", "page_restricted", alert=True),
    "thread_owned": Action("failed", "no", "keep", "thread_owned"),
    "rate_limited": Action("failed", "backoff", "release"),
    "rn_cooldown": Action("failed", "cooldown", "keep"),
    "unreachable": Action("failed", "backoff", "release"),
    "transient": Action("unknown", "no", "unknown"),
    "rejected": Action("failed", "no", "keep"),
}
"""The action per class. A retried class that runs out of retries ends with its `status`."""


@dataclass(frozen=True, slots=True)
class ErrorRule:
    """One row: `code` / `subcode` None match any; `text` must occur in the message (any case)."""

    error_class: ErrorClass
    code: int | None = None
    subcode: int | None = None
    text: str | None = None


RULES: tuple[ErrorRule, ...] = (
    # most specific first: the first matching row wins
    ErrorRule("window_closed", 10, 2018278),
    ErrorRule("window_closed", 10, 2534022),
    ErrorRule("opted_out", 10, 1893015),
    ErrorRule("user_unavailable", 10, 2018108),
    ErrorRule("page_restricted", 10, 1893063),
    ErrorRule("window_closed", 10, None, "outside of allowed window"),
    ErrorRule("user_unavailable", 551),
    ErrorRule("user_unavailable", 200, 1545041),
    ErrorRule("page_restricted", 2022),
    ErrorRule("thread_owned", None, 2018300),
    ErrorRule("thread_owned", None, 2018321),
    ErrorRule("rn_cooldown", 4, 2018354),
    ErrorRule("rate_limited", 613),
    ErrorRule("rate_limited", 4),
    ErrorRule("auth", 190),
    ErrorRule("transient", 1),
    ErrorRule("transient", 2),
    ErrorRule("invalid", 100),
    # Marketing Message API: inactive campaign/message, invalid message id or token, page mismatch
    *(ErrorRule("invalid", None, sub) for sub in range(2300000, 2300006)),
)


@dataclass(frozen=True, slots=True)
class GraphVerdict:
    """The class of one answer, Meta's own code/subcode/message, and the action to take."""

    error_class: ErrorClass
    action: Action
    code: int | None = None
    subcode: int | None = None
    message: str | None = None
    message_id: str | None = None
    recipient_id: str | None = None

    @property
    def detail(self) -> str:
        if self.error_class == "ok":
            return f"sent, message_id {self.message_id}"
        code = "" if self.code is None else f" {self.code}"
        sub = "" if self.subcode is None else f"/{self.subcode}"
        text = f": {self.message}" if self.message else ""
        return f"Graph API {self.error_class.replace('_', ' ')}{code}{sub}{text}"


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def match(code: int | None, subcode: int | None, message: str | None) -> ErrorClass | None:
    """The class of the first row of RULES that matches, or None."""
    text = (message or "").lower()
    for rule in RULES:
        if rule.code is not None and rule.code != code:
            continue
        if rule.subcode is not None and rule.subcode != subcode:
            continue
        if rule.text is not None and rule.text not in text:
            continue
        return rule.error_class
    return None


def _verdict(cls: ErrorClass, **fields: Any) -> GraphVerdict:
    return GraphVerdict(cls, ACTIONS[cls], **fields)


def classify(status: int, body: Any) -> GraphVerdict:
    """The verdict for an HTTP answer from the Graph API (`body` is the parsed JSON, or None)."""
    error = body.get("error") if isinstance(body, dict) else None
    if 200 <= status < 300 and not isinstance(error, dict):
        fields = body if isinstance(body, dict) else {}
        message_id = fields.get("message_id")
        recipient_id = fields.get("recipient_id")
        return _verdict(
            "ok",
            message_id=message_id if isinstance(message_id, str) else None,
            recipient_id=recipient_id if isinstance(recipient_id, str) else None,
        )
    if isinstance(error, dict):
        code = _int_or_none(error.get("code"))
        subcode = _int_or_none(error.get("error_subcode"))
        raw = error.get("message")
        message = raw if isinstance(raw, str) else None
        found = match(code, subcode, message)
        if found is None:
            found = "transient" if status >= 500 else "rejected"
        return _verdict(found, code=code, subcode=subcode, message=message)
    if status == 429:
        return _verdict("rate_limited", message=f"HTTP {status} without an error body")
    if status >= 500 or status < 400:
        return _verdict("transient", message=f"HTTP {status} without an error body")
    return _verdict("rejected", message=f"HTTP {status} without an error body")


Transport = Literal["connect", "timeout", "broken"]


def classify_transport(kind: Transport, what: str) -> GraphVerdict:
    """No HTTP answer: `connect` (never sent: safe to retry) or `timeout`/`broken` (ambiguous)."""
    if kind == "connect":
        return _verdict("unreachable", message=f"could not connect: {what}")
    return _verdict("transient", message=f"{'timed out' if kind == 'timeout' else what}")
