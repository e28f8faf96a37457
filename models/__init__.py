"""The purchase-propensity model offline: training examples replayed through the job's own fold
and features (dataset.py), the evaluation protocol (evaluation.py), training and its report
(train.py, report.py), and the model directories (purchase_propensity/<version>/).

May import udfs only; never flink_jobs or pyflink: the trainer runs without the job.
"""
