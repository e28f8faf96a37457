"""Training and evaluation tools, through the CLI as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flink_jobs.config import DEFAULT_MODEL_DIR
from tests.support.compare import assert_same_json
from tests.support.shared_data import shared_file
from udfs.features import FEATURE_NAMES
from udfs.scoring import Scorer

CLI = str(Path(sys.executable).parent / "profilestream")
PNG = b"\x89PNG\r\n\x1a\n"
ARTEFACTS = (
    "model.txt",
    "metadata.json",
    "report.md",
    "roc.png",
    "precision_recall.png",
    "calibration.png",
    "feature_importance.png",
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )


def check_model_dir(path: Path, min_periods: int = 2) -> dict[str, Any]:
    for name in ARTEFACTS:
        assert (path / name).is_file(), name
        if name.endswith(".png"):
            assert (path / name).read_bytes()[:8] == PNG
    meta = json.loads((path / "metadata.json").read_text())
    assert set(meta["feature_names"]) <= set(FEATURE_NAMES)
    assert set(meta["feature_names"]) | set(meta["excluded_features"]) == set(FEATURE_NAMES)
    ev = meta["evaluation"]
    assert set(ev["pooled"]) == {
        "lightgbm",
        "lightgbm_uncalibrated",
        "recency",
        "buy_day_rate",
        "logistic_regression",
    }
    for m in ev["pooled"].values():
        lo, hi = m["roc_auc_ci"]
        assert 0 <= lo <= m["roc_auc"] <= hi <= 1
    assert len(ev["per_period"]) >= min_periods and ev["examples"] > 0
    for row in ev["per_period"]:
        assert row["fit_examples"] > 0 and row["examples"] > 0
    assert meta["versions"]["lightgbm"] and meta["calibration"]["kind"]
    Scorer(path).close()  # the job can load it
    return meta


@pytest.mark.slow
def test_train_on_synthetic_writes_a_complete_model_directory(tmp_path: Path) -> None:
    out = tmp_path / "m"
    proc = cli(
        "train",
        "--format",
        "synthetic",
        "--synthetic-events",
        "30000",
        "--synthetic-users",
        "1500",
        "--tz-offset-hours",
        "0",
        "--bootstrap",
        "200",
        "--version",
        "t1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LightGBM (calibrated)" in proc.stdout and "recency heuristic" in proc.stdout
    meta = check_model_dir(out)
    assert meta["version"] == "t1" and meta["data"]["format"] == "synthetic"
    # the synthetic shoppers have a hidden intent the features reveal: the model must find it
    assert meta["evaluation"]["pooled"]["lightgbm"]["roc_auc"] > 0.6
    report = (out / "report.md").read_text()
    assert "## Rolling origin" in report and "logistic regression" in report


def test_train_refuses_a_log_too_short_for_its_labels(tmp_path: Path) -> None:
    proc = cli(
        "train",
        "--format",
        "synthetic",
        "--synthetic-events",
        "300",
        "--synthetic-users",
        "50",
        "--out",
        str(tmp_path / "m"),
    )
    assert proc.returncode == 2
    assert "too little data" in proc.stderr


def test_committed_model_is_complete() -> None:
    meta = check_model_dir(DEFAULT_MODEL_DIR)
    assert meta["data"]["file"] == "taobao_userbehavior_head.csv"
    assert meta["examples"]["mode"] == "cutoff" and meta["examples"]["horizon_hours"] == 24


@pytest.mark.slow
@pytest.mark.data
def test_training_on_the_shared_taobao_sample_reproduces_the_committed_model(
    tmp_path: Path,
) -> None:
    path = shared_file("taobao_userbehavior_head.csv")
    out = tmp_path / "taobao"
    proc = cli(
        "train", "--events", str(path), "--format", "taobao", "--version", "taobao-v2",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ARTEFACTS:
        if name != "metadata.json":
            assert (out / name).read_bytes() == (DEFAULT_MODEL_DIR / name).read_bytes(), name
    # The trees are bit-identical; the statistics in metadata.json (calibration fit, bootstrap
    # metrics) come through BLAS, whose kernels differ in the last bits between CPUs (seen: Intel
    # vs AMD EPYC), so they are compared to 1e-9 and everything else exactly.
    built = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    committed = json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text(encoding="utf-8"))
    assert_same_json(built, committed, "metadata.json")


@pytest.mark.slow
@pytest.mark.data
def test_evaluate_json_gives_every_model_with_intervals() -> None:
    path = shared_file("taobao_userbehavior_head.csv")
    proc = cli(
        "evaluate", "--model", str(DEFAULT_MODEL_DIR), "--events", str(path), "--format",
        "taobao", "--json", "--bootstrap", "200",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert set(out["models"]) == {"lightgbm", "recency", "buy_day_rate", "logistic_regression"}
    for m in out["models"].values():
        lo, hi = m["roc_auc_ci"]
        assert lo <= m["roc_auc"] <= hi
        assert {"pr_auc", "log_loss", "ece"} <= set(m)
    lo, hi = out["lightgbm_minus_best_baseline_roc_auc_ci"]
    assert lo <= hi
    assert out["users"] > 500 and out["examples"] > 1000


@pytest.mark.slow
def test_evaluate_on_a_synthetic_log_prints_the_protocol() -> None:
    proc = cli(
        "evaluate", "--format", "synthetic", "--synthetic-events", "20000",
        "--synthetic-users", "1000", "--tz-offset-hours", "0", "--bootstrap", "100",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rolling-origin periods" in proc.stdout and "held-out users" in proc.stdout


@pytest.mark.slow
@pytest.mark.data
def test_short_horizon_variant_on_rees46(tmp_path: Path) -> None:
    """REES46's sample is dense for 40 minutes: a 30-minute label, a cut-off every 2 minutes."""
    path = shared_file("rees46_2019-Oct_head.csv")
    out = tmp_path / "rees"
    proc = cli(
        "train", "--events", str(path), "--format", "rees46", "--horizon-hours", "0.5",
        "--period-hours", str(2 / 60), "--tz-offset-hours", "0", "--version", "rees46-30min",
        "--bootstrap", "200", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 40 dense minutes leave one test period with a 30-minute label (docs/features.md)
    meta = check_model_dir(out, min_periods=1)
    assert meta["examples"]["horizon_hours"] == 0.5


def test_evaluate_names_a_bad_model_directory(tmp_path: Path) -> None:
    proc = cli("evaluate", "--model", str(tmp_path), "--format", "synthetic")
    assert proc.returncode == 2 and "no model at" in proc.stderr
