"""The catalog: which topics and channels exist, and how each topic behaves by default.

The catalog is configuration, not code, so a deployment can switch a topic to an opt-in regime
(`deny` by default) or add channels without a release; validation and decisions both read it,
which keeps every intake path on the same vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from service.domain.model import WILDCARD

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")
_TOPIC_KEYS = frozenset({"default", "mandatory", "data_use", "title", "description"})


class CatalogError(ValueError):
    """A catalog file that cannot be trusted; raised at start-up so a bad file never serves."""


class CatalogLookupError(ValueError):
    """A decision was asked about a name the catalog does not know."""


class UnknownTopic(CatalogLookupError):
    """Asked about a topic outside the catalog: answering with a default would hide a typo."""


class UnknownChannel(CatalogLookupError):
    """Asked about a channel outside the catalog: answering with a default would hide a typo."""


class InvalidTopic(CatalogLookupError):
    """A topic that cannot be asked for here: a mandatory one cannot be unsubscribed from."""


class InvalidChannel(CatalogLookupError):
    """A channel that cannot go with the topic asked about.

    Channel `*` on a message topic asks "may I send on some channel?", which has no single
    answer (an opt-out of email and an opt-in of SMS are both true at once): ask per channel.
    A data-use topic is about the data, not a channel, so it takes `*` only.
    """


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How one topic behaves when a subject has said nothing that covers it.

    `mandatory` topics (security, receipts) can never be opted out of; `data_use` topics are
    about what is done with data rather than a message channel, so they take channel `*` only.
    """

    name: str
    default_allowed: bool = True
    mandatory: bool = False
    data_use: bool = False
    # What a person reads on the unsubscribe and preference pages; the name when unset.
    title: str = ""
    description: str = ""

    @property
    def label(self) -> str:
        return self.title or self.name


_MANDATORY: Callable[[TopicSpec], bool] = attrgetter("mandatory")
_DATA_USE: Callable[[TopicSpec], bool] = attrgetter("data_use")


@lru_cache(maxsize=4096)
def _lineage(topic: str) -> tuple[str, ...]:
    # Asked for every change and every decision; the catalog's names are few, so cache.
    parts = topic.split(".")
    return tuple(".".join(parts[:i]) for i in range(len(parts), 0, -1))


@dataclass(frozen=True)
class Catalog:
    """The set of channels and topics every command and decision is checked against.

    Topics form a hierarchy by dotted name: `marketing` covers `marketing.newsletter`. Flags are
    evaluated along the lineage so a child can never escape its parent's `mandatory`.
    """

    channels: frozenset[str]
    topics: Mapping[str, TopicSpec] = field(hash=False)
    # Human names of the channels ("Email", "Text messages (SMS)") for the pages people see.
    channel_titles: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # A read-only view: the catalog is shared by every worker coroutine and must not drift.
        object.__setattr__(self, "topics", MappingProxyType(dict(self.topics)))
        object.__setattr__(self, "channels", frozenset(self.channels))
        object.__setattr__(self, "channel_titles", MappingProxyType(dict(self.channel_titles)))

    def channel_label(self, channel: str) -> str:
        """The channel's human name; `*` reads "every channel"."""
        if channel == WILDCARD:
            return "every channel"
        return self.channel_titles.get(channel, channel)

    def topic_label(self, topic: str) -> str:
        """The topic's human name; `*` reads "everything"."""
        if topic == WILDCARD:
            return "everything"
        spec = self.topics.get(topic)
        return topic if spec is None else spec.label

    def has_channel(self, name: str) -> bool:
        return name in self.channels

    def lineage(self, topic: str) -> tuple[str, ...]:
        """The topic then each ancestor, most specific first, as rule lookups need them.

        Ancestors are derived from the name, whether or not they are catalog topics
        (`data` is a namespace, not a topic).
        """
        return _lineage(topic)

    def spec(self, topic: str) -> TopicSpec:
        try:
            return self.topics[topic]
        except KeyError:
            raise UnknownTopic(f"unknown topic {topic!r}") from None

    def is_mandatory(self, topic: str) -> bool:
        """True if the topic or any ancestor is mandatory; `*` is never mandatory."""
        if topic in self.topics:
            return topic in self.mandatory_topics
        return self._along_lineage(topic, _MANDATORY)

    def is_data_use(self, topic: str) -> bool:
        """True if the topic or any ancestor is a data-use topic."""
        if topic in self.topics:
            return topic in self.data_use_topics
        return self._along_lineage(topic, _DATA_USE)

    @cached_property
    def mandatory_topics(self) -> frozenset[str]:
        """The catalog topics that are mandatory, themselves or through an ancestor.

        Resolved once per catalog (it never changes), since every change of every command is
        checked against it.
        """
        return frozenset(name for name in self.topics if self._along_lineage(name, _MANDATORY))

    @cached_property
    def data_use_topics(self) -> frozenset[str]:
        """The catalog topics that are data uses, themselves or through an ancestor."""
        return frozenset(name for name in self.topics if self._along_lineage(name, _DATA_USE))

    def _along_lineage(self, topic: str, flag: Callable[[TopicSpec], bool]) -> bool:
        """True if `flag` holds for the topic or any ancestor that is a catalog topic."""
        return any(
            (spec := self.topics.get(name)) is not None and flag(spec) for name in _lineage(topic)
        )

    def channels_for(self, topic: str) -> tuple[str, ...]:
        """The channels a topic can be asked about: data uses are channel-less (`*`)."""
        if self.is_data_use(topic):
            return (WILDCARD,)
        return tuple(sorted(self.channels))


