"""Unit tests: no JVM, no services. They call the code in this process, or a `python` or
`profilestream` child that uses no Flink, broker or database (training and evaluation, operator
mistakes refused before a job starts; the CLI's preflight may run `java -version`, nothing more),
and use only fixtures from tests/conftest.py. Nothing here may carry the `integration` or `flink`
marker (tests/conftest.py refuses to collect it). `make test-unit` runs this folder alone."""
