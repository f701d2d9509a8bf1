"""Pure domain layer: catalog, rules, decisions and batch application.

Nothing in this package performs I/O, so every behaviour the guarantees depend on
(convergence, idempotency, explainability) can be tested without Kafka, Postgres or Redis.
"""
