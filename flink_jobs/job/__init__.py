"""The Flink job: thin adapters that move state, timers and outputs between Flink and the pure
`udfs.engine.ProfileEngine` (functions.py), the pipeline wiring with injectable source and sinks
(pipeline.py), the `flink run` entry point (entry.py), and running a job locally with pre-flight
checks and one-line failures (run.py).

The only package that imports pyflink's API. May import flink_jobs.config, .io, .ops and udfs;
never flink_jobs.cli.
"""
