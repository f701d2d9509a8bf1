"""The sender's SDK: "may I send this?" answered from memory, Redis, or PostgreSQL.

Answers come, in order, from the in-process cache (fed by the preference-changed events,
see ``catch_up`` for its staleness bound), from Redis, and on a Redis miss from
PostgreSQL, whose state is then copied into Redis with the worker's version compare-and-set.
Every answer is the application's ``DecisionService``, the same as the HTTP API's: the SDK
cannot disagree with the worker. It loads neither the worker's wiring nor faststream.

Subject ids are normalised first (``identifiers.normalize``), as the worker does when it
decodes a command: `email:Alice@Example.com` and `email:alice@example.com` are one subject.
An identifier that cannot be normalised raises ``InvalidIdentifier``, a ``ValueError``.

Least privilege: the SDK needs only read-only credentials (a PostgreSQL role with ``SELECT``
on the schema, a Redis ACL user limited to reads; a refill Redis refuses is skipped) and never
``OPTOUT_IDENTIFIER_KEY``. The one check it cannot answer alone, an identifier that may be
erased, is asked of the decision API (``OPTOUT_CLIENT_API_URL``, a ``check`` token).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from functools import lru_cache, partial
from types import TracebackType

from prometheus_client import CollectorRegistry

from service.adapters.catalog_file import configured_catalog
from service.adapters.kafka.connection import KafkaConnection
from service.adapters.postgres.pool import create_pool
from service.adapters.read_path import build_decisions
from service.adapters.redis_client import create_redis
from service.application.decisions import (
    DecisionService,
    IdentifierKeyMissing,
    SubjectPreferences,
)
from service.client.applied_reports import AppliedReporter
from service.client.decision_api import DecisionApi
from service.client.follower import PreferencesFollower
from service.client.follower_metrics import SdkMetrics
from service.client.local_cache import LocalCache
from service.domain.catalog import Catalog, link_problem
from service.domain.decision import is_allowed
from service.domain.identifiers import PREFIXES, normalize
from service.domain.link_tokens import (
    LinkClaim,
    LinkSigner,
    UnsubscribeLink,
    signer_from,
    unsubscribe_link,
)
from service.domain.model import Decision, SubjectKey
from service.settings import Settings

# Identifiers asked again and again (a sender's recipients) are normalised once: a phone
# number's parse costs far more than the check it precedes.
_normalized_identifier = lru_cache(maxsize=65_536)(normalize)


def normalized(subject_id: str) -> str:
    """The id as the service stores it; an opaque id costs one prefix test."""
    return _normalized_identifier(subject_id) if subject_id.startswith(PREFIXES) else subject_id


def applied_reporter(settings: Settings, kafka: KafkaConnection) -> AppliedReporter | None:
    """Reports of what this instance applied, named ``OPTOUT_CLIENT_SENDER`` (effect
    receipts); none when ``OPTOUT_TOPIC_SENDER_RECEIPTS`` is empty."""
    if not settings.topic_sender_receipts:
        return None
    return AppliedReporter(
        kafka,
        settings.topic_sender_receipts,
        sender=settings.client_sender,
        interval=settings.client_report_interval_seconds,
        idle_interval=settings.client_report_idle_seconds,
    )


class OptoutClient:
    """Connect with ``await OptoutClient.connect(settings)`` or ``async with``; then ask.

    One client per process: it holds a PostgreSQL pool, a Redis connection pool and, with
    the local cache on, a Kafka consumer of the preferences topic.
    """

    def __init__(
        self,
        decisions: DecisionService,
        local: LocalCache | None,
        follower: PreferencesFollower | None,
        stack: AsyncExitStack,
        settings: Settings | None = None,
        api: DecisionApi | None = None,
        metrics: SdkMetrics | None = None,
    ) -> None:
        self._decisions = decisions
        self._api = api
        self._local = local
        self.follower = follower
        # The follower's steps (``optout_sdk_follower_seconds``) on a registry the sender
        # serves from its own /metrics; None without the local cache.
        self.metrics = metrics
        self._stack = stack
        self._settings = settings or Settings()

    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        *,
        local_cache: bool | None = None,
        registry: CollectorRegistry | None = None,
    ) -> OptoutClient:
        """Open the connections; with the local cache, also start following the events.

        ``local_cache`` overrides ``OPTOUT_CLIENT_LOCAL_CACHE``; one-shot tools turn it off.
        ``registry``: where the follower's metrics go (``client.metrics``), for a sender that
        already serves a Prometheus registry; a registry of their own otherwise.
        """
        settings = settings or Settings()
        use_local = settings.client_local_cache if local_cache is None else local_cache
        stack = AsyncExitStack()
        try:
            pool = await create_pool(
                settings.database_dsn, settings.database_schema, settings.database_pool_size
            )
            stack.push_async_callback(pool.close)
            redis = create_redis(settings.redis_dsn, cluster=settings.redis_cluster)
            stack.push_async_callback(redis.aclose)
            catalog = configured_catalog(settings.catalog_file)
            local: LocalCache | None = None
            follower: PreferencesFollower | None = None
            metrics: SdkMetrics | None = None
            if use_local:
                metrics = SdkMetrics(registry)
                local = LocalCache(
                    partial(is_allowed, catalog),
                    max_entries=settings.client_local_cache_size,
                    max_age_seconds=settings.client_local_cache_max_age_seconds,
                )
                kafka = KafkaConnection.from_settings(settings)
                reporter = applied_reporter(settings, kafka)
                follower = PreferencesFollower(
                    kafka,
                    settings.topic_preferences,
                    local,
                    bound_seconds=settings.client_local_cache_bound_seconds,
                    stall_seconds=settings.client_local_cache_stall_seconds,
                    reporter=reporter,
                    telemetry=metrics,
                )
                await follower.start()
                stack.push_async_callback(follower.stop)
                if reporter is not None:
                    reporter.start()
                    stack.push_async_callback(reporter.stop)
            decisions = build_decisions(
                catalog,
                pool,
                redis,
                redis_prefix=settings.redis_prefix,
                fill_ttl_seconds=settings.cache_fill_ttl_seconds,
                unknown_ttl_seconds=settings.cache_unknown_ttl_seconds,
                # Never the identifier key: it stays with the service (see DecisionApi).
                local=local,
                read_only=True,
            )
            api: DecisionApi | None = None
            if settings.client_api_url:
                api = DecisionApi(
                    settings.client_api_url, settings.client_api_token.get_secret_value()
                )
                stack.push_async_callback(api.close)
        except BaseException:
            await stack.aclose()
            raise
        return cls(decisions, local, follower, stack, settings, api, metrics)

    async def close(self) -> None:
        await self._stack.aclose()

    async def __aenter__(self) -> OptoutClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def local_cache(self) -> LocalCache | None:
        return self._local

    async def is_allowed(
        self, subject_id: str, topic: str, channel: str, tenant: str = "default"
    ) -> Decision:
        """May `topic` be sent to the subject on `channel`? The answer carries its reason.

        Raises ``UnknownTopic`` / ``UnknownChannel`` (``service.domain.catalog``) for names
        outside the catalog: a default answer would hide the typo; ``InvalidIdentifier``
        for an identifier (``email:``, ``phone:``, ``device:``) that cannot be one.
        """
        if subject_id.startswith(PREFIXES):  # inline: the SDK's hottest call
            subject_id = _normalized_identifier(subject_id)
        key = SubjectKey(tenant, subject_id)
        try:
            return await self._decisions.is_allowed(key, topic, channel)
        except IdentifierKeyMissing:
            if self._api is None:
                raise
            return await self._api.is_allowed(key, topic, channel)

    async def preferences(self, subject_id: str, tenant: str = "default") -> SubjectPreferences:
        """The subject's rules and the decision for every catalog topic and channel; for an
        id that forwards to another subject, that subject's (``addressed_as`` is then set)."""
        return await self._decisions.preferences(SubjectKey(tenant, normalized(subject_id)))

    async def filter_allowed(
        self, subject_ids: Sequence[str], topic: str, channel: str, tenant: str = "default"
    ) -> list[str]:
        """The ids a campaign may send to, in the given order and spelling; a few Redis
        calls in all."""
        asked = list(subject_ids)
        ids = [normalized(s) for s in asked]
        try:
            allowed = await self._decisions.filter_allowed(tenant, ids, topic, channel)
        except IdentifierKeyMissing:
            if self._api is None:
                raise
            allowed = await self._api.allowed_among(tenant, ids, topic, channel)
        if ids == asked:
            return allowed
        keep = set(allowed)
        return [s for s, n in zip(asked, ids, strict=True) if n in keep]

    def unsubscribe_link(
        self,
        subject_id: str,
        topic: str,
        channel: str = "email",
        tenant: str = "default",
        *,
        issued_at: int | None = None,
    ) -> UnsubscribeLink:
        """A signed one-click unsubscribe link and its ``List-Unsubscribe`` headers.

        Made locally with ``OPTOUT_LINK_KEYS`` (no network call), exactly as ``optout link``
        and ``POST /v1/links`` make it. Raises ``ValueError`` without keys, for a name the
        catalog does not know, or for a mandatory topic (it cannot be unsubscribed from).
        """
        return make_unsubscribe_link(
            self._settings,
            self._decisions.catalog,
            subject_id,
            topic,
            channel,
            tenant,
            issued_at=issued_at,
        )


def make_unsubscribe_link(
    settings: Settings,
    catalog: Catalog,
    subject_id: str,
    topic: str,
    channel: str = "email",
    tenant: str = "default",
    *,
    issued_at: int | None = None,
) -> UnsubscribeLink:
    """The one way links are made (SDK, CLI): checked against the catalog, then signed."""
    signer: LinkSigner | None = signer_from(
        settings.link_keys.get_secret_value(),
        settings.link_signing_key_id,
        settings.link_validity_seconds,
    )
    if signer is None:
        raise ValueError("no OPTOUT_LINK_KEYS are configured")
    link_problem(catalog, topic, channel)
    issued = int(time.time()) if issued_at is None else issued_at
    claim = LinkClaim(tenant, subject_id, topic, channel, issued)
    return unsubscribe_link(signer, settings.public_base_url, claim)
