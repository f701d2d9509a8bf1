"""SMS replies: every keyword and revocation phrase, in any case and dressing, and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.sms_keywords import (
    HELP_KEYWORDS,
    START_KEYWORDS,
    STOP_KEYWORDS,
    STOP_PHRASES,
    YES_KEYWORDS,
    classify,
)

STOPS = [
    "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "opt out",
    "stop texting me", "unsubscribe me",
]  # fmt: skip


@pytest.mark.parametrize("word", STOPS)
@pytest.mark.parametrize("dress", ["{}", "  {}  ", "{}!", "{}.", "'{}'", "{}!!!\n"])
def test_stop_words_in_any_dress(word: str, dress: str) -> None:
    for variant in (word, word.lower(), word.upper(), word.title()):
        assert classify(dress.format(variant)) == "stop"


@pytest.mark.parametrize("word", ["START", "UNSTOP"])
def test_start_words(word: str) -> None:
    assert classify(f" {word.lower()}! ") == "start"


def test_yes_is_its_own_intent_never_a_start_by_itself() -> None:
    # Only a tenant that configures it takes YES for START (application/sms_replies.py).
    assert classify(" Yes! ") == "yes"


def test_help() -> None:
    assert classify("Help?") == "help"


@pytest.mark.parametrize(
    "body", ["I will stop by later", "yes please send more", "", "stopp", "ending soon", "?"]
)
def test_sentences_that_only_mention_a_keyword_are_not_acted_on(body: str) -> None:
    assert classify(body) is None


keywords = st.sampled_from(
    sorted(STOP_KEYWORDS | STOP_PHRASES | START_KEYWORDS | YES_KEYWORDS | HELP_KEYWORDS)
)
dressing = st.text(alphabet=" \t\n.!?,;:-'\"()", max_size=4)


@given(keywords, dressing, dressing)
def test_surrounding_spaces_and_punctuation_never_change_the_intent(
    word: str, before: str, after: str
) -> None:
    assert classify(before + word.upper() + after) == classify(word)
    assert classify(word) is not None
