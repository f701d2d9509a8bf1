"""Python SDK for senders: ``OptoutClient`` answers "may I send this?" with its reason.

See the README section "Read path for senders" for usage and the local cache's staleness
bound.
"""

from service.application.decisions import (
    ForwardChainTooLong,
    IdentifierKeyMissing,
    SubjectPreferences,
)
from service.client.local_cache import LocalCache
from service.client.sdk import OptoutClient
from service.domain.catalog import InvalidChannel, UnknownChannel, UnknownTopic
from service.domain.identifiers import InvalidIdentifier
from service.domain.model import Decision, Rule

__all__ = [
    "Decision",
    "ForwardChainTooLong",
    "IdentifierKeyMissing",
    "InvalidChannel",
    "InvalidIdentifier",
    "LocalCache",
    "OptoutClient",
    "Rule",
    "SubjectPreferences",
    "UnknownChannel",
    "UnknownTopic",
]
