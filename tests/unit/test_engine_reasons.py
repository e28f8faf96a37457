"""Every row's `score_reasons` is the JSON of its profile's stored reasons, whether or not the
engine's memo of rendered reasons holds them (udfs.engine; JVM-free)."""

from __future__ import annotations

import orjson

from flink_jobs.config import DEFAULT_MODEL_DIR
from tests.support.golden import corpus, replay
from udfs.consistency import scored_engine
from udfs.features import FEATURE_NAMES
from udfs.host import MemoryHost
from udfs.params import ProfileParams
from udfs.pseudonym import Pseudonymiser
from udfs.rows import PROFILE_COLUMN_NAMES
from udfs.scoring import Scorer

REASONS = PROFILE_COLUMN_NAMES.index("score_reasons")


def _rows(reasons_memo: int) -> list[tuple[str, str, tuple[object, ...]]]:
    scorer = Scorer(DEFAULT_MODEL_DIR)
    try:
        engine = scored_engine(scorer, Pseudonymiser(b"r" * 32), ProfileParams(), None)
        engine.reasons_memo = reasons_memo
        return list(replay(corpus()[:6_000], MemoryHost(engine)))
    finally:
        scorer.close()


def test_rows_carry_the_same_reasons_with_and_without_the_memo() -> None:
    plain = _rows(reasons_memo=0)
    rendered = [row[REASONS] for _, kind, row in plain if kind == "row"]
    assert len(rendered) > 1_000 and all(isinstance(r, bytes) for r in rendered)
    for reasons in set(rendered):  # what BI reads: three named contributions
        parsed = orjson.loads(reasons)
        assert 1 <= len(parsed) <= 3
        assert all(r["feature"] in FEATURE_NAMES for r in parsed)
    assert len(set(rendered)) > 20  # enough distinct reasons to overflow the small memo below
    assert _rows(reasons_memo=5) == plain  # filled and cleared many times
    assert _rows(reasons_memo=4_096) == plain
