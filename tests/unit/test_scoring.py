"""The model directory, its feature contract, and exact fast scoring (JVM-free)."""

from __future__ import annotations

import gc
import json
import math
import shutil
import weakref
from pathlib import Path

import lightgbm as lgb
import numpy as np
import orjson
import pytest

from flink_jobs.config import DEFAULT_MODEL_DIR
from udfs.engine import ProfileEngine
from udfs.errors import ModelError
from udfs.events import decode_event
from udfs.features import FEATURE_NAMES
from udfs.host import MemoryHost
from udfs.params import ProfileParams
from udfs.rows import reasons_json
from udfs.scoring import Scorer, read_metadata
from udfs.sources import SyntheticSpec, synthetic_events


def test_committed_model_metadata_names_a_subset_of_the_code_features() -> None:
    info = read_metadata(DEFAULT_MODEL_DIR)
    assert set(info.feature_names) < set(FEATURE_NAMES)
    assert info.version == "taobao-v2"
    assert info.metadata["data"]["file"] == "taobao_userbehavior_head.csv"
    assert info.calibration.kind in ("platt", "isotonic")
    booster = lgb.Booster(model_file=str(DEFAULT_MODEL_DIR / "model.txt"))
    assert tuple(booster.feature_name()) == info.feature_names
    # every profile feature is either a model input or excluded with a reason
    excluded = info.metadata["excluded_features"]
    assert set(FEATURE_NAMES) == set(info.feature_names) | set(excluded)
    assert all(isinstance(r, str) and r for r in excluded.values())


