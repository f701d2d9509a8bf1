"""START undoes STOP: how a `restore` of all SMS sits beside the rules, and nothing more.

A *keyword stop* is an opt-out of every topic on `sms` (topic `*`, channel `sms`) made
through the `sms` source channel: what a STOP reply, or any variant of it, records. A
`restore` (a START reply) undoes the keyword stops made before it, so the subject's SMS
rules are what they were before those stops: a per-topic opt-out stays, a topic whose
default is deny stays denied, and an all-SMS opt-out made elsewhere (on the web, by the
API) stays, even though the stop's own rule replaced it in the (`*`, `sms`) cell.

Three last-writer-wins registers keep that, each stored as one ordinary rule, so every
store (PostgreSQL rows, the Redis codec, the events' `preferences`) carries them as is and
merges them as it merges any rule, and the result never depends on the order in which
commands arrive:

- (`*`, `sms`): every statement about all SMS, keyword stops included, exactly as before
  restores existed. A reader that does not know restores reads this cell and stays on the
  safe side (a STOP it sees is never undone for it).
- (`#kept`, `sms`): the same statements except keyword stops (what a restore returns to).
- (`#restore`, `sms`): the latest restore.

The cell (`*`, `sms`) is decided by its own rule unless that rule is a keyword stop and the
latest restore is later than it; then the kept statement decides it, or nothing does. On a
tie the stop stands (an opt-out wins ties). `#` can never start a catalog name, so neither
register is ever asked about as a topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from service.domain.model import WILDCARD, Rule

KEYWORD_CHANNEL = "sms"
KEPT = "#kept"
RESTORED = "#restore"
REGISTERS = frozenset({KEPT, RESTORED})


def is_keyword_stop(rule: Rule) -> bool:
    """An opt-out of every topic on `sms`, made by text message."""
    return (
        rule.action == "opt_out"
        and rule.source_channel == KEYWORD_CHANNEL
        and rule.channel == KEYWORD_CHANNEL
        and rule.topic == WILDCARD
    )


def cells_of(rule: Rule) -> tuple[Rule, ...]:
    """The stored rules one statement writes (each kept by last-writer-wins)."""
    if rule.channel != KEYWORD_CHANNEL or rule.topic != WILDCARD:
        return (rule,)
    if rule.action == "restore":
        return (replace(rule, topic=RESTORED),)
    if rule.action == "opt_out" and rule.source_channel == KEYWORD_CHANNEL:
        return (rule,)
    return (rule, replace(rule, topic=KEPT))


def statement_of(cell: Rule) -> Rule:
    """The statement a stored rule records, as the person made it (topic `*` for both
    registers)."""
    return replace(cell, topic=WILDCARD) if cell.topic in REGISTERS else cell


def statements_of(cells: Sequence[Rule]) -> Sequence[Rule]:
    """The statements behind stored rules, each once: what history rows and an event's
    `changes` name (a kept copy of a statement written beside it is bookkeeping)."""
    for cell in cells:
        if cell.topic in REGISTERS:
            break
    else:
        return cells  # the common case: no register among them
    seen: set[tuple[str, str, str, str]] = set()
    found: list[Rule] = []
    for cell in cells:
        stated = statement_of(cell)
        mark = (stated.command_id, stated.action, stated.topic, stated.channel)
        if mark not in seen:
            seen.add(mark)
            found.append(stated)
    return found


def unless_restored(rules: Mapping[tuple[str, str], Rule], stop: Rule) -> Rule | None:
    """What decides the (`*`, `sms`) cell whose own rule is the keyword stop `stop`."""
    restore = rules.get((RESTORED, KEYWORD_CHANNEL))
    if restore is None or restore.occurred_at <= stop.occurred_at:
        return stop
    kept = rules.get((KEPT, KEYWORD_CHANNEL))
    return None if kept is None else replace(kept, topic=WILDCARD)
