"""Kafka adapter: topics, the broker wiring and the publishers of contract v1."""
