"""Model directories for the model-registry tests: a second good model (trained here, on feature
vectors the job's own code computes), and bad ones a job must refuse."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

from flink_jobs.config import DEFAULT_MODEL_DIR
from udfs.engine import ProfileEngine
from udfs.events import decode_event
from udfs.features import FEATURE_NAMES
from udfs.host import MemoryHost
from udfs.params import ProfileParams
from udfs.sources import SyntheticSpec, synthetic_events

# The second model's inputs: a handful of the profile's features, other than taobao-v2's mix.
TINY_FEATURES = (
    "cnt_view_24h",
    "cnt_cart_24h",
    "cnt_cart_life",
    "cnt_purchase_life",
    "act_score",
    "rfm_hours_since_last_event",
    "fun_view_to_cart",
)


def write_model(directory: Path, model_txt: str, metadata: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.txt").write_text(model_txt, encoding="utf-8")
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=1), encoding="utf-8")
    return directory


def training_vectors(events: int = 3000, users: int = 300, seed: int = 1) -> list[list[float]]:
    """One feature vector (FEATURE_NAMES order) per event, as the job computes it when it scores
    the event's row (the engine with a scorer that records its input)."""
    vectors: list[list[float]] = []

    def record(vector: Any) -> float:
        vectors.append([float(v) for v in vector])
        return 0.5

    engine = ProfileEngine(ProfileParams(), record, "recorder", lambda u: u)
    host = MemoryHost(engine)
    for message in synthetic_events(SyntheticSpec(events, users, seed=seed, days=3)):
        host.on_event(decode_event(message.SerializeToString(), 2**62), "t", 0)
    return vectors


def tiny_model(directory: Path, version: str, seed: int = 1) -> Path:
    """A small LightGBM model on TINY_FEATURES, trained on what the job's code computes (labels:
    carts and recent activity make a purchase likelier), identity calibration."""
    import lightgbm as lgb  # outside the job: fine in the test process
    import numpy as np

    rows = training_vectors(seed=seed)
    index = [FEATURE_NAMES.index(n) for n in TINY_FEATURES]
    x = np.array([[row[i] for i in index] for row in rows])
    rng = random.Random(seed)

    def label(row: list[float]) -> int:
        carts, views = row[index[1]], row[index[0]]
        logit = -2.0 + 0.8 * min(carts, 4) + 0.05 * min(views, 20)
        return int(rng.random() < 1 / (1 + math.exp(-logit)))

    y = np.array([label(row) for row in rows])
    params = {
        "objective": "binary",
        "num_leaves": 7,
        "min_data_in_leaf": 20,
        "learning_rate": 0.2,
        "num_threads": 1,
        "deterministic": True,
        "seed": seed,
        "verbose": -1,
    }
    data = lgb.Dataset(x, y, feature_name=list(TINY_FEATURES))
    booster = lgb.train(params, data, num_boost_round=15)
    metadata = {
        "name": "purchase_propensity",
        "version": version,
        "feature_names": list(TINY_FEATURES),
        "calibration": {"kind": "identity"},
        "training": {"note": "a tiny test model (tests/support/models.py)"},
    }
    return write_model(directory, booster.model_to_string(), metadata)


def default_metadata() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text())
    return data


def recalibrated_model(directory: Path, version: str, a: float = 1.3, b: float = 0.4) -> Path:
    """The shipped model's trees under another version and Platt calibration."""
    metadata = default_metadata()
    metadata.update(version=version, calibration={"kind": "platt", "a": a, "b": b})
    return write_model(directory, (DEFAULT_MODEL_DIR / "model.txt").read_text(), metadata)


def unknown_feature_model(directory: Path, version: str, feature: str = "cnt_teleports_1h") -> Path:
    """The shipped model whose metadata and model.txt name a feature the code does not compute
    (consistent with each other: only the feature contract fails)."""
    metadata = default_metadata()
    first = metadata["feature_names"][0]
    metadata.update(version=version)
    metadata["feature_names"][0] = feature
    text = (DEFAULT_MODEL_DIR / "model.txt").read_text()
    text = text.replace(f"feature_names={first} ", f"feature_names={feature} ", 1)
    return write_model(directory, text, metadata)


def not_a_probability_model(directory: Path, version: str) -> Path:
    """The shipped trees read as a regression (raw log-odds out, about -1.6) with no calibration:
    it loads and matches the contract but does not score a probability."""
    metadata = default_metadata()
    metadata.update(version=version, calibration={"kind": "identity"})
    text = (DEFAULT_MODEL_DIR / "model.txt").read_text()
    text = text.replace("objective=binary sigmoid:1", "objective=regression", 1)
    return write_model(directory, text, metadata)


def row_vector(features_json: str | bytes | dict[str, Any]) -> list[float]:
    """The model input (FEATURE_NAMES order) of a profile row, from its `features` column (JSON
    text, or as psycopg2 returns jsonb): what an independent recomputation of its score uses.
    JSON has no NaN: missing values are null."""
    features = features_json if isinstance(features_json, dict) else json.loads(features_json)
    return [math.nan if features[n] is None else float(features[n]) for n in FEATURE_NAMES]


def copy_default(directory: Path) -> Path:
    shutil.copytree(DEFAULT_MODEL_DIR, directory)
    return directory
