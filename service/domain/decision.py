"""The one decision function every channel and read path uses.

Keeping a single implementation is the Consistency principle: web, SDK, senders and the
worker's own snapshots can never disagree about what a rule set means.
"""

from __future__ import annotations

from collections.abc import Mapping

from service.domain.catalog import Catalog, InvalidChannel, UnknownChannel
from service.domain.model import WILDCARD, Decision, Rule, SubjectState
from service.domain.sms_restore import KEYWORD_CHANNEL, unless_restored

Rules = Mapping[tuple[str, str], Rule]


def is_allowed(catalog: Catalog, rules: Rules | SubjectState, topic: str, channel: str) -> Decision:
    """May `topic` be sent on `channel` (or, for a data use, may the data be used)?

    Mandatory topics first, then the latest statement covering the question (topic or an
    ancestor or `*`, on the channel or `*`; a STOP by text undone by a later START does not
    count, ``sms_restore``), then the catalog default. Asking channel `*`
    means "the data use itself": only `*`-channel rules cover it. Channel `*` on a message
    topic, or a channel on a data use, raises ``InvalidChannel``.
    """
    spec = catalog.spec(topic)  # raises UnknownTopic
    if channel == WILDCARD:
        if not catalog.is_data_use(topic):
            raise InvalidChannel(f"channel '*' on message topic {topic!r}: ask per channel")
    elif not catalog.has_channel(channel):
        raise UnknownChannel(f"unknown channel {channel!r}")
    elif catalog.is_data_use(topic):
        raise InvalidChannel(f"data-use topic {topic!r} takes channel '*' only")
    if catalog.is_mandatory(topic):
        return Decision(True, "mandatory", None, topic, channel)
    table = rules.rules if isinstance(rules, SubjectState) else rules
    channels = (WILDCARD,) if channel == WILDCARD else (channel, WILDCARD)
    best: Rule | None = None
    for covering_topic in (*catalog.lineage(topic), WILDCARD):
        for covering_channel in channels:
            rule = table.get((covering_topic, covering_channel))
            if rule is None:
                continue
            if (
                rule.source_channel == KEYWORD_CHANNEL
                and rule.action == "opt_out"
                and covering_topic == WILDCARD
                and covering_channel == KEYWORD_CHANNEL
            ):
                rule = unless_restored(table, rule)  # a STOP by text, maybe undone
                if rule is None:
                    continue
            if best is None or rule.precedence_key() > best.precedence_key():
                best = rule
    if best is None:
        return Decision(spec.default_allowed, "default", None, topic, channel)
    return Decision(best.action == "opt_in", "rule", best, topic, channel)


def effective_preferences(
    catalog: Catalog, state: Rules | SubjectState
) -> dict[tuple[str, str], Decision]:
    """Every catalog topic on every channel it can be asked about, for preference pages.

    Data-use topics appear once, with channel `*`.
    """
    return {
        (topic, channel): is_allowed(catalog, state, topic, channel)
        for topic in sorted(catalog.topics)
        for channel in catalog.channels_for(topic)
    }
