"""Training and evaluation tools, through the CLI as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flink_jobs.config import DEFAULT_MODEL_DIR
from tests.conftest import shared_file
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


def check_model_dir(path: Path) -> dict[str, object]:
    for name in ARTEFACTS:
        assert (path / name).is_file(), name
        if name.endswith(".png"):
            assert (path / name).read_bytes()[:8] == PNG
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["feature_names"] == list(FEATURE_NAMES)
    assert set(meta["metrics_test"]) == {"lightgbm", "rf_heuristic", "logistic_regression"}
    for metrics in meta["metrics_test"].values():
        assert 0 <= metrics["roc_auc"] <= 1 and metrics["examples"] > 0
    assert meta["versions"]["lightgbm"] and meta["split"]["test"]["examples"] > 0
    Scorer(path).close()  # the job can load it
    return meta


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
        "--version",
        "t1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lightgbm" in proc.stdout and "rf_heuristic" in proc.stdout
    meta = check_model_dir(out)
    assert meta["version"] == "t1" and meta["data"]["format"] == "synthetic"
    report = (out / "report.md").read_text()
    assert "| LightGBM |" in report and "logistic regression" in report


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


@pytest.mark.data
def test_training_on_the_shared_taobao_sample_reproduces_the_committed_model(
    tmp_path: Path,
) -> None:
    path = shared_file("taobao_userbehavior_head.csv")
    out = tmp_path / "taobao"
    proc = cli(
        "train",
        "--events",
        str(path),
        "--format",
        "taobao",
        "--version",
        "taobao-v1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fresh = json.loads((out / "metadata.json").read_text())
    committed = json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text())
    assert fresh["metrics_test"] == committed["metrics_test"]
    assert (out / "model.txt").read_text() == (DEFAULT_MODEL_DIR / "model.txt").read_text()


@pytest.mark.data
def test_evaluate_the_committed_model_on_real_and_synthetic_logs() -> None:
    path = shared_file("taobao_userbehavior_head.csv")
    proc = cli(
        "evaluate", "--model", str(DEFAULT_MODEL_DIR), "--events", str(path), "--format", "taobao"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "taobao-v1" in proc.stdout and "ROC-AUC" in proc.stdout
    proc = cli(
        "evaluate",
        "--format",
        "synthetic",
        "--synthetic-events",
        "20000",
        "--synthetic-users",
        "1000",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_evaluate_names_a_bad_model_directory(tmp_path: Path) -> None:
    proc = cli("evaluate", "--model", str(tmp_path), "--format", "synthetic")
    assert proc.returncode == 2 and "no model at" in proc.stderr