def _topics(*specs: TopicSpec) -> dict[str, TopicSpec]:
    return {spec.name: spec for spec in specs}


DEFAULT_CHANNEL_TITLES = {
    "email": "Email",
    "sms": "Text messages (SMS)",
    "push": "Push notifications",
    "in_app": "In-app messages",
    "voice": "Phone calls",
    "whatsapp": "WhatsApp",
}

DEFAULT_CATALOG = Catalog(
    channels=frozenset(DEFAULT_CHANNEL_TITLES),
    topics=_topics(
        TopicSpec("marketing", title="Marketing"),
        TopicSpec("marketing.newsletter", title="Newsletter"),
        TopicSpec("marketing.promotions", title="Promotions and offers"),
        TopicSpec("product", title="Product news"),
        TopicSpec("product.updates", title="Product updates"),
        TopicSpec("product.tips", title="Tips and how-tos"),
        TopicSpec("reminders", title="Reminders"),
        TopicSpec("data.analytics", data_use=True, title="Analytics"),
        TopicSpec("data.personalization", data_use=True, title="Personalization"),
        TopicSpec("data.sale", data_use=True, title="Sale or sharing of personal data"),
        TopicSpec(
            "security",
            mandatory=True,
            title="Security",
            description="Needed to keep your account safe.",
        ),
        TopicSpec(
            "security.alerts",
            mandatory=True,
            title="Security alerts",
            description="Needed to keep your account safe.",
        ),
        TopicSpec(
            "transactional",
            mandatory=True,
            title="Transactional messages",
            description="Needed to deliver what you ordered or asked for.",
        ),
        TopicSpec(
            "transactional.receipts",
            mandatory=True,
            title="Receipts",
            description="Needed to deliver what you ordered or asked for.",
        ),
    ),
    channel_titles=DEFAULT_CHANNEL_TITLES,
)


def _bool(topic: str, table: Mapping[str, Any], key: str, inherited: bool) -> bool:
    value = table.get(key, inherited)
    if not isinstance(value, bool):
        raise CatalogError(f"topic {topic!r}: {key} must be true or false, got {value!r}")
    if inherited and not value:
        raise CatalogError(f"topic {topic!r}: {key} = false contradicts its parent")
    return value


