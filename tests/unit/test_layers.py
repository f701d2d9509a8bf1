"""What a sender process loads when it imports the SDK: not the worker, not faststream."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_sdk_loads_neither_faststream_nor_the_worker_wiring() -> None:
    probe = (
        "import sys, service.client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'faststream' "
        "or m in ('service.bootstrap', 'service.adapters.kafka.consumer')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
