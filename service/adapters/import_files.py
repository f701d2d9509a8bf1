"""The files of an import: the CSV read row by row, the checkpoint, the rejects list.

Rows carry the physical line they start on (the header is line 1; a quoted cell may span
lines), which is how every rejection and the checkpoint name a row: never by its values.
Bytes that are not UTF-8 become U+FFFD, so a damaged row is rejected on its own instead of
stopping the file. A byte-order mark (spreadsheet exports) is dropped.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from service.application.import_run import Checkpoint
from service.application.importing import ImportRefused, Rejected

_HEAD_BYTES = 64 * 1024
_CHECKPOINT_VERSION = 1
# A CSV cell may be long (free-text reasons); the csv module's default limit is 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class CsvRows:
    """The header and then (line, cells) for every non-empty row."""

    def __init__(self, path: Path, delimiter: str = ",") -> None:
        self._path = path
        self._delimiter = delimiter
        self._handle: IO[str] | None = None
        self.header: list[str] = []

    def __enter__(self) -> CsvRows:
        try:
            self._handle = self._path.open(encoding="utf-8-sig", errors="replace", newline="")
        except OSError as exc:
            raise ImportRefused(f"cannot read {self._path} ({type(exc).__name__})") from None
        self._reader = csv.reader(self._handle, delimiter=self._delimiter, strict=False)
        try:
            self.header = next(self._reader)
        except StopIteration:
            raise ImportRefused(f"{self._path} is empty: no header row") from None
        except csv.Error as exc:
            raise ImportRefused(f"{self._path}: the header row is not CSV ({exc})") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()

    def __iter__(self) -> Iterator[tuple[int, Sequence[str]]]:
        reader = self._reader
        previous_end = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                # The csv module's messages name the problem, not the cell ("field larger
                # than field limit", "new-line character seen in unquoted field").
                raise ImportRefused(f"line {previous_end + 1}: not CSV ({exc})") from None
            line = previous_end + 1
            previous_end = reader.line_num
            if row and any(cell.strip() for cell in row):
                yield line, row


def count_lines(path: Path) -> int:
    """Physical lines in the file, for the progress bar's total (cheap: bytes, no parsing)."""
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def head_digest(path: Path) -> str:
    """The SHA-256 of the file's first 64 KiB: a checkpoint belongs to the file it was
    written for, and a file that was only appended to keeps its checkpoint."""
    with path.open("rb") as handle:
        return hashlib.sha256(handle.read(_HEAD_BYTES)).hexdigest()


class CheckpointFile:
    """A checkpoint as a small JSON file, replaced atomically (write aside, fsync, rename,
    fsync the directory): after a crash it is the old one or the new one, never half."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Checkpoint | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ImportRefused(f"cannot read {self.path} ({type(exc).__name__})") from None
        try:
            document: dict[str, Any] = json.loads(raw)
            if document.pop("version") != _CHECKPOINT_VERSION:
                raise ValueError("version")
            document["fallback_time"] = datetime.fromisoformat(document["fallback_time"])
            return Checkpoint(**document)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ImportRefused(
                f"{self.path} is not a checkpoint of this version; remove it or pass --restart"
            ) from None

    def save(self, checkpoint: Checkpoint) -> None:
        document = asdict(checkpoint)
        document["fallback_time"] = checkpoint.fallback_time.isoformat()
        document["version"] = _CHECKPOINT_VERSION
        aside = self.path.with_name(f".{self.path.name}.tmp")
        with aside.open("w", encoding="utf-8") as handle:
            json.dump(document, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(aside, self.path)
        with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


class RejectsFile:
    """`line,reason,detail` rows, flushed to disk before the checkpoint moves past them.

    A resumed run appends; a line may then be listed twice (rejected again after a kill that
    came between this write and the checkpoint's), never missing.
    """

    def __init__(self, path: Path | None, *, append: bool) -> None:
        self._handle: IO[str] | None = None
        if path is None:
            return
        fresh = not append or not path.exists() or path.stat().st_size == 0
        self._handle = path.open("w" if not append else "a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._handle)
        if fresh:
            self._writer.writerow(("line", "reason", "detail"))

    def write(self, rejected: Sequence[Rejected]) -> None:
        if self._handle is None or not rejected:
            return
        self._writer.writerows((r.line, r.reason, r.detail) for r in rejected)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
