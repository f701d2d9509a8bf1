"""The pause between two attempts of a failing batch ends once the failing dependency answers
again, and only on that transition (never a busy loop while the probe answers but the batch
keeps failing)."""

from __future__ import annotations

import pytest

from service.adapters.kafka.recovery import RecoveryPause


class ScriptedProbe:
    """Answers from a script (then the last answer for ever); counts the questions."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    async def __call__(self, dependency: str) -> bool:
        self.asked.append(dependency)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def test_the_pause_ends_when_the_failing_dependency_answers_again() -> None:
    probe = ScriptedProbe(False, False, True)
    pause = RecoveryPause(probe, probe_every_s=0.01, waiting_for="postgresql")
    # A full pause would ask about 1,000 times; it ends at the third question.
    await pause(10.0)
    assert probe.asked == ["postgresql"] * 3
    assert pause.woke_early == 1


async def test_the_failed_attempt_counts_as_having_seen_the_dependency_down() -> None:
    probe = ScriptedProbe(True)
    pause = RecoveryPause(probe, probe_every_s=0.01, waiting_for="kafka")
    await pause(10.0)
    assert probe.asked == ["kafka"]
    assert pause.woke_early == 1


async def test_a_probe_that_answers_while_the_batch_keeps_failing_keeps_the_backoff() -> None:
    probe = ScriptedProbe(True)
    pause = RecoveryPause(probe, probe_every_s=0.01, waiting_for="redis")
    await pause(0.3)  # cut short: the attempt's failure counted as "down"
    asked_first = len(probe.asked)
    await pause(0.3)  # the next attempt failed too: no down-then-up seen, the full pause
    assert asked_first == 1
    assert len(probe.asked) > asked_first + 1  # it kept asking: it was not cut short
    assert pause.woke_early == 1
    # After a full pause the next failure counts as "down" again.
    await pause(0.3)
    assert pause.woke_early == 2


async def test_a_probe_that_fails_counts_as_not_answering() -> None:
    calls: list[str] = []

    async def broken(dependency: str) -> bool:
        calls.append(dependency)
        if len(calls) in (2, 3):
            raise ConnectionRefusedError
        return True

    pause = RecoveryPause(broken, probe_every_s=0.01, waiting_for="postgresql")
    await pause(10.0)  # cut short at once; the next one needs a down-then-up
    await pause(10.0)  # two failing probes (down), then an answer: cut short
    assert len(calls) == 4
    assert pause.woke_early == 2


@pytest.mark.parametrize("waiting_for", [None, "postgresql"])
async def test_without_a_probe_or_a_known_dependency_the_pause_is_the_backoff(
    waiting_for: str | None,
) -> None:
    probe = ScriptedProbe(True)
    answers = probe if waiting_for is None else None
    pause = RecoveryPause(answers, probe_every_s=0.01, waiting_for=waiting_for)
    await pause(0.05)
    assert probe.asked == []
    assert pause.woke_early == 0
