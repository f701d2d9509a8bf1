"""Composition root: the one place that turns settings into pools, clients and wiring.

Entrypoints call it; nothing here is imported by the layers it assembles. The SDK builds its
own read-path connections (``service.client``) so that a sender never loads the worker.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

import asyncpg
import structlog
from redis.exceptions import RedisClusterException, RedisError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from service.adapters.catalog_file import configured_catalog
from service.adapters.kafka.broker import build_broker
from service.adapters.kafka.connection import KafkaConnection, KafkaUnreachable, explained
from service.adapters.kafka.consumer import (
    BulkLane,
    GroupMembership,
    WorkerState,
    register_worker,
)
from service.adapters.kafka.contract_publisher import ContractPublisher
from service.adapters.kafka.dead_letters import KafkaDeadLetters
from service.adapters.kafka.effect_receipts import EffectReceiptsFeed
from service.adapters.kafka.intake import KafkaCommandSink, OutcomeFollower
from service.adapters.kafka.producer import KafkaOutput
from service.adapters.kafka.sizes import KafkaTopicRetention, read_size_limits
from service.adapters.kafka.snapshot_sink import KafkaSnapshotSink
from service.adapters.kafka.topics import KafkaTopic, check_copartitioned, ensure_topics
from service.adapters.postgres.history_reader import PostgresHistoryReader
from service.adapters.postgres.migrator import migrate
from service.adapters.postgres.pool import create_pool
from service.adapters.postgres.retention import PostgresPrunableLogs
from service.adapters.postgres.revoked_links import PostgresRevokedLinks
from service.adapters.postgres.subject_pages import PostgresSubjectPages
from service.adapters.postgres.unit_of_work import PostgresCommandUnitOfWork, PostgresTombstoneLog
from service.adapters.prometheus_metrics import PrometheusMetrics
from service.adapters.read_path import build_decisions
from service.adapters.redis_client import RedisClient, create_redis, eviction_problem, ping
from service.adapters.redis_effect_receipts import RedisEffectReceipts
from service.adapters.redis_rate_limits import FAILURES, RedisLimitStore, parse_limits
from service.adapters.redis_receipts import RedisReceiptClock
from service.adapters.redis_refill import RedisCacheRefill
from service.adapters.redis_states import state_cache
from service.application.decisions import DecisionService
from service.application.dlq_replay import ReplayDeadLetters
from service.application.health import Liveness, Readiness
from service.application.history import ConsentHistory
from service.application.intake import CommandIntake
from service.application.isolation import IsolatingProcessor
from service.application.page_links import PageLinks
from service.application.process_commands import ProcessCommands
from service.application.rate_limits import Rule, Throttle, limits_of
from service.application.rebuild import RebuildCache
from service.application.receipts import CommandReceipts, TrackEffects
from service.application.republish import RepublishSnapshots
from service.application.retention import RetentionJob, RetentionPolicy
from service.application.sms_replies import SmsNumbers, SmsReplies, parse_yes_tenants
from service.application.subject_pages import NO_PROGRESS, Progress
from service.application.telemetry import NO_TELEMETRY, ReadTelemetry
from service.domain.catalog import Catalog
from service.domain.link_tokens import LinkSigner, signer_from
from service.settings import Settings

log = structlog.get_logger(__name__)


def contract_topics(settings: Settings) -> list[KafkaTopic]:
    n, rf = settings.topic_partitions, settings.topic_replication
    return [
        KafkaTopic(settings.topic_commands, n, rf),
        # The same partition count as the live commands topic: a subject is on partition p
        # of both (adapters/kafka/priority.py).
        KafkaTopic(settings.commands_bulk_topic, n, rf),
        KafkaTopic(settings.topic_preferences, n, rf, {"cleanup.policy": "compact"}),
        KafkaTopic(settings.topic_outcomes, n, rf),
        KafkaTopic(settings.topic_dlq, n, rf),
    ]


def receipts_topics(settings: Settings) -> list[KafkaTopic]:
    """The senders' applied reports: one partition (a few small records a second per sender
    instance), kept an hour; only the latest report of each instance matters."""
    if not settings.topic_sender_receipts:
        return []
    config = {"retention.ms": str(3_600_000), "segment.ms": str(600_000)}
    return [KafkaTopic(settings.topic_sender_receipts, 1, settings.topic_replication, config)]


def effect_receipts(settings: Settings, redis: RedisClient) -> RedisEffectReceipts:
    return RedisEffectReceipts(
        redis, settings.redis_prefix, ttl_seconds=settings.receipt_ttl_seconds
    )


@dataclass
class Container:
    settings: Settings
    catalog: Catalog
    pool: asyncpg.Pool
    redis: RedisClient
    readiness: Readiness
    decisions: DecisionService
    metrics: PrometheusMetrics = field(default_factory=PrometheusMetrics)
    liveness: Liveness = field(default_factory=Liveness)
    worker_state: WorkerState | None = None
    output: KafkaOutput | None = None
    worker_started: asyncio.Event = field(default_factory=asyncio.Event)
    worker_first_try: asyncio.Event = field(default_factory=asyncio.Event)
    channels: Channels | None = None
    history: ConsentHistory | None = None
    throttle: Throttle | None = None
    receipts: CommandReceipts | None = None
    effects: TrackEffects | None = None


@dataclass
class Channels:
    """What the channels (intake, links, pages, SMS) need beyond the read path."""

    intake: CommandIntake
    follower: OutcomeFollower
    output: KafkaOutput
    signer: LinkSigner | None
    sms: SmsReplies
    links: PageLinks
    started: asyncio.Event = field(default_factory=asyncio.Event)


def link_signer(settings: Settings) -> LinkSigner | None:
    """The signer of ``OPTOUT_LINK_KEYS``, or None when no key is configured."""
    return signer_from(
        settings.link_keys.get_secret_value(),
        settings.link_signing_key_id,
        settings.link_validity_seconds,
        settings.preferences_link_validity_seconds,
    )


def page_links(settings: Settings, pool: asyncpg.Pool) -> PageLinks:
    """Links checked against their signature and the deny list (`optout links revoke`)."""
    return PageLinks(link_signer(settings), PostgresRevokedLinks(pool))


async def open_page_links(settings: Settings, stack: AsyncExitStack) -> PageLinks:
    """The links and their deny list on a pool of its own, closed with `stack` (the CLI)."""
    pool = await create_pool(settings.database_dsn, settings.database_schema, 1)
    stack.push_async_callback(pool.close)
    return page_links(settings, pool)


def configured_limits(settings: Settings) -> dict[Rule, str]:
    return limits_of(
        {
            "page_ip": settings.rate_limit_page_ip,
            "page_token": settings.rate_limit_page_token,
            "subject_changes": settings.rate_limit_subject_changes,
            "sms_ip": settings.rate_limit_sms_ip,
            "sms_number": settings.rate_limit_sms_number,
            "api_token": settings.rate_limit_api_token,
            "api_ip": settings.rate_limit_api_ip,
        }
    )


def throttle_for(
    settings: Settings, redis: RedisClient, metrics: PrometheusMetrics
) -> Throttle | None:
    """The rate limits, or None when switched off. Subjects are named in Redis under a key
    of the service's own: the identifier key, else the signing link key; without either,
    a key of this process (per-subject counts are then per process, and say so)."""
    if not settings.rate_limits:
        return None
    key = settings.identifier_key.get_secret_value().encode()
    if not key:
        signer = link_signer(settings)
        key = signer.signing_secret() if signer is not None else b""
    if not key:
        log.warning("rate_limit_key_per_process", detail="set OPTOUT_IDENTIFIER_KEY")
        key = secrets.token_bytes(32)
    store = RedisLimitStore(
        redis,
        settings.redis_dsn,
        prefix=settings.redis_prefix,
        limits=parse_limits(configured_limits(settings)),
        cluster=settings.redis_cluster,
    )
    return Throttle(
        store,
        key=key,
        repeat_window_seconds=settings.opt_out_repeat_window_seconds,
        telemetry=metrics,
        failures=FAILURES,
    )


def channels_enabled(settings: Settings, *, by_default: bool) -> bool:
    """`auto` leaves it to the command: on for `optout run` (everything in one process),
    off for `optout worker` and `optout api`, which scale apart (set `on` for the API)."""
    return settings.channels == "on" or (settings.channels == "auto" and by_default)


def decisions_for(
    settings: Settings,
    catalog: Catalog,
    pool: asyncpg.Pool,
    redis: RedisClient,
    telemetry: ReadTelemetry = NO_TELEMETRY,
) -> DecisionService:
    return build_decisions(
        catalog,
        pool,
        redis,
        redis_prefix=settings.redis_prefix,
        fill_ttl_seconds=settings.cache_fill_ttl_seconds,
        unknown_ttl_seconds=settings.cache_unknown_ttl_seconds,
        identifier_key=settings.identifier_key.get_secret_value().encode() or None,
        telemetry=telemetry,
    )


def consent_history_for(settings: Settings, pool: asyncpg.Pool) -> ConsentHistory:
    """The proof-of-consent export; with the identifier key it finds erased identifiers."""
    key = settings.identifier_key.get_secret_value().encode()
    return ConsentHistory(PostgresHistoryReader(pool), key)


async def open_consent_history(settings: Settings, stack: AsyncExitStack) -> ConsentHistory:
    """The export on a pool of its own, closed with `stack` (the CLI: no Redis, no Kafka)."""
    pool = await create_pool(settings.database_dsn, settings.database_schema, 1)
    stack.push_async_callback(pool.close)
    return consent_history_for(settings, pool)


async def run_migrations(settings: Settings) -> list[str]:
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        return await migrate(conn, settings.database_schema)
    finally:
        await conn.close()


async def build_container(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    with_worker: bool,
    channels_by_default: bool = False,
) -> Container:
    """The HTTP API's dependencies, and with `with_worker` the consumer and its outputs.

    The API alone opens no Kafka client: it reads Redis and PostgreSQL only, and its
    readiness checks just those. Nothing here needs a dependency to answer: the pool and
    the Redis client connect on first use, and the worker starts in the background as soon
    as Kafka answers, so a process started during an outage serves `/healthz` and a
    `/readyz` naming what is missing, and gets to work when it comes back. Inconsistent
    Kafka security settings are refused first (``KafkaSecurityError``, one line).
    """
    KafkaConnection.from_settings(settings)
    pool = await create_pool(
        settings.database_dsn, settings.database_schema, settings.database_pool_size
    )
    stack.push_async_callback(pool.close)
    redis = create_redis(settings.redis_dsn, cluster=settings.redis_cluster)
    stack.push_async_callback(redis.aclose)
    catalog = configured_catalog(settings.catalog_file)
    with suppress(RedisError, RedisClusterException, OSError):
        if (problem := await eviction_problem(redis)) is not None:
            log.error("redis_eviction_policy_unsafe", detail=problem)
    readiness = Readiness()
    metrics = PrometheusMetrics()
    readiness.observers.append(metrics.readiness)
    container = Container(
        settings,
        catalog,
        pool,
        redis,
        readiness,
        decisions_for(settings, catalog, pool, redis, metrics),
        metrics,
        history=consent_history_for(settings, pool),
        throttle=throttle_for(settings, redis, metrics),
        receipts=CommandReceipts(
            effect_receipts(settings, redis), live_seconds=settings.sender_live_seconds
        ),
    )

    async def postgres_probe() -> str | None:
        return None if await pool.fetchval("SELECT 1") == 1 else "unexpected answer"

    async def redis_probe() -> str | None:
        if not await ping(redis):
            return "no PONG"
        return await eviction_problem(redis)

    readiness.add("postgresql", postgres_probe)
    readiness.add("redis", redis_probe)
    await _report_unreachable(settings, container)
    if channels_enabled(settings, by_default=channels_by_default):
        container.channels = _channels(settings, container)
        starting_channels = asyncio.create_task(
            _start_channels_when_possible(settings, stack, container.channels, readiness)
        )
        stack.push_async_callback(_cancel, starting_channels)
    if with_worker:
        container.worker_state = WorkerState()
        starting = asyncio.create_task(_start_worker_when_possible(settings, stack, container))
        stack.push_async_callback(_cancel, starting)
        if settings.topic_sender_receipts:
            container.effects = TrackEffects(effect_receipts(settings, redis), metrics)
            timing = asyncio.create_task(_start_receipts_when_possible(settings, stack, container))
            stack.push_async_callback(_cancel, timing)
        # Started before returning when Kafka answers; otherwise it goes on in the background.
        await container.worker_first_try.wait()
    return container


def _channels(settings: Settings, container: Container) -> Channels:
    kafka = KafkaConnection.from_settings(settings)
    output = KafkaOutput(kafka, liveness=container.liveness, client_id="optout-intake")
    follower = OutcomeFollower(kafka, settings.topic_outcomes)
    intake = CommandIntake(
        container.catalog,
        KafkaCommandSink(output, settings.topic_commands),
        follower,
        max_record_bytes=settings.max_record_bytes,
        max_future=timedelta(seconds=settings.max_future_seconds),
    )
    links = page_links(settings, container.pool)
    return Channels(
        intake,
        follower,
        output,
        links.signer,
        sms_replies(settings, container.redis, intake),
        links,
    )


def sms_replies(settings: Settings, redis: RedisClient, intake: CommandIntake) -> SmsReplies:
    """The SMS webhook's use case; a receipt time lives at least as long as the processed
    log keeps a command, so a replay within it is a `duplicate`."""
    ttl = max(settings.sms_receipt_ttl_seconds, settings.retention_seconds)
    return SmsReplies(
        intake,
        RedisReceiptClock(redis, settings.redis_prefix, ttl),
        numbers=SmsNumbers.parse(settings.sms_numbers),
        yes_tenants=parse_yes_tenants(settings.sms_yes_tenants),
    )


async def _start_channels_when_possible(
    settings: Settings, stack: AsyncExitStack, channels: Channels, readiness: Readiness
) -> None:
    """Start the intake producer and the outcome follower, retrying while Kafka does not
    answer; `/readyz` names the `intake` check meanwhile."""

    async def intake_probe() -> str | None:
        if not channels.started.is_set():
            return "intake not started"
        return None if channels.follower.running else "outcome follower restarting"

    readiness.add("intake", intake_probe)
    kafka = KafkaConnection.from_settings(settings)
    # Only the topics the channels use: their principal may describe no other (README, ACLs).
    used = {settings.topic_commands, settings.topic_outcomes}
    topics = [t for t in contract_topics(settings) if t.name in used]
    async for attempt in AsyncRetrying(
        wait=wait_exponential(multiplier=0.5, max=settings.retry_backoff_max_seconds),
        retry=retry_if_exception_type(Exception),
    ):
        with attempt:
            async with AsyncExitStack() as trial:
                await ensure_topics(kafka, topics)
                await channels.output.start()
                trial.push_async_callback(channels.output.stop)
                await channels.follower.start()
                trial.push_async_callback(channels.follower.stop)
                stack.push_async_callback(trial.pop_all().aclose)
    channels.started.set()


async def _drain(state: WorkerState, deadline_seconds: float) -> None:
    started = time.monotonic()
    drained = await state.drain(deadline_seconds)
    log.info(
        "worker_drained" if drained else "worker_drain_deadline_passed",
        seconds=round(time.monotonic() - started, 3),
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


async def _report_unreachable(settings: Settings, container: Container) -> None:
    """One structured line per dependency that does not answer at start-up: which, where
    (host and port, never credentials) and why (the error's class)."""
    checks = await container.readiness.check()
    where = {
        "postgresql": host_port(settings.database_dsn),
        "redis": host_port(settings.redis_dsn),
    }
    for name, why in checks.items():
        if why is not None:
            log.error("dependency_unreachable", dependency=name, where=where.get(name), error=why)


def host_port(url: str) -> str:
    """Where a dependency is, for a log line or an error: host and port, never credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.hostname else "(unix socket)"


async def _start_worker_when_possible(
    settings: Settings, stack: AsyncExitStack, container: Container
) -> None:
    """Start the consumer and its producer, retrying with capped backoff while Kafka does not
    answer; readiness says why meanwhile. Each attempt's partial start is undone."""
    state = container.worker_state
    assert state is not None
    failing: list[str] = []

    async def waiting_probe() -> str | None:
        return f"worker not started: {failing[-1]}" if failing else "worker starting"

    container.readiness.add("kafka", waiting_probe)

    def failed(attempt: RetryCallState) -> None:
        assert attempt.outcome is not None
        exc = attempt.outcome.exception()
        error = (
            str(exc) if isinstance(exc, KafkaUnreachable | PermissionError) else type(exc).__name__
        )
        if not failing:
            log.error(
                "dependency_unreachable",
                dependency="kafka",
                where=settings.kafka_bootstrap,
                error=error,
            )
        failing.append(f"kafka unreachable ({error})")
        container.worker_first_try.set()

    async for attempt in AsyncRetrying(
        wait=wait_exponential(multiplier=0.5, max=settings.retry_backoff_max_seconds),
        retry=retry_if_exception_type(Exception),
        before_sleep=failed,
    ):
        with attempt:
            async with AsyncExitStack() as trial:
                try:
                    await _start_worker(settings, trial, container, state)
                except Exception as exc:
                    raise await explained(KafkaConnection.from_settings(settings), exc) from exc
                stack.push_async_callback(trial.pop_all().aclose)
    if failing:
        log.info("dependency_reachable", dependency="kafka", where=settings.kafka_bootstrap)
    container.worker_started.set()
    container.worker_first_try.set()


async def _start_receipts_when_possible(
    settings: Settings, stack: AsyncExitStack, container: Container
) -> None:
    """Time each opt-out's effect at the senders (effect receipts), once the worker runs; a
    failure here never holds the worker up, it is retried."""
    assert container.effects is not None
    await container.worker_started.wait()
    feed = EffectReceiptsFeed(
        KafkaConnection.from_settings(settings),
        container.effects,
        preferences_topic=settings.topic_preferences,
        receipts_topic=settings.topic_sender_receipts,
        group=f"{settings.consumer_group}-receipts",
    )
    kafka = KafkaConnection.from_settings(settings)
    async for attempt in AsyncRetrying(
        wait=wait_exponential(multiplier=0.5, max=30.0),
        retry=retry_if_exception_type(Exception),
    ):
        with attempt:
            # Created here, not with the contract's topics: a worker whose principal may not
            # use it still processes commands, only without receipts.
            await ensure_topics(kafka, receipts_topics(settings))
            await feed.start()
    stack.push_async_callback(feed.stop)


def _answers(readiness: Readiness) -> Callable[[str], Awaitable[bool]]:
    """Whether a dependency answers now: its own readiness probe, run afresh (not cached)."""

    async def answers(dependency: str) -> bool:
        probe = readiness.probes.get(dependency)
        return probe is not None and await probe() is None

    return answers


async def _start_worker(
    settings: Settings, stack: AsyncExitStack, container: Container, state: WorkerState
) -> None:
    kafka = KafkaConnection.from_settings(settings)
    await ensure_topics(kafka, contract_topics(settings))
    await check_copartitioned(kafka, settings.topic_commands, settings.commands_bulk_topic)
    broker = build_broker(kafka)
    limits = await read_size_limits(kafka, settings.topic_dlq)
    output = KafkaOutput(kafka, limits, container.liveness)
    container.output = output
    await output.start()
    # The exit stack unwinds in reverse: the consumer stops before its producer closes.
    stack.push_async_callback(output.stop)
    publisher = ContractPublisher(
        output,
        preferences=settings.topic_preferences,
        outcomes=settings.topic_outcomes,
        dlq=settings.topic_dlq,
    )
    pool = container.pool
    commands = ProcessCommands(
        lambda: PostgresCommandUnitOfWork(pool),
        state_cache(container.redis, settings.redis_prefix, settings.cache_ttl_seconds),
        publisher,
        container.catalog,
        max_record_bytes=settings.max_record_bytes,
        max_future=timedelta(seconds=settings.max_future_seconds),
        max_lanes=settings.worker_lanes,
        telemetry=container.metrics,
        identifier_key=settings.identifier_key.get_secret_value().encode() or None,
        tombstones=PostgresTombstoneLog(pool),
        fence_seconds=settings.erasure_fence_seconds,
    )
    process = IsolatingProcessor(
        commands,
        publisher,
        max_record_bytes=settings.max_record_bytes,
        telemetry=container.metrics,
    )
    register_worker(
        broker,
        topic=settings.topic_commands,
        group_id=settings.consumer_group,
        max_records=settings.batch_max_records,
        wait_seconds=settings.batch_wait_seconds,
        process=process,
        state=state,
        backoff_max_seconds=settings.retry_backoff_max_seconds,
        telemetry=container.metrics,
        stage=commands.store if settings.worker_pipeline else None,
        membership=GroupMembership(
            session_timeout_ms=round(settings.consumer_session_timeout_seconds * 1000),
            heartbeat_interval_ms=round(settings.consumer_heartbeat_interval_seconds * 1000),
            instance_id=settings.consumer_instance_id or None,
        ),
        answers=_answers(container.readiness),
        probe_every_s=settings.retry_probe_interval_seconds,
        bulk=BulkLane(settings.commands_bulk_topic, settings.bulk_max_records_per_batch),
    )

    async def kafka_probe() -> str | None:
        return None if await broker.ping(timeout=2.0) else "broker unreachable"

    async def consumer_probe() -> str | None:
        failure = state.failure()
        if failure is not None:
            return failure
        return None if state.assigned else "no partitions assigned"

    container.readiness.add("kafka", kafka_probe)
    container.readiness.add("consumer", consumer_probe)
    await broker.start()
    stack.push_async_callback(broker.stop)
    if settings.retention_seconds:
        retention = RetentionJob(
            PostgresPrunableLogs(pool),
            KafkaTopicRetention(kafka, settings.topic_commands),
            RetentionPolicy(
                settings.retention_seconds,
                settings.retention_batch_rows,
                settings.retention_interval_seconds,
            ),
        )
        pruning = asyncio.create_task(retention.run_forever())
        stack.push_async_callback(_cancel, pruning)
    # Unwound first on shutdown: no new batch, the one in flight finishes and commits.
    stack.push_async_callback(_drain, state, settings.shutdown_deadline_seconds)


async def cache_rebuilder(
    settings: Settings, stack: AsyncExitStack, progress: Progress = NO_PROGRESS
) -> RebuildCache:
    """`optout cache rebuild`: PostgreSQL pages into the cache the worker writes (same keys,
    same compare-and-set, same expiry settings). Both are asked at once, PostgreSQL first."""
    pool = await create_pool(settings.database_dsn, settings.database_schema, 2)
    stack.push_async_callback(pool.close)
    redis = create_redis(settings.redis_dsn, cluster=settings.redis_cluster)
    stack.push_async_callback(redis.aclose)
    refill = RedisCacheRefill(
        redis,
        settings.redis_prefix,
        settings.cache_ttl_seconds,
        settings.cache_unknown_ttl_seconds,
    )
    pages = PostgresSubjectPages(pool, events=False)
    await pages.check()
    await refill.check()
    return RebuildCache(pages, refill, progress)


async def snapshot_republisher(
    settings: Settings, stack: AsyncExitStack, progress: Progress = NO_PROGRESS
) -> RepublishSnapshots:
    """`optout events republish`: PostgreSQL pages onto the compacted preferences topic, with
    the topic's settings of `contract_topics`. Both are asked at once, PostgreSQL first, then
    Kafka (the topic is created when missing)."""
    pool = await create_pool(settings.database_dsn, settings.database_schema, 2)
    stack.push_async_callback(pool.close)
    pages = PostgresSubjectPages(pool, events=True)
    await pages.check()
    (topic,) = [t for t in contract_topics(settings) if t.name == settings.topic_preferences]
    sink = await KafkaSnapshotSink.started(KafkaConnection.from_settings(settings), topic)
    stack.push_async_callback(sink.stop)
    return RepublishSnapshots(pages, sink, progress)


async def dead_letter_replayer(
    settings: Settings, stack: AsyncExitStack, *, dry_run: bool
) -> ReplayDeadLetters:
    """`optout dlq replay`: the dead-letter topic read, the chosen records' original bytes
    published on the bulk lane's commands topic (created when missing, like the importer)."""
    kafka = KafkaConnection.from_settings(settings)
    source = KafkaDeadLetters(kafka, settings.topic_dlq)
    if dry_run:
        return ReplayDeadLetters(source, None)
    (bulk,) = [t for t in contract_topics(settings) if t.name == settings.commands_bulk_topic]
    await ensure_topics(kafka, [bulk])
    output = KafkaOutput(kafka, client_id="optout-dlq-replay")
    await output.start()
    stack.push_async_callback(output.stop)
    return ReplayDeadLetters(source, KafkaCommandSink(output, bulk.name))
