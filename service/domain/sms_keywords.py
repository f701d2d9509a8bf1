"""What an SMS reply asks for: stop, start again, help, or nothing we act on.

Carriers and the CTIA handbook fix the keywords (STOP, STOPALL, UNSUBSCRIBE, CANCEL, END,
QUIT; START, UNSTOP; HELP; YES only where a sender's programme says so, hence an intent of
its own that the tenant's settings decide), and the FCC's 2025 revocation rule adds that
any reply that reasonably expresses "stop" counts (REVOKE, OPTOUT, "opt out", "stop
texting me"). Matching is on the whole message, ignoring case, surrounding spaces and
punctuation: a reply that only mentions a keyword in a sentence ("I will stop by later")
is not a revocation, while the common phrasings of one are listed explicitly.
"""

from __future__ import annotations

import re
from typing import Literal

Intent = Literal["stop", "start", "yes", "help"]

STOP_KEYWORDS = frozenset(
    {"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout", "opt out"}
)
STOP_PHRASES = frozenset(
    {
        "stop texting me",
        "stop texting",
        "stop messaging me",
        "stop sending",
        "stop sending me messages",
        "stop sending me texts",
        "unsubscribe me",
        "please stop",
        "stop please",
        "opt me out",
        "remove me",
        "take me off your list",
        "do not text me",
        "dont text me",
        "no more texts",
        "no more messages",
    }
)
START_KEYWORDS = frozenset({"start", "unstop"})
YES_KEYWORDS = frozenset({"yes"})
HELP_KEYWORDS = frozenset({"help", "info"})

_NOT_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalise(body: str) -> str:
    """Lower case, punctuation dropped (apostrophes too), spaces collapsed."""
    text = body.casefold().replace("'", "").replace("\u2019", "")
    return " ".join(_NOT_WORD.sub(" ", text).split())


def classify(body: str) -> Intent | None:
    text = normalise(body)
    if text in STOP_KEYWORDS or text in STOP_PHRASES:
        return "stop"
    if text in START_KEYWORDS:
        return "start"
    if text in YES_KEYWORDS:
        return "yes"
    if text in HELP_KEYWORDS:
        return "help"
    return None
