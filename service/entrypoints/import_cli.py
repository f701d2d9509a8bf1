"""`optout import FILE`: a suppression list from elsewhere, as commands on the commands topic.

Exit status: 0 when every row was handled (rejected rows included: they are counted and
listed), 1 when Kafka does not answer (one line naming it; the checkpoint stays where Kafka
last acknowledged), 2 for a file or options that cannot be imported, 130 / 143 after Ctrl-C /
SIGTERM (the wave in flight is acknowledged and checkpointed first; run again to resume).

Only line numbers and counts are printed: never an address or any other cell of the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from service.adapters.import_files import RejectsFile
    from service.application.import_run import Checkpoint, Summary
    from service.application.importing import ImportOptions, Rejected
    from service.application.intake import CommandSink
    from service.settings import Settings

_SHOWN_REJECTIONS = 20
_PLAIN_PROGRESS_SECONDS = 5.0
EXIT_DEPENDENCY = 1
EXIT_USAGE = 2
_EXIT_OF_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _say(text: str) -> None:
    typer.echo(f"optout import: {text}", err=True)


def import_file(
    file: Annotated[Path, typer.Argument(help="CSV file to import.", show_default=False)],
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="csv, sendgrid, mailchimp, or auto (told from the header row)."
        ),
    ] = "auto",
    topic: Annotated[
        str | None,
        typer.Option(help="Topic of rows that name none [csv, sendgrid: *; mailchimp: marketing]."),
    ] = None,
    channel: Annotated[
        str | None,
        typer.Option(
            help="Channel of rows that name none [email for addresses, sms for phones, "
            "push for devices, * for other ids]."
        ),
    ] = None,
    tenant: Annotated[str, typer.Option(help="Tenant of every command.")] = "default",
    occurred_at: Annotated[
        str | None,
        typer.Option(
            help="RFC 3339 time of rows without one [the first run's start, kept in the "
            "checkpoint]. Give it to make re-imports without the checkpoint idempotent."
        ),
    ] = None,
    phone_region: Annotated[
        str | None,
        typer.Option(help="Read phone numbers without +country code in this region (e.g. FR)."),
    ] = None,
    time_zone: Annotated[
        str,
        typer.Option(help="Zone of export times written without an offset (IANA name)."),
    ] = "UTC",
    source_app: Annotated[
        str | None, typer.Option(help="source.app of the commands [import:<format>].")
    ] = None,
    delimiter: Annotated[str, typer.Option(help="Cell separator.")] = ",",
    rate: Annotated[
        float | None, typer.Option(min=1, help="At most this many rows per second.")
    ] = None,
    checkpoint_path: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Checkpoint file [FILE.checkpoint.json]."),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option(
            help="Start from the first row again (rows without a time keep the one the "
            "checkpoint recorded, so they are answered duplicate)."
        ),
    ] = False,
    rejects: Annotated[
        Path | None, typer.Option(help="Write every rejected row here as line,reason,detail.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Check every row and report; send nothing, write no checkpoint.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Summary as one JSON object.")] = False,
) -> None:
    """Import a suppression list (generic CSV, SendGrid or Mailchimp export) as commands.

    Every row becomes a contract-v1 command from source channel `import`, keyed by its
    subject, with a command id derived from its content: running the same import again is
    harmless (the worker answers `duplicate`). Progress is checkpointed after each batch Kafka
    acknowledged; after an interruption, the same command resumes where it stopped.
    """
    from service.adapters.kafka.connection import KafkaConnection, KafkaSecurityError
    from service.application.importing import ImportRefused
    from service.logging import configure_logging
    from service.settings import load_settings

    settings = load_settings("optout import")
    configure_logging(settings.log_level, settings.log_format)
    try:
        KafkaConnection.from_settings(settings)
    except KafkaSecurityError as exc:
        _say(str(exc))
        raise typer.Exit(EXIT_USAGE) from None
    try:
        job = _prepare(
            settings,
            file,
            fmt=fmt,
            topic=topic,
            channel=channel,
            tenant=tenant,
            occurred_at=occurred_at,
            phone_region=phone_region,
            time_zone=time_zone,
            source_app=source_app,
            delimiter=delimiter,
            checkpoint_path=checkpoint_path or Path(f"{file}.checkpoint.json"),
            restart=restart or dry_run,
        )
    except ImportRefused as exc:
        _say(str(exc))
        raise typer.Exit(EXIT_USAGE) from None
    if job.finished and not dry_run:
        _say(
            f"{file} was imported already ({job.checkpoint.rows} rows, checkpoint "
            f"{job.checkpoint_path}); pass --restart to send it again"
        )
        return
    outcome = _run(settings, job, rate=rate, rejects=rejects, dry_run=dry_run)
    _report(outcome, as_json=as_json, dry_run=dry_run)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


@dataclass
class _Job:
    file: Path
    header: list[str]
    options: ImportOptions
    format: str
    checkpoint: Checkpoint
    checkpoint_path: Path
    delimiter: str
    finished: bool = False


@dataclass
class _Outcome:
    summary: Summary | None
    exit_code: int
    signal_name: str | None = None


def _prepare(
    settings: Settings,
    file: Path,
    *,
    fmt: str,
    topic: str | None,
    channel: str | None,
    tenant: str,
    occurred_at: str | None,
    phone_region: str | None,
    time_zone: str,
    source_app: str | None,
    delimiter: str,
    checkpoint_path: Path,
    restart: bool,
) -> _Job:
    """Everything checked that can be before Kafka is asked: options, header, checkpoint."""
    import re
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from service.adapters.import_files import CheckpointFile, CsvRows, head_digest
    from service.application.import_run import Checkpoint
    from service.application.importing import (
        FORMATS,
        ImportOptions,
        ImportRefused,
        import_actor,
        sniff,
    )
    from service.contract.storable import parse_instant
    from service.contract.v1 import TENANT_PATTERN

    if fmt != "auto" and fmt not in FORMATS:
        raise ImportRefused(f"--format must be auto or one of {', '.join(FORMATS)}")
    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise ImportRefused("--tenant must be 1-64 characters of a-z, 0-9, _ and -")
    if len(delimiter) != 1:
        raise ImportRefused("--delimiter must be one character")
    if phone_region is not None and not re.fullmatch(r"[A-Z]{2}", phone_region):
        raise ImportRefused("--phone-region must be a two-letter region code, e.g. FR")
    try:
        zone = ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ImportRefused(f"--time-zone {time_zone!r} is not an IANA time zone") from None
    given_time: datetime | None = None
    if occurred_at is not None:
        try:
            given_time = parse_instant(occurred_at)
        except ValueError as exc:
            raise ImportRefused(f"--occurred-at {exc}") from None
    options = ImportOptions(
        tenant=tenant,
        topic=topic,
        channel=channel,
        source_app=source_app,
        phone_region=phone_region,
        time_zone=zone,
        actor=import_actor(file.name),
    )
    with CsvRows(file, delimiter) as rows:
        header = rows.header
    chosen = sniff(header) if fmt == "auto" else fmt
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "format": chosen,
                "delimiter": delimiter,
                "file_head_sha256": head_digest(file),
                "options": options.fingerprint(),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    store = CheckpointFile(checkpoint_path)
    if restart:
        # From the first row again, but rows without a time keep the time this file's
        # checkpoint recorded: the same commands, answered `duplicate`.
        try:
            previous = store.load()
        except ImportRefused:
            previous = None
        same = previous is not None and previous.fingerprint == fingerprint
        kept = previous.fallback_time if previous is not None and same else None
        checkpoint = Checkpoint(fingerprint, given_time or kept or datetime.now(UTC))
        return _Job(file, header, options, chosen, checkpoint, checkpoint_path, delimiter)
    found = store.load()
    if found is not None and found.fingerprint != fingerprint:
        raise ImportRefused(
            f"{checkpoint_path} was written for another file or other options; "
            "run with the same ones, or pass --restart to start over"
        )
    if found is not None and given_time is not None and found.fallback_time != given_time:
        raise ImportRefused(
            f"--occurred-at differs from the time {checkpoint_path} recorded; "
            "pass --restart to start over with the new one"
        )
    checkpoint = found or Checkpoint(fingerprint, given_time or datetime.now(UTC))
    return _Job(
        file=file,
        header=header,
        options=options,
        format=chosen,
        checkpoint=checkpoint,
        checkpoint_path=checkpoint_path,
        delimiter=delimiter,
        finished=found is not None and found.done,
    )


def _run(
    settings: Settings, job: _Job, *, rate: float | None, rejects: Path | None, dry_run: bool
) -> _Outcome:
    from service.adapters.catalog_file import configured_catalog
    from service.adapters.import_files import CheckpointFile, CsvRows, RejectsFile, count_lines
    from service.application.errors import DependencyUnavailable
    from service.application.import_run import ImportRun
    from service.application.importing import ImportRefused, RowMapper
    from service.domain.keyed_hashes import ImportIds

    key = settings.identifier_key.get_secret_value().encode()
    try:
        mapper = RowMapper(
            job.format,  # type: ignore[arg-type]
            job.header,
            job.options,
            configured_catalog(settings.catalog_file),
            fallback_time=job.checkpoint.fallback_time,
            max_future=timedelta(seconds=settings.max_future_seconds),
            # A dry run sends nothing: its ids are never seen, any key will do.
            ids=ImportIds.from_root(key or secrets.token_bytes(32)),
        )
    except (ImportRefused, ValueError) as exc:
        _say(str(exc))
        return _Outcome(None, EXIT_USAGE)
    if not key and not dry_run:
        _say(
            "OPTOUT_IDENTIFIER_KEY is not set: imported rows' command ids are keyed hashes"
            " under it (the service's own key, at least 32 bytes)"
        )
        return _Outcome(None, EXIT_USAGE)
    resuming = job.checkpoint.line > 1
    if resuming:
        _say(f"resuming after line {job.checkpoint.line} ({job.checkpoint_path})")
    log = _RejectLog(RejectsFile(rejects, append=resuming), shown_before=job.checkpoint.rejected)
    progress = _progress_view(count_lines(job.file), job.checkpoint.line)
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    async def main() -> Summary:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: signal.Signals) -> None:
            if stop.is_set():  # a second one: stop now, the last checkpoint stands
                task.cancel()
            received.append(signum)
            stop.set()
            _say("stopping after the batch in flight (again to stop at once)")

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        async with _sink(settings, dry_run) as sink:
            store = _NoCheckpoint() if dry_run else CheckpointFile(job.checkpoint_path)
            run = ImportRun(mapper, sink, store, log, progress, rate=rate, stop=stop)
            with CsvRows(job.file, job.delimiter) as rows:
                return await run.run(rows, job.checkpoint)

    try:
        summary = asyncio.run(main())
    except ImportRefused as exc:
        _say(f"{exc}; checkpoint at line {job.checkpoint.line}")
        return _Outcome(None, EXIT_USAGE)
    except DependencyUnavailable as exc:
        _say(
            f"Kafka at {settings.kafka_bootstrap} did not answer ({exc.cause}); "
            f"checkpoint at line {job.checkpoint.line}, run again to resume"
        )
        return _Outcome(None, EXIT_DEPENDENCY)
    except (asyncio.CancelledError, KeyboardInterrupt):
        _say(f"stopped; checkpoint at line {job.checkpoint.line}, run again to resume")
        return _Outcome(None, _EXIT_OF_SIGNAL.get(received[0], 130) if received else 130)
    except _KafkaUnreachable as exc:
        _say(f"Kafka at {settings.kafka_bootstrap} did not answer ({exc.cause})")
        return _Outcome(None, EXIT_DEPENDENCY)
    finally:
        progress.close()
        log.close()
    if summary.interrupted:
        signum = received[0] if received else signal.SIGINT
        return _Outcome(summary, _EXIT_OF_SIGNAL.get(signum, 130), signum.name)
    return _Outcome(summary, 0)


class _KafkaUnreachable(Exception):
    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class _DiscardingSink:
    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        return None


class _NoCheckpoint:
    def save(self, checkpoint: Checkpoint) -> None:
        return None


@contextlib.asynccontextmanager
async def _sink(settings: Settings, dry_run: bool) -> AsyncIterator[CommandSink]:
    """The intake's own producer settings (`acks=all`, idempotent, zstd), on the bulk lane's
    commands topic (read behind the live one, adapters/kafka/priority.py), created with the
    service's partition count if missing."""
    if dry_run:
        yield _DiscardingSink()
        return
    import logging

    from service.adapters.kafka.connection import KafkaConnection, KafkaUnreachable, explained
    from service.adapters.kafka.intake import KafkaCommandSink
    from service.adapters.kafka.producer import KafkaOutput
    from service.adapters.kafka.topics import ensure_topics
    from service.bootstrap import contract_topics

    # aiokafka logs its connection errors itself; the one line this command prints says it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    kafka = KafkaConnection.from_settings(settings)
    output = KafkaOutput(kafka, client_id="optout-import")
    # The importer's principal may write the bulk commands topic and describe no other.
    bulk = settings.commands_bulk_topic
    (commands,) = [t for t in contract_topics(settings) if t.name == bulk]
    try:
        await ensure_topics(kafka, [commands])
        await output.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await output.stop()
        why = await explained(kafka, exc)
        raise _KafkaUnreachable(
            str(why) if isinstance(why, KafkaUnreachable | PermissionError) else type(exc).__name__
        ) from None
    try:
        yield KafkaCommandSink(output, bulk)
    finally:
        with contextlib.suppress(Exception):
            await output.stop()


