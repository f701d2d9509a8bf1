"""The two kinds of failure the command pipeline tells apart, whatever the driver.

Adapters translate their drivers' exceptions into these, so the policy (retry, or isolate the
record that fails) is decided here, on ports, and never by matching a library's classes:

- `DependencyUnavailable`: the dependency itself cannot serve (connection refused or reset,
  timeout, server shutting down). Retried with backoff, offsets held; nothing is wrong with
  the records.
- `Refused`: the dependency answered and refused what it was given (a value PostgreSQL
  cannot store, a record Kafka finds too large). Retrying cannot help; the offending record
  is isolated.

Any other exception is treated like `Refused` if it repeats: an unpredicted failure must not
stall a partition either.
"""

from __future__ import annotations


class DependencyUnavailable(Exception):
    """`dependency` is a readiness check's name (`postgresql`, `redis`, `kafka`); `cause` is
    the driver's exception type name, never its message (driver messages can quote values)."""

    def __init__(self, dependency: str, cause: str) -> None:
        super().__init__(f"{dependency} unavailable ({cause})")
        self.dependency = dependency
        self.cause = cause


class Refused(Exception):
    """`failure` names the refusal without quoting data, e.g. "refused by PostgreSQL
    (SQLSTATE 22P05)": it becomes the detail of a rejected outcome."""

    def __init__(self, failure: str) -> None:
        super().__init__(failure)
        self.failure = failure


def leaf_failures(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order: lanes fail as a group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_failures(inner)]
    return [exc]


def unavailable_in(exc: BaseException) -> DependencyUnavailable | None:
    """The first dependency failure in `exc`, if any: it outranks every other failure, since
    a record cannot be judged while a dependency is down."""
    for leaf in leaf_failures(exc):
        if isinstance(leaf, DependencyUnavailable):
            return leaf
    return None


def failure_name(exc: BaseException) -> str:
    """What a rejected outcome or a DLQ `x-error` says about a failure: its class, never its
    message."""
    leaf = leaf_failures(exc)[0]
    if isinstance(leaf, Refused):
        return leaf.failure
    return f"failed with {type(leaf).__name__}"
