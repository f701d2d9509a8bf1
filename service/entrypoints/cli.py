"""The ``optout`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import typer
from redis.exceptions import RedisError

from service.bootstrap import host_port, run_migrations
from service.entrypoints.dlq_cli import dlq_app
from service.entrypoints.history_cli import history
from service.entrypoints.import_cli import import_file
from service.entrypoints.links_cli import links_app
from service.entrypoints.rebuild_commands import cache_app, events_app
from service.entrypoints.runtime import run_forever
from service.logging import configure_logging
from service.settings import Settings, load_settings

app = typer.Typer(
    help="Opt-out and preference service: Kafka commands in, PostgreSQL + Redis state, "
    "preference-changed events out. Settings come from OPTOUT_* environment variables.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("import")(import_file)
app.add_typer(cache_app, name="cache")
app.add_typer(events_app, name="events")
app.add_typer(links_app, name="links")
app.add_typer(dlq_app, name="dlq")


def _settings(*, kafka: bool = False) -> Settings:
    """The settings; for a command that talks to Kafka (`kafka`), its security settings are
    checked first (one line and exit 2 when they do not fit together)."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    _check_link_keys(settings)
    if kafka:
        _refuse_inconsistent_kafka_security(settings)
    return settings


def _check_link_keys(settings: Settings) -> None:
    """Unusable link keys stop any command at its start, with one line naming the entry
    (never the secret), exit 2."""
    from service.bootstrap import link_signer

    try:
        signer = link_signer(settings)
    except ValueError as exc:
        typer.echo(f"optout: {exc}", err=True)
        raise typer.Exit(2) from None
    if signer is not None and signer.signing_key_retired(int(time.time())):
        typer.echo(
            f"optout: OPTOUT_LINK_SIGNING_KEY_ID {signer.signing_key_id!r} is past its"
            " not-after date: name a current key to sign with",
            err=True,
        )
        raise typer.Exit(2)


def _refuse_inconsistent_kafka_security(settings: Settings) -> None:
    """One line and exit 2 when the Kafka security settings do not fit together."""
    from service.adapters.kafka.connection import KafkaConnection, KafkaSecurityError

    try:
        KafkaConnection.from_settings(settings)
    except KafkaSecurityError as exc:
        typer.echo(f"optout: {exc}", err=True)
        raise typer.Exit(2) from None


_UNREACHABLE = (OSError, TimeoutError, ConnectionError)


def _unreachable(command: str, exc: BaseException, settings: Settings) -> typer.Exit:
    """One line naming the dependency that did not answer (never a traceback), exit 1."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    if any("asyncpg" in f for f in frames) or type(exc).__module__.startswith("asyncpg"):
        where = f"PostgreSQL at {host_port(settings.database_dsn)}"
    elif any("redis" in f for f in frames) or type(exc).__module__.startswith("redis"):
        where = f"Redis at {host_port(settings.redis_dsn)}"
    else:
        where = "a dependency"
    typer.echo(f"optout {command}: {where} did not answer ({_why(exc)})", err=True)
    return typer.Exit(1)


@app.command()
def migrate() -> None:
    """Apply the PostgreSQL migrations that are not applied yet (safe to repeat)."""
    settings = _settings()
    try:
        applied = asyncio.run(run_migrations(settings))
    except (*_UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # Never the driver's message: it can quote the DSN's user.
        raise _unreachable("migrate", exc, settings) from None
    typer.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


def _why(exc: BaseException) -> str:
    """The exception's type, and for a refused certificate OpenSSL's reason (it names no
    data: "unable to get local issuer certificate", "Hostname mismatch…")."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{type(exc).__name__}: {exc.verify_message}"
    return type(exc).__name__


@app.command()
def schemas(
    directory: Annotated[Path, typer.Argument(help="Where to write the files.")] = Path("schemas"),
) -> None:
    """Write the JSON Schemas of contract v1 and the AsyncAPI document."""
    from service.contract.jsonschema import write_schemas
    from service.entrypoints.asyncapi import write_asyncapi

    directory.mkdir(parents=True, exist_ok=True)
    for path in [*write_schemas(directory), write_asyncapi(directory)]:
        typer.echo(f"wrote {path}")


