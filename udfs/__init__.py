"""Pure, typed profile logic shared by the stream job, the trainer and the consistency checker:
event decoding and validation (events), the profile record (profile, params), its sketches,
fold and inactivity rules and byte codec (sketches, fold, codec), features, scoring and its
calibration, rows, the engine and its in-memory host, the offline recomputation (consistency),
pseudonyms, event-log sources, and the one error base (errors).

The bottom layer: imports nothing of flink_jobs, models, bench or tests, and never pyflink
(docs/architecture.md; tests/unit/test_architecture.py).

The hot path (`udfs._impl.COMPILED`) may run compiled with mypyc (udfs/native.py); `select()`
decides, before any of those modules is imported, whether this interpreter uses the compiled build
or the Python sources (same results either way).
"""

from udfs._impl import select

select()
