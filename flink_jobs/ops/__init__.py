"""What the job needs from the machine and how it is operated: Java and the connector jars
(runtime.py), the Flink configuration for local runs, `flink run` and cluster start
(flink_config.py), a Flink standalone cluster from the wheel's distribution (cluster.py), the
job's figures from any JobManager's REST API for `status` (monitor.py), and the embedded
PostgreSQL and Kafka-protocol broker (services.py).

May import flink_jobs.config and udfs; never flink_jobs.job, .io or .cli, and no pyflink API (it
starts and configures Flink processes; `import pyflink` only locates the distribution).
"""
