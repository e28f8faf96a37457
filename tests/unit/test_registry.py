"""The model registry's pure rules (udfs.registry): a published model's identity and structure,
which version a job serves, the poll schedule, and the check a model passes before it serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flink_jobs.config import DEFAULT_MODEL_DIR
from tests.support.models import (
    copy_default,
    not_a_probability_model,
    recalibrated_model,
    row_vector,
    tiny_model,
    unknown_feature_model,
)
from udfs.engine import ProfileEngine
from udfs.errors import ModelError
from udfs.events import VIEW, make_message, validate_message
from udfs.params import ProfileParams
from udfs.registry import (
    MAX_POLL_BACKOFF_MS,
    ModelState,
    PublishedModel,
    RegistryEntry,
    choose,
    load_checked,
    model_sha256,
    next_poll_ms,
)
from udfs.rows import PROFILE_COLUMN_NAMES
from udfs.scoring import Scorer


def entry(version: str, seq: int, state: ModelState, sha: str | None = None) -> RegistryEntry:
    return RegistryEntry(version, seq, "m", sha or f"sha-{version}", state)


def test_the_newest_version_not_refused_serves() -> None:
    found = [
        entry("v1", 1, ModelState.RETIRED),
        entry("v2", 2, ModelState.SERVING),
        entry("v3", 3, ModelState.PENDING),
        entry("v4", 4, ModelState.REFUSED),
    ]
    assert choose(found, "sha-v2") == found[2]  # v3, not the refused v4
    assert choose(found, "sha-v3") is None  # already serving it
    # A job that started with another model switches to the registry's choice.
    assert choose(found, "sha-of-the-start-dir") == found[2]
    # A version this instance refused (not yet recorded) is skipped: the next newest is chosen.
    assert choose(found, "sha-v2", frozenset({"sha-v3"})) is None
    assert choose(found, "sha-v1", frozenset({"sha-v3"})) == found[1]
    # Publish order decides, not the order rows come in or version names.
    assert choose(list(reversed(found)), "sha-v2") == found[2]
    assert choose([], "x") is None
    assert choose([entry("v1", 1, ModelState.REFUSED)], "x") is None


def test_polls_back_off_while_they_fail() -> None:
    assert next_poll_ms(1_000, 5_000, 0) == 6_000
    assert next_poll_ms(1_000, 5_000, 1) == 11_000
    assert next_poll_ms(1_000, 5_000, 2) == 21_000
    assert next_poll_ms(1_000, 5_000, 50) == 1_000 + MAX_POLL_BACKOFF_MS
    # An interval longer than the back-off cap is kept.
    assert next_poll_ms(0, 120_000, 3) == 120_000


def test_identity_is_the_content_of_both_files() -> None:
    a = model_sha256("tree\nx", "{}")
    assert a == model_sha256("tree\nx", "{}")
    assert a != model_sha256("tree\nx ", "{}") and a != model_sha256("tree\nx", "{ }")
    # The NUL separator: moving text from one file to the other changes the identity.
    assert model_sha256("tree\nab", "c") != model_sha256("tree\na", "bc")


def test_a_model_directory_round_trips(tmp_path: Path) -> None:
    model = PublishedModel.from_dir(DEFAULT_MODEL_DIR)
    assert (model.name, model.version) == ("purchase_propensity", "taobao-v2")
    copy = PublishedModel.from_dir(model.write(tmp_path / "copy"))
    assert copy == model and copy.sha256 == model.sha256
    assert (tmp_path / "copy" / "model.txt").read_bytes() == (
        DEFAULT_MODEL_DIR / "model.txt"
    ).read_bytes()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no-dir", "is not a directory"),
        ("no-model", "has no model.txt"),
        ("no-metadata", "has no metadata.json"),
        ("not-json", "metadata.json is not JSON"),
        ("no-version", "lacks version"),
        ("not-lightgbm", "is not a LightGBM model in text format"),
    ],
)
def test_what_cannot_be_published_is_named(tmp_path: Path, damage: str, message: str) -> None:
    model = tmp_path / "m"
    if damage != "no-dir":
        copy_default(model)
    if damage == "no-model":
        (model / "model.txt").unlink()
    elif damage == "no-metadata":
        (model / "metadata.json").unlink()
    elif damage == "not-json":
        (model / "metadata.json").write_text("{nope")
    elif damage == "no-version":
        meta = json.loads((model / "metadata.json").read_text())
        del meta["version"]
        (model / "metadata.json").write_text(json.dumps(meta))
    elif damage == "not-lightgbm":
        (model / "model.txt").write_text("PK\x03\x04 a zip file")
    with pytest.raises(ModelError, match=message) as caught:
        PublishedModel.from_dir(model)
    assert "\n" not in str(caught.value)


def test_good_models_pass_the_check(tmp_path: Path) -> None:
    for path, version in (
        (recalibrated_model(tmp_path / "a", "recalibrated"), "recalibrated"),
        (tiny_model(tmp_path / "b", "tiny"), "tiny"),
    ):
        scorer = load_checked(PublishedModel.from_dir(path), tmp_path / "load" / version)
        assert scorer.version == version
        scorer.close()


def test_a_model_the_code_cannot_feed_is_refused_naming_the_feature(tmp_path: Path) -> None:
    model = PublishedModel.from_dir(unknown_feature_model(tmp_path / "bad", "bad-v1"))
    workdir = tmp_path / "load"
    with pytest.raises(ModelError) as caught:
        load_checked(model, workdir)
    reason = caught.value.message
    assert reason == (
        "model bad-v1 uses features ['cnt_teleports_1h'] that this code does not compute"
    )


def test_a_model_that_does_not_score_a_probability_is_refused(tmp_path: Path) -> None:
    model = PublishedModel.from_dir(not_a_probability_model(tmp_path / "bad", "raw-v1"))
    with pytest.raises(ModelError, match=r"scores a probe row -\d.*not a probability in \[0, 1\]"):
        load_checked(model, tmp_path / "load")


def test_a_model_whose_files_disagree_is_refused(tmp_path: Path) -> None:
    path = recalibrated_model(tmp_path / "m", "v9")
    meta = json.loads((path / "metadata.json").read_text())
    meta["feature_names"] = list(reversed(meta["feature_names"]))
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"model\.txt names features .* inconsistent"):
        load_checked(PublishedModel.from_dir(path), tmp_path / "load")


def test_the_engine_switches_model_for_the_next_row(tmp_path: Path) -> None:
    first = Scorer(DEFAULT_MODEL_DIR)
    second = Scorer(recalibrated_model(tmp_path / "m", "v2"))
    engine = ProfileEngine(
        ProfileParams(), first.score, first.version, lambda u: u, explain=first.explain
    )

    def view(n: int) -> object:
        msg = make_message(
            event_id=f"e{n}", user_id="u", event_type=VIEW, event_time_ms=1_735_700_000_000 + n,
            item_id="i",
        )  # fmt: skip
        return validate_message(msg, 2**62)

    step = engine.on_event(None, view(1), "t", 0)  # type: ignore[arg-type]
    assert step.row is not None
    assert step.row[PROFILE_COLUMN_NAMES.index("model_version")] == "taobao-v2"
    engine.use_model(second.score, second.version, second.explain)
    step = engine.on_event(step.profile, view(2), "t", 0)  # type: ignore[arg-type]
    row = dict(zip(PROFILE_COLUMN_NAMES, step.row or (), strict=True))
    assert row["model_version"] == "v2"
    assert row["score"] == second.score(row_vector(row["features"]))
    assert row["score"] != first.score(row_vector(row["features"]))
    first.close()
    second.close()
