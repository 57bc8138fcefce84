"""Small vocabularies shared by every schema: platforms, purposes, mechanisms, reasons."""

from __future__ import annotations

from typing import Literal

Platform = Literal["messenger", "instagram"]
PLATFORMS: tuple[Platform, ...] = ("messenger", "instagram")

Purpose = Literal[
    "auto", "response", "update", "human_agent", "otn", "recurring", "marketing", "utility", "tag"
]

Mechanism = Literal[
    "RESPONSE",
    "UPDATE",
    "HUMAN_AGENT",
    "MESSAGE_TAG",
    "OTN",
    "RECURRING",
    "MARKETING",
    "UTILITY",
    "PRIVATE_REPLY",  # R-WIN-5: one message to the author of a comment or visitor post
]
TOKEN_MECHANISMS: frozenset[Mechanism] = frozenset(
    {"OTN", "RECURRING", "MARKETING", "PRIVATE_REPLY"}
)
"""The mechanisms that spend a one-time token: a decision by one of them carries the token it
reserved (a private reply's is its comment or post id)."""

# Every reason code of DESIGN.md §4.5, plus the ones windowgate added (marked). A code keeps its
# meaning forever: add a new one rather than reuse.
AllowedReason = Literal[
    "window_open",
    "human_agent_window",
    "message_tag",
    "otn_token",
    "recurring_token",
    "marketing_token",
    "utility_template",
    "private_reply",  # added by windowgate: R-WIN-5
]
RefusedReason = Literal[
    "window_closed",
    "human_agent_window_closed",
    "human_author_missing",
    "human_agent_not_permitted",
    "tag_retired",
    "no_token_for_topic",
    "token_expired",
    "token_spent",
    "opted_out",
    "cooldown",
    "mechanism_ended",
    "platform_unsupported",
    "region_excluded",
    "user_unavailable",
    "page_restricted",
    "thread_owned_by_other_app",
    "deadline_passed",
    "invalid_request",
    # added by windowgate:
    "mechanism_disabled",  # the rule exists but is switched off (UNCONFIRMED rules default off)
    "page_not_configured",  # the page lacks a setting the mechanism needs (e.g. ad_account_id)
    # opt-in requests (DESIGN.md §4.6, R-RN-3):
    "optin_request_outside_window",  # an OTN / recurring opt-in request while the window is closed
    "optin_request_purpose",  # an opt-in request asked with a token, a tag or a template
    "optin_request_limit",  # R-RN-3: the recurring opt-in requests per user and title are used up
    # named tokens and private replies (issue 14):
    "token_not_found",  # the named OTN token is not one of this user's
    "token_topic_mismatch",  # the named OTN token is on another topic than the request's
    "no_comment",  # no comment or visitor post by this user with that id is known (R-WIN-5)
    "private_reply_used",  # the comment / post already had its one private reply (R-WIN-5)
    "private_reply_expired",  # the comment / post is older than the rule's 7 days (R-WIN-5)
]
Reason = Literal[AllowedReason, RefusedReason]

OptinTemplate = Literal["one_time_notif_req", "notification_messages"]
"""The template types of a message that asks the user for permission (an opt-in request):
a One-Time Notification token on a topic, or recurring / marketing messages under a title."""
OPTIN_TEMPLATES: tuple[OptinTemplate, ...] = ("one_time_notif_req", "notification_messages")

RecipientKind = Literal["user_ref", "comment_id", "post_id"]
"""How a Graph call addresses its user when not by `recipient.id` (nor by a token): a checkbox
plugin's `user_ref` (R-WIN-2), or the comment / visitor post of a private reply (R-WIN-5)."""