@app.command()
def worker(
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes in one consumer group (one per core); "
            "process i serves health and metrics on OPTOUT_ADMIN_PORT + i.",
        ),
    ] = 1,
) -> None:
    """Consume commands and apply them; serves only the admin port (/healthz, /readyz,
    /metrics): a worker has no public route."""
    settings = _settings(kafka=True)
    if processes > 1:
        from service.entrypoints.worker_processes import run_processes

        raise typer.Exit(run_processes(processes, settings.admin_port))
    from service.entrypoints.server import serve

    run_forever(serve(settings, with_worker=True, public=False))


@app.command()
def api() -> None:
    """HTTP API only (decisions on the public port, health and metrics on the admin port);
    scale it apart from the worker."""
    from service.entrypoints.server import serve

    run_forever(serve(_settings(kafka=True), with_worker=False))


@app.command()
def run(
    pid_file: Annotated[
        Path | None, typer.Option(help="Write the process id here while running.")
    ] = None,
) -> None:
    """Worker and HTTP API in one process (what `make run` starts)."""
    from service.entrypoints.server import serve

    settings = _settings(kafka=True)
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")
    base = f"http://{settings.http_host}:{settings.http_port}"
    admin = f"http://{settings.admin_host}:{settings.admin_port}"
    typer.echo(f"optout: admin {admin}/healthz  {admin}/readyz  {admin}/metrics")
    typer.echo(f"optout: API {base}/v1/subjects/{{subject_id}}/check  OpenAPI {admin}/openapi.json")
    typer.echo("optout: Ctrl-C stops the service")
    try:
        run_forever(serve(settings, with_worker=True, channels_by_default=True))
    finally:
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)


