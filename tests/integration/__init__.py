"""Integration tests: they need real services (the embedded PostgreSQL and the local
Kafka-protocol broker, from tests/integration/conftest.py) and/or start Flink (a MiniCluster job,
`profilestream demo`/`run`, a standalone cluster). Every test here carries the `integration`
marker, the `flink` marker, or both (tests/conftest.py refuses to collect one that carries
neither), so `-m "not flink"` and the like keep working across the whole suite."""