class _RejectLog:
    """Rejected lines to the rejects file (all of them) and stderr (the first few)."""

    def __init__(self, file: RejectsFile, *, shown_before: int) -> None:
        self._file = file
        self._shown = shown_before
        self._said_more = shown_before >= _SHOWN_REJECTIONS

    def write(self, rejected: Sequence[Rejected]) -> None:
        self._file.write(rejected)
        for r in rejected:
            if self._shown < _SHOWN_REJECTIONS:
                _say(f"line {r.line} rejected: {r.reason} ({r.detail})")
            elif not self._said_more:
                self._said_more = True
                _say("more rejected lines are counted, not shown (--rejects FILE lists all)")
            self._shown += 1

    def close(self) -> None:
        self._file.close()


class _PlainProgress:
    """A line every few seconds when stderr is not a terminal (CI, logs, pipes)."""

    def __init__(self, total_lines: int, first_line: int) -> None:
        self._total = total_lines
        self._first = first_line
        self._started = self._last = time.monotonic()

    def update(self, checkpoint: Checkpoint) -> None:
        now = time.monotonic()
        if now - self._last < _PLAIN_PROGRESS_SECONDS:
            return
        self._last = now
        speed = (checkpoint.line - self._first) / max(now - self._started, 1e-9)
        left = max(self._total - checkpoint.line, 0) / speed if speed > 0 else float("nan")
        _say(
            f"line {checkpoint.line:,} of {self._total:,}, {speed:,.0f} rows/s, "
            f"about {left:,.0f} s left"
        )

    def close(self) -> None:
        return None


