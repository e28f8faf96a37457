"""The model directory, its feature contract, and exact fast scoring (JVM-free)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from flink_jobs.config import DEFAULT_MODEL_DIR
from udfs.features import FEATURE_NAMES
from udfs.scoring import ModelError, Scorer, read_metadata


def test_committed_model_metadata_names_the_code_features() -> None:
    info = read_metadata(DEFAULT_MODEL_DIR)
    assert info.feature_names == FEATURE_NAMES
    assert info.version == "taobao-v1"
    assert info.metadata["data"]["file"] == "taobao_userbehavior_head.csv"
    booster = lgb.Booster(model_file=str(DEFAULT_MODEL_DIR / "model.txt"))
    assert tuple(booster.feature_name()) == FEATURE_NAMES


def test_fast_scoring_equals_lightgbm_predict() -> None:
    scorer = Scorer(DEFAULT_MODEL_DIR)
    booster = lgb.Booster(model_file=str(DEFAULT_MODEL_DIR / "model.txt"))
    rng = np.random.default_rng(0)
    x = rng.lognormal(mean=1.0, sigma=1.5, size=(5000, len(FEATURE_NAMES)))
    x[::7, 4] = 0.0  # exact zeros
    x[::5, 10] = np.nan  # missing values
    x[1::11, :] = rng.random((len(x[1::11]), len(FEATURE_NAMES)))
    expected = booster.predict(x)
    got = np.array([scorer.score(list(row)) for row in x])
    assert np.max(np.abs(got - expected)) <= 1e-9
    assert len(set(np.round(got, 6))) > 100  # a real model, not a constant
    scorer.close()


def _copy_model(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, target)
    return target


def test_missing_model_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="--model-dir / PROFILESTREAM_MODEL_DIR"):
        Scorer(tmp_path / "nope")


def test_feature_contract_mismatch_is_refused(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    meta = json.loads((model / "metadata.json").read_text())
    meta["feature_names"] = list(reversed(meta["feature_names"]))
    (model / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="was trained on features"):
        Scorer(model)


def test_metadata_and_booster_must_agree(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    text = (
        (model / "model.txt")
        .read_text()
        .replace("feature_names=cnt_view_1h", "feature_names=cnt_vue_1h")
    )
    (model / "model.txt").write_text(text)
    with pytest.raises(ModelError, match="inconsistent"):
        Scorer(model)


def test_unreadable_metadata(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    (model / "metadata.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid model metadata"):
        Scorer(model)
