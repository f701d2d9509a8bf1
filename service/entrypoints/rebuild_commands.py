"""``optout cache rebuild`` and ``optout events republish``: rebuild a derived copy of the
subjects' states (the Redis cache, the compacted preferences topic) from PostgreSQL.

Both walk every subject in pages, show their progress on stderr, and end with one line: on
stdout when done, on stderr otherwise. Exit status: 0 done; 1 a dependency did not answer
(one line naming it, where and the error's type) or refused what was sent; 2 bad usage;
3 (republish) subjects kept changing through every re-check; 130 stopped by Ctrl-C or
SIGTERM. The first signal lets the page in progress finish (for a republish that includes
its re-check), a second one aborts at once. Either command is safe to run again, and to run
while the worker runs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Annotated, TypeVar

import typer

from service.application.errors import DependencyUnavailable, Refused
from service.application.rebuild import RebuildTally
from service.application.republish import RepublishTally, StillChanging
from service.application.subject_pages import Scope, Tally
from service.bootstrap import cache_rebuilder, host_port, snapshot_republisher
from service.entrypoints.progress_display import ProgressDisplay, duration, subjects
from service.logging import configure_logging
from service.settings import Settings, load_settings

cache_app = typer.Typer(help="The Redis cache of subject states.", no_args_is_help=True)
events_app = typer.Typer(help="The compacted preferences topic.", no_args_is_help=True)

EXIT_UNREACHABLE = 1
EXIT_STILL_CHANGING = 3
EXIT_STOPPED = 130

T = TypeVar("T", bound=Tally)

Tenant = Annotated[str | None, typer.Option(help="Only this tenant's subjects (default: all).")]
Batch = Annotated[
    int, typer.Option(min=1, max=10_000, help="Subjects per page (one round trip per store).")
]


@cache_app.command("rebuild")
def rebuild(
    tenant: Tenant = None,
    batch: Batch = 1000,
    include_unknown: Annotated[
        bool,
        typer.Option(
            "--include-unknown", help="Also version-0 subjects (named only by rejected commands)."
        ),
    ] = False,
) -> None:
    """Refill Redis from PostgreSQL, through the worker's version compare-and-set: a state is
    written only where Redis holds an older one or none, so it is safe while the worker runs.

    Exit status: 0 done, 1 PostgreSQL or Redis did not answer, 130 stopped (Ctrl-C).
    """
    settings = _settings()
    tally = RebuildTally()
    command = "cache rebuild"

    async def walk(display: ProgressDisplay, stop: asyncio.Event) -> None:
        async with AsyncExitStack() as stack:
            use_case = await cache_rebuilder(settings, stack, display)
            await use_case.run(Scope(tenant, include_unknown), batch, tally, stop)

    def counts(t: RebuildTally) -> str:
        return (
            f"{t.written:,} written, {t.newer_cached:,} already as new in Redis,"
            f" {t.removed:,} removed (rows deleted meanwhile)"
        )

    _run(command, settings, walk, tally, counts)


@events_app.command("republish")
def republish(tenant: Tenant = None, batch: Batch = 1000) -> None:
    """Write every subject's current snapshot to the compacted preferences topic, keyed
    `{tenant}:{subject_id}` like the worker's events: the stored event of its version (else
    one built from its state), a tombstone for a forward or an erased subject. Safe while
    the worker runs: each page is re-checked after it is acknowledged, and what changed
    meanwhile is sent again.

    Exit status: 0 done, 1 PostgreSQL or Kafka did not answer, 3 subjects kept changing,
    130 stopped (Ctrl-C).
    """
    settings = _settings(kafka=True)
    tally = RepublishTally()
    command = "events republish"

    async def walk(display: ProgressDisplay, stop: asyncio.Event) -> None:
        async with AsyncExitStack() as stack:
            use_case = await snapshot_republisher(settings, stack, display)
            await use_case.run(Scope(tenant), batch, tally, stop)

    def counts(t: RepublishTally) -> str:
        return (
            f"{t.records:,} records ({t.stored:,} stored events, {t.synthesized:,} built from"
            f" state, {t.tombstones:,} tombstones, {t.resent:,} sent again after a change)"
        )

    try:
        _run(command, settings, walk, tally, counts)
    except StillChanging as exc:
        typer.echo(
            f"optout {command}: {subjects(exc.count)} changed in each of their re-checks;"
            " their last record is not proven current: run it again",
            err=True,
        )
        raise typer.Exit(EXIT_STILL_CHANGING) from None


def _settings(*, kafka: bool = False) -> Settings:
    from service.adapters.kafka.connection import KafkaConnection, KafkaSecurityError

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        if kafka:
            KafkaConnection.from_settings(settings)
    except KafkaSecurityError as exc:
        typer.echo(f"optout: {exc}", err=True)
        raise typer.Exit(2) from None
    # The Kafka client logs its connection errors itself; the one line of `_run` says it all.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return settings


def _run(
    command: str,
    settings: Settings,
    walk: Callable[[ProgressDisplay, asyncio.Event], Awaitable[None]],
    tally: T,
    counts: Callable[[T], str],
) -> None:
    """Run the walk under the progress display and turn its end into one line and a status."""
    with ProgressDisplay(f"optout {command}") as display:
        try:
            stopped = asyncio.run(_stoppable(lambda stop: walk(display, stop)))
        except DependencyUnavailable as exc:
            where = _where(exc.dependency, settings)
            typer.echo(f"optout {command}: {where} did not answer ({exc.cause})", err=True)
            raise typer.Exit(EXIT_UNREACHABLE) from None
        except Refused as exc:
            typer.echo(f"optout {command}: {exc.failure}", err=True)
            raise typer.Exit(EXIT_UNREACHABLE) from None
        except (KeyboardInterrupt, asyncio.CancelledError):
            stopped = None
    elapsed = tally.elapsed_seconds()
    if stopped is False:
        typer.echo(
            f"optout {command}: {subjects(tally.done)} in {duration(elapsed)}"
            f" ({tally.rate():,.0f}/s): {counts(tally)}"
        )
        return
    how = "stopped" if stopped else "aborted mid-page"
    typer.echo(
        f"optout {command}: {how} after {tally.done:,} of {subjects(tally.total)} in"
        f" {duration(elapsed)}: {counts(tally)}; run it again to finish (safe)",
        err=True,
    )
    raise typer.Exit(EXIT_STOPPED)


async def _stoppable(work: Callable[[asyncio.Event], Awaitable[None]]) -> bool:
    """Run ``work`` with a stop event that the first SIGINT or SIGTERM sets (the walk ends
    after its page in progress); a second signal cancels it. True when it was stopped."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.current_task()
    assert task is not None

    def signalled() -> None:
        if stop.is_set():
            task.cancel()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled)
    try:
        await work(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return stop.is_set()


def _where(dependency: str, settings: Settings) -> str:
    if dependency == "postgresql":
        return f"PostgreSQL at {host_port(settings.database_dsn)}"
    if dependency == "redis":
        return f"Redis at {host_port(settings.redis_dsn)}"
    if dependency == "kafka":
        return f"Kafka at {settings.kafka_bootstrap}"
    return dependency
