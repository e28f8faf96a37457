"""Pure, typed profile logic shared by the stream job, the trainer and the consistency checker:
event decoding and validation, the profile and its features, scoring, rows. No pyflink import.

The hot path (`udfs._impl.COMPILED`) may run compiled with mypyc (udfs/native.py); `select()`
decides, before any of those modules is imported, whether this interpreter uses the compiled build
or the Python sources (same results either way).
"""

from udfs._impl import select

select()
