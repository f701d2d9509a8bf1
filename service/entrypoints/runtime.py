"""How a long-lived process runs: the event loop and the garbage collector's settings.

The worker, the API and the benchmark's passthrough (which stands for what the Kafka client
alone can do here) all start through `run_forever`, so they are compared on one runtime.
"""

from __future__ import annotations

import gc
from collections.abc import Coroutine
from typing import Any

import uvloop

# Container objects allocated (less those freed) between two collections of the youngest
# generation; Python's default is 700.
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Tune the cyclic collector for work that comes in batches.

    With its defaults it ran many times per batch while the batch's rows, states and
    documents were still alive, so they were traversed, survived into the older generations,
    and made the full collections that traverse everything frequent. Freezing what start-up
    created keeps the modules, schemas and settings out of every collection; a larger
    youngest generation lets a batch's objects die before they are looked at. Reference
    counting still frees nearly everything at once; only reference cycles wait for a
    collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def run_forever(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop: the event loop's own work (selecting, scheduling callbacks, socket
    writes) is a visible share of the worker's time on asyncio's."""
    tune_garbage_collector()
    uvloop.run(main)