def _random_vectors(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.lognormal(mean=1.0, sigma=1.5, size=(n, len(FEATURE_NAMES)))
    x[::7, 4] = 0.0  # exact zeros
    x[::5, 10] = np.nan  # missing values
    x[1::11, :] = rng.random((len(x[1::11]), len(FEATURE_NAMES)))
    return x


def test_fast_scoring_equals_lightgbm_predict_then_the_calibration() -> None:
    scorer = Scorer(DEFAULT_MODEL_DIR)
    booster = lgb.Booster(model_file=str(DEFAULT_MODEL_DIR / "model.txt"))
    x = _random_vectors(5000)
    cols = [FEATURE_NAMES.index(n) for n in scorer.names]
    expected_raw = booster.predict(x[:, cols])
    raw = np.array([scorer.raw_score(list(row)) for row in x])
    assert np.array_equal(raw, expected_raw)  # bit-identical
    got = np.array([scorer.score(list(row)) for row in x])
    assert np.array_equal(got, [scorer.calibration.apply(float(r)) for r in expected_raw])
    assert len(set(np.round(got, 6))) > 20  # a real model, not a constant
    scorer.close()


def test_reasons_are_lightgbm_shap_values_that_add_up_to_the_raw_log_odds() -> None:
    scorer = Scorer(DEFAULT_MODEL_DIR)
    booster = lgb.Booster(model_file=str(DEFAULT_MODEL_DIR / "model.txt"))
    x = _random_vectors(300)
    cols = [FEATURE_NAMES.index(n) for n in scorer.names]
    shap = booster.predict(x[:, cols], pred_contrib=True)
    for row, expected in zip(x, shap, strict=True):
        contributions = scorer.contributions(list(row))
        assert np.allclose(contributions, expected, rtol=0, atol=1e-12)
        raw = scorer.raw_score(list(row))
        assert math.isclose(sum(contributions), math.log(raw / (1 - raw)), abs_tol=1e-9)
        reasons = orjson.loads(reasons_json(scorer.explain(list(row))))
        assert len(reasons) == 3
        top = sorted(range(len(cols)), key=lambda i: -abs(expected[i]))[:3]
        assert [r["feature"] for r in reasons] == [scorer.names[i] for i in top]
        # stored and shown in millionths of log-odds
        assert [r["contribution"] for r in reasons] == [
            round(contributions[i] * 1e6) / 1e6 for i in top
        ]
    scorer.close()


def _reasons_computed(scorer: Scorer, features: list[float]) -> list[int]:
    """The reasons straight from LightGBM's contributions, no memo."""
    values = scorer.contributions(features)
    top = sorted(range(len(scorer.names)), key=lambda i: -abs(values[i]))[:3]
    return [x for i in top for x in (FEATURE_NAMES.index(scorer.names[i]), round(values[i] * 1e6))]


def test_memoised_reasons_are_the_computed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """A repeated model input gets its memoised reasons: the same as computing them again, as a
    new list each time (the profile keeps and may replace it); inputs that differ in any bit
    (-0.0 and 0.0, NaN) are told apart; the memo stays within its bound."""
    monkeypatch.setattr("udfs.scoring.EXPLAIN_MEMO", 64)
    scorer = Scorer(DEFAULT_MODEL_DIR)
    distinct = [list(map(float, row)) for row in _random_vectors(100)]
    column = next(FEATURE_NAMES.index(n) for n in scorer.names if FEATURE_NAMES.index(n) > 10)
    signed = list(distinct[50])
    signed[column] = -0.0
    zero = list(signed)
    zero[column] = 0.0
    # 100 misses (the memo then holds distinct[36:]), 10 hits, 10 misses (evicting distinct[36:46]),
    # 6 misses (those), then -0.0 and 0.0 told apart (2 misses) and -0.0 again (a hit)
    stream = distinct + distinct[90:] + distinct[:10] + distinct[40:46] + [signed, zero, signed]
    for features in stream:
        got = scorer.explain(features)
        assert got == _reasons_computed(scorer, features)
        got.append(-1)  # the caller's list: the memo is not changed through it
    assert scorer.explain_calls == len(stream)
    assert scorer.explain_memo_hits == 10 + 1
    assert len(scorer.explain.explained) == 64
    scorer.close()


def test_a_dropped_scorer_is_freed_at_once() -> None:
    """A model switch drops the old Scorer: with the compiled trees and TreeSHAP nothing it
    holds refers back to it, so reference counting frees it (and its model) at once, without
    waiting for a full collection (which the job's collector thresholds make rare)."""
    scorer = Scorer(DEFAULT_MODEL_DIR)
    if not scorer.explainer.startswith("trees"):
        pytest.skip("LightGBM's path: its bound methods refer back to the Scorer")
    scorer.explain([0.0] * len(FEATURE_NAMES))
    scorer.close()
    gone = weakref.ref(scorer)
    gc.disable()
    try:
        del scorer
        assert gone() is None
    finally:
        gc.enable()


def test_first_events_share_their_explanations() -> None:
    """Why the memo pays: the first event of a new profile gives one of a few model inputs."""
    now_ms = 1_900_000_000_000
    scorer = Scorer(DEFAULT_MODEL_DIR)
    engine = ProfileEngine(ProfileParams(), scorer.score, "t", str, explain=scorer.explain)
    host = MemoryHost(engine)
    for message in synthetic_events(SyntheticSpec(events=4_000, users=2_000, seed=3)):
        host.on_event(decode_event(message.SerializeToString(), now_ms), "t", now_ms)
    assert scorer.explain_calls > 2_000  # every first row is explained
    assert scorer.explain_memo_hits > scorer.explain_calls / 2
    scorer.close()


def _copy_model(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, target)
    return target


def test_missing_model_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="--model-dir / PROFILESTREAM_MODEL_DIR"):
        Scorer(tmp_path / "nope")


def test_a_model_feature_the_code_does_not_compute_is_refused(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    meta = json.loads((model / "metadata.json").read_text())
    meta["feature_names"][0] = "cnt_unicorns_1h"
    (model / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"uses features \['cnt_unicorns_1h'\].*retrain"):
        Scorer(model)


def test_a_bad_calibration_is_refused_with_its_field(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    meta = json.loads((model / "metadata.json").read_text())
    meta["calibration"] = {"kind": "isotonic", "x": [0.1, 0.2], "y": [0.5]}
    (model / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="not valid model metadata"):
        Scorer(model)


def test_metadata_order_must_match_the_booster(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    meta = json.loads((model / "metadata.json").read_text())
    meta["feature_names"] = list(reversed(meta["feature_names"]))
    (model / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="inconsistent"):
        Scorer(model)


def test_metadata_and_booster_must_agree(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    first = read_metadata(model).feature_names[0]
    text = (model / "model.txt").read_text().replace(f"feature_names={first}", "feature_names=xx")
    (model / "model.txt").write_text(text)
    with pytest.raises(ModelError, match="inconsistent"):
        Scorer(model)


def test_unreadable_metadata(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    (model / "metadata.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid model metadata"):
        Scorer(model)
