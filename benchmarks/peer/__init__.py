"""The peer a team would deploy instead of the service, run on the same machine.

Kafka Connect standalone with two Debezium connectors: the JDBC sink upserting the command
stream into PostgreSQL (the write path's peer) and the PostgreSQL source turning committed
rows into Kafka events (change data capture, the usual alternative to an outbox). This
folder holds the Maven pom and settings that fetch their jars, and the Python that drives
them; ``benchmarks.peer_debezium`` is the entry point.
"""
