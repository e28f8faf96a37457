"""ProfileStream around the pure `udfs` core: the Flink job, its operations and its command line.

    config.py   the settings tree (environment variables, defaults, validation); imports udfs only
    io/         Kafka producer API and PostgreSQL access and migrations (no Flink)
    ops/        Java and the connector jars, the Flink configuration, the standalone cluster,
                the embedded services (no Flink API: processes, files and REST)
    job/        the Flink job: thin adapters around udfs.engine, the pipeline wiring, the
                `flink run` entry point, running a job locally (the only pyflink importer)
    cli/        the `profilestream` command line (may import everything; nothing imports it)

docs/architecture.md draws the layers; tests/unit/test_architecture.py enforces who may import
whom.
"""
