"""Talking to the services the job reads and writes: the producer API for Kafka (producer.py:
validated, keyed `UserEvent`s; topics; the broker check) and PostgreSQL (db.py: connections with
actionable errors, numbered SQL migrations, erasure and pseudonym rotation; registry.py: the
model registry, publishing and listing versions, and the poller each job instance runs), and what
both say about the running job for `status` (status.py: consumer lag, recent rows, dead letters).

May import flink_jobs.config and udfs; never flink_jobs.job, .ops, .cli or pyflink: producers and
BI-side tools use it without a JVM.
"""