@app.command()
def check(
    subject: Annotated[str, typer.Argument(help="Subject id.")],
    topic: Annotated[str, typer.Argument(help="Catalog topic, e.g. marketing.newsletter.")],
    channel: Annotated[str, typer.Argument(help="Catalog channel, or * for a data use.")],
    tenant: Annotated[str, typer.Option(help="Tenant of the subject.")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
) -> None:
    """May TOPIC be sent to SUBJECT on CHANNEL? Prints the decision and its reason."""
    from service.client import (
        ForwardChainTooLong,
        IdentifierKeyMissing,
        InvalidChannel,
        InvalidIdentifier,
        OptoutClient,
        UnknownChannel,
        UnknownTopic,
    )
    from service.client.sdk import normalized
    from service.entrypoints.http.models import DecisionOut

    async def ask() -> DecisionOut:
        async with await OptoutClient.connect(_settings(), local_cache=False) as client:
            decision = await client.is_allowed(subject, topic, channel, tenant)
        return DecisionOut.of(normalized(subject), tenant, decision)

    try:
        answer = asyncio.run(ask())
    except (
        *_UNREACHABLE,
        RedisError,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
    ) as exc:
        raise _unreachable("check", exc, Settings()) from None
    except (UnknownTopic, UnknownChannel, InvalidChannel, InvalidIdentifier) as exc:
        raise typer.BadParameter(str(exc)) from None
    except (IdentifierKeyMissing, ForwardChainTooLong) as exc:
        typer.echo(f"optout check: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(answer.model_dump_json())
    else:
        typer.echo(f"{subject} {topic} {channel}: {answer.reason.explanation}")


@app.command()
def link(
    subject: Annotated[str, typer.Argument(help="Subject id the link unsubscribes.")],
    topic: Annotated[str, typer.Option(help="Catalog topic, or * for everything.")] = "*",
    channel: Annotated[
        str, typer.Option(help="Catalog channel, or * for every channel.")
    ] = "email",
    tenant: Annotated[str, typer.Option(help="Tenant of the subject.")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
) -> None:
    """Print a signed one-click unsubscribe URL and the two mail headers that carry it.

    Made locally with OPTOUT_LINK_KEYS and OPTOUT_PUBLIC_BASE_URL; no service is asked.
    """
    from service.adapters.catalog_file import configured_catalog
    from service.client.sdk import make_unsubscribe_link

    settings = _settings()
    try:
        made = make_unsubscribe_link(
            settings, configured_catalog(settings.catalog_file), subject, topic, channel, tenant
        )
    except ValueError as exc:
        typer.echo(f"optout link: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "url": made.url,
                    "list_unsubscribe": made.list_unsubscribe,
                    "list_unsubscribe_post": made.list_unsubscribe_post,
                }
            )
        )
        return
    typer.echo(made.url)
    typer.echo(f"List-Unsubscribe: {made.list_unsubscribe}")
    typer.echo(f"List-Unsubscribe-Post: {made.list_unsubscribe_post}")


@app.command()
def lag(
    group: Annotated[
        str | None, typer.Option(help="Consumer group (default OPTOUT_CONSUMER_GROUP).")
    ] = None,
    topic: Annotated[
        str | None,
        typer.Option(
            help="Topic (default: OPTOUT_TOPIC_COMMANDS and OPTOUT_TOPIC_COMMANDS_BULK, the"
            " live and the bulk lane; the bulk one is left out while it does not exist)."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document, for machines.")
    ] = False,
    watch: Annotated[
        float | None,
        typer.Option(help="Refresh in place every this many seconds, until Ctrl-C."),
    ] = None,
    max_lag: Annotated[
        int | None, typer.Option(help="Exit 2 when any partition lags more records.")
    ] = None,
    max_lag_seconds: Annotated[
        float | None, typer.Option(help="Exit 2 when any partition's oldest record is older.")
    ] = None,
    senders: Annotated[
        bool,
        typer.Option(
            "--senders",
            help="Per sender instead: position, records behind, age of its last report,"
            " recent p50/p99 effect time (effect receipts; reads Kafka and Redis).",
        ),
    ] = False,
) -> None:
    """Per partition: committed offset, end offset, lag in records and in seconds.

    Reads Kafka only (no worker needed). With --max-lag / --max-lag-seconds it is a probe:
    exit status 2 when over, 0 otherwise; 1 when Kafka cannot be asked.
    """
    from service.adapters.kafka.connection import KafkaConnection, connection_problem
    from service.adapters.kafka.lag import group_lag
    from service.entrypoints.lag_report import over_limits, render_table

    settings = _settings(kafka=True)
    kafka = KafkaConnection.from_settings(settings)
    # The client library logs its connection errors itself; the one line below says it all.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if senders:
        _sender_lag(settings, as_json=as_json)
        return
    group_name = group or settings.consumer_group
    topic_names = [topic] if topic else [settings.topic_commands, settings.commands_bulk_topic]

    async def lanes() -> list[Any]:
        rows: list[Any] = []
        for name in topic_names:
            try:
                rows += await group_lag(kafka, group_name, name)
            except LookupError:
                if name != settings.commands_bulk_topic or topic:
                    raise
        return rows

    def measure() -> list[Any]:
        try:
            return asyncio.run(lanes())
        except Exception as exc:  # one line naming the dependency, never a traceback
            why = f"{type(exc).__name__}{': ' + str(exc) if isinstance(exc, LookupError) else ''}"
            if not isinstance(exc, LookupError):
                why = asyncio.run(connection_problem(kafka)) or why
            typer.echo(
                f"optout lag: Kafka at {settings.kafka_bootstrap} could not be asked ({why})",
                err=True,
            )
            raise typer.Exit(1) from None

    def show(rows: list[Any]) -> str:
        if not as_json:
            return render_table(group_name, rows)
        return json.dumps(
            {
                "group": group_name,
                "topics": topic_names,
                "partitions": [r.as_dict() for r in rows],
                "total_lag_records": sum(r.lag_records for r in rows),
                "max_lag_seconds": max((r.lag_seconds for r in rows), default=0.0),
            }
        )

    if watch is not None:
        # Ctrl-C ends the watch after the refresh in progress. asyncio.run turns a SIGINT
        # into a cancellation of its task, and a client library that swallows it let the
        # watch go on for ever; with a handler of our own, asyncio.run leaves SIGINT alone.
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
        try:
            while not stop.is_set():
                # color=True: click drops escape sequences when stdout is not a terminal.
                typer.echo("\x1b[H\x1b[2J" + show(measure()), color=True)
                stop.wait(watch)
        finally:
            signal.signal(signal.SIGINT, previous)
        raise typer.Exit(0)
    rows = measure()
    typer.echo(show(rows))
    if over_limits(rows, max_lag, max_lag_seconds):
        raise typer.Exit(2)


def _sender_lag(settings: Settings, *, as_json: bool) -> None:
    from service.entrypoints.sender_lag import as_dict, render_senders, sender_summaries

    try:
        rows = asyncio.run(sender_summaries(settings))
    except Exception as exc:  # one line naming the failure, never a traceback
        typer.echo(f"optout lag --senders: could not be measured ({type(exc).__name__})", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"senders": [as_dict(r) for r in rows]}))
    else:
        typer.echo(render_senders(rows))


app.command(name="history")(history)

if __name__ == "__main__":
    app()
