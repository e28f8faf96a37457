"""Shared test code that is not a test: corpora (the golden corpus, the hostile corpus), the
fingerprints compared across builds, and helpers several test modules use (the CLI runners, the
bounded job run, SQL helpers, the shared data folder, the suite's pseudonym key). Test modules
import from here, never from another test module; fixtures stay in the conftest.py files. No
module here is collected (no test_*.py), and none starts a service when imported."""