class _RichProgress:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task
        progress.start()

    def update(self, checkpoint: Checkpoint) -> None:
        self._progress.update(self._task, completed=checkpoint.line)

    def close(self) -> None:
        self._progress.stop()


def _progress_view(total_lines: int, first_line: int) -> _RichProgress | _PlainProgress:
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        return _PlainProgress(total_lines, first_line)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.speed
            return Text("" if speed is None else f"{speed:,.0f} rows/s")

    progress = Progress(
        TextColumn("importing lines"),
        BarColumn(),
        MofNCompleteColumn(),
        RowsPerSecond(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("import", total=total_lines, completed=first_line)
    return _RichProgress(progress, task)


def _report(outcome: _Outcome, *, as_json: bool, dry_run: bool) -> None:
    summary = outcome.summary
    if summary is None:
        return
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "rows": summary.rows,
                    "sent": summary.sent,
                    "rejected": summary.rejected,
                    "last_line": summary.last_line,
                    "resumed_after_line": summary.resumed_after_line,
                    "interrupted": summary.interrupted,
                    "dry_run": dry_run,
                    "seconds": round(summary.seconds, 3),
                    "rows_per_second": round(summary.rows_this_run / summary.seconds, 1)
                    if summary.seconds > 0
                    else None,
                }
            )
        )
        return
    what = "checked" if dry_run else "sent"
    speed = summary.rows_this_run / summary.seconds if summary.seconds > 0 else 0.0
    state = (
        f"interrupted by {outcome.signal_name} after line {summary.last_line}; run again to resume"
        if summary.interrupted
        else "done"
    )
    typer.echo(
        f"{summary.rows:,} rows: {summary.sent:,} {what}, {summary.rejected:,} rejected; "
        f"{summary.rows_this_run:,} rows in {summary.seconds:,.1f} s ({speed:,.0f} rows/s); "
        f"{state}"
    )
    sys.stdout.flush()
