"""PostgreSQL failures translated into the pipeline's two kinds (`service.application.errors`).

Unavailable: no connection (refused, reset, closed), timeouts, and the SQLSTATE classes that
say the server cannot serve right now or is not set up for us (08 connection, 28
authorization, 3D/3F missing database or schema, 40 rollback such as deadlocks, 42 missing
objects or privileges, 53 resources, 55 lock not available, 57 operator intervention, 58
system, XX internal): none of them is a property of a record, and rejecting records because
of them would turn an outage into lost commands. Every other server error (22 data
exception, 23 constraint, 54 limit, P0 raised by a trigger, ...) and the driver's refusal to
encode an argument are refusals of the data.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

from service.application.errors import DependencyUnavailable, Refused

DEPENDENCY = "postgresql"

_UNAVAILABLE_CLASSES = frozenset({"08", "28", "3D", "3F", "40", "42", "53", "55", "57", "58", "XX"})


def translate(exc: BaseException) -> Exception | None:
    """The pipeline's exception for `exc`, or None when it is not PostgreSQL's."""
    if isinstance(exc, asyncpg_base.DataError | asyncpg_base.ClientConfigurationError):
        return Refused(f"refused by the PostgreSQL driver ({type(exc).__name__})")
    if isinstance(exc, asyncpg.PostgresError):
        code = str(getattr(exc, "sqlstate", "") or "")
        if code[:2] in _UNAVAILABLE_CLASSES:
            return DependencyUnavailable(DEPENDENCY, f"{type(exc).__name__} (SQLSTATE {code})")
        return Refused(f"refused by PostgreSQL (SQLSTATE {code or 'unknown'})")
    if isinstance(
        exc, asyncpg.InterfaceError | asyncpg_base.InternalClientError | OSError | TimeoutError
    ):
        return DependencyUnavailable(DEPENDENCY, type(exc).__name__)
    return None


@contextmanager
def postgres_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        translated = translate(exc)
        if translated is None:
            raise
        raise translated from exc