def parse_catalog(document: Mapping[str, Any]) -> Catalog:
    """Build a catalog from a parsed TOML document, failing loudly on anything ambiguous.

    A silently misread catalog would change who gets messaged, so every surprise (unknown
    keys, bad defaults, orphan children, empty channels) is a `CatalogError`. Reading the
    file is the adapter's part (``service.adapters.catalog_file``).
    """
    unknown = set(document) - {"channels", "topics", "channel_titles"}
    if unknown:
        raise CatalogError(f"unknown top-level keys: {sorted(unknown)}")
    channels = document.get("channels")
    if not isinstance(channels, list) or not channels:
        raise CatalogError("channels must be a non-empty list of names")
    for channel in channels:
        if not isinstance(channel, str) or not _NAME.match(channel) or "." in channel:
            raise CatalogError(f"invalid channel name {channel!r}")
    if len(set(channels)) != len(channels):
        raise CatalogError("channels contain duplicates")

    channel_titles = document.get("channel_titles", {})
    if not isinstance(channel_titles, dict) or not all(
        isinstance(v, str) and k in channels for k, v in channel_titles.items()
    ):
        raise CatalogError("channel_titles must map catalog channels to text")

    raw_topics = document.get("topics", {})
    if not isinstance(raw_topics, dict) or not raw_topics:
        raise CatalogError('topics must be a non-empty table of [topics."name"] entries')

    specs: dict[str, TopicSpec] = {}
    # Parents before children, so inheritance can read the parent's resolved spec.
    for name in sorted(raw_topics, key=lambda n: (n.count("."), n)):
        table = raw_topics[name]
        if not isinstance(name, str) or not _NAME.match(name):
            raise CatalogError(f"invalid topic name {name!r}")
        if not isinstance(table, dict):
            raise CatalogError(f"topic {name!r} must be a table")
        extra = set(table) - _TOPIC_KEYS
        if extra:
            raise CatalogError(f"topic {name!r}: unknown keys {sorted(extra)}")
        parent_name = name.rpartition(".")[0]
        parent = specs.get(parent_name) if parent_name else None
        data_use = _bool(name, table, "data_use", parent.data_use if parent else False)
        if parent_name and parent is None and not data_use:
            # Data uses live in the `data.` namespace without a `data` topic; anything else
            # with a missing parent is almost certainly a typo that would silently lose coverage.
            raise CatalogError(f"topic {name!r}: parent topic {parent_name!r} is missing")
        default = table.get("default")
        if default is None:
            default_allowed = parent.default_allowed if parent else True
        elif default in ("allow", "deny"):
            default_allowed = default == "allow"
        else:
            raise CatalogError(
                f"topic {name!r}: default must be 'allow' or 'deny', got {default!r}"
            )
        mandatory = _bool(name, table, "mandatory", parent.mandatory if parent else False)
        if mandatory and not default_allowed:
            raise CatalogError(f"topic {name!r}: a mandatory topic cannot default to deny")
        if mandatory and data_use:
            raise CatalogError(f"topic {name!r}: a data-use topic cannot be mandatory")
        title, description = table.get("title", ""), table.get("description", "")
        if not isinstance(title, str) or not isinstance(description, str):
            raise CatalogError(f"topic {name!r}: title and description must be text")
        specs[name] = TopicSpec(name, default_allowed, mandatory, data_use, title, description)
    return Catalog(channels=frozenset(channels), topics=specs, channel_titles=channel_titles)


def link_problem(catalog: Catalog, topic: str, channel: str) -> None:
    """Refuse an unsubscribe link the worker would refuse to act on: a name outside the
    catalog, a mandatory topic, or a data use on a message channel."""
    if topic != WILDCARD and topic not in catalog.topics:
        raise UnknownTopic(f"unknown topic {topic!r}")
    if channel != WILDCARD and channel not in catalog.channels:
        raise UnknownChannel(f"unknown channel {channel!r}")
    if topic != WILDCARD and catalog.is_mandatory(topic):
        raise InvalidTopic(f"{topic!r} is mandatory: it cannot be unsubscribed from")
    if topic != WILDCARD and channel != WILDCARD and catalog.is_data_use(topic):
        raise InvalidChannel(f"data-use topic {topic!r} takes channel '*' only")
