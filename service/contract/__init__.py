"""Wire contracts: the JSON every producer and consumer of the service agrees on.

Versioned modules (`v1`) translate to and from the domain, so the core never depends on
wire details and a v2 can live beside v1 during a migration.
"""
