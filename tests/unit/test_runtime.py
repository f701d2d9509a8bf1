"""The runtime every long-lived process starts with (``entrypoints/runtime.py``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service.entrypoints.runtime import GC_YOUNG_THRESHOLD, tune_garbage_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_start_up_objects_are_frozen_and_the_youngest_generation_is_larger() -> None:
    gc.unfreeze()
    tune_garbage_collector()

    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD > 700


@pytest.mark.usefixtures("restored_collector")
def test_a_batch_worth_of_short_lived_objects_triggers_no_collection() -> None:
    tune_garbage_collector()
    collections = []
    gc.callbacks.append(lambda phase, info: collections.append(phase))
    try:
        for _ in range(200):
            rows = [{"tenant": "t", "subject_id": str(i), "rules": [i]} for i in range(500)]
            del rows
    finally:
        gc.callbacks.pop()

    assert collections == []
