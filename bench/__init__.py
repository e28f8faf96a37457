"""`make bench`: the plumbing floor, the job end to end, the plain-Python ceiling, the ablation
stages, freshness and scale (e2e.py, runner.py, stages.py; docs/performance.md).

May import flink_jobs (but not flink_jobs.cli), udfs and models; never tests.
"""
