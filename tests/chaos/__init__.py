"""The fault-injection suite: a hostile command stream, faults, and an independent oracle.

``python -m tests.chaos.run`` (what ``make chaos`` and ``make fuzz`` call) runs it against
servers of its own; ``tests/integration/test_chaos_short.py`` runs the same machinery small
against the shared stack.
"""
