"""The compiled tree walker (udfs.trees) gives LightGBM's probabilities bit for bit, and the
Scorer falls back to LightGBM's C path for a model it does not cover or that it would get wrong."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

import udfs.scoring
from flink_jobs.config import DEFAULT_MODEL_DIR
from udfs._impl import selected
from udfs.calibration import Calibration
from udfs.features import FEATURE_NAMES
from udfs.scoring import Scorer
from udfs.trees import TreeModel, Unsupported

INPUTS = FEATURE_NAMES[:6]


def _rows(n: int, seed: int = 0) -> np.ndarray:
    """Feature vectors with exact zeros, -0.0, values below LightGBM's zero threshold, NaN,
    negatives and large values."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(mean=0.5, sigma=1.5, size=(n, len(FEATURE_NAMES)))
    x[::3] *= -1.0
    mask = rng.random(x.shape)
    x[mask < 0.15] = 0.0
    x[(mask >= 0.15) & (mask < 0.2)] = -0.0
    x[(mask >= 0.2) & (mask < 0.25)] = 1e-36
    x[(mask >= 0.25) & (mask < 0.35)] = np.nan
    x[(mask >= 0.35) & (mask < 0.4)] = np.round(x[(mask >= 0.35) & (mask < 0.4)])
    return x


def _model_dir(tmp_path: Path, params: dict[str, Any], categorical: bool = False) -> Path:
    """A small binary model over INPUTS, trained here, as a model directory."""
    x = _rows(3000, seed=1)[:, : len(INPUTS)]
    y = ((np.nan_to_num(x[:, 1]) > 0.5) ^ (np.nan_to_num(x[:, 2]) < -1.0)).astype(int)
    if categorical:
        x[:, 0] = np.abs(np.nan_to_num(np.round(x[:, 0]))) % 5
        y = np.isin(x[:, 0], [1, 3]).astype(int)
    data = lgb.Dataset(
        x,
        y,
        feature_name=list(INPUTS),
        categorical_feature=[0] if categorical else "auto",
        free_raw_data=False,
    )
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 7, "min_data_in_leaf": 5, **params},
        data,
        num_boost_round=25,
    )
    target = tmp_path / "model"
    target.mkdir()
    booster.save_model(str(target / "model.txt"))
    meta = {"name": "test", "version": "t1", "feature_names": list(INPUTS)}
    (target / "metadata.json").write_text(json.dumps(meta))
    return target


def _same_bits(a: Scorer, b: Scorer, rows: np.ndarray) -> None:
    for row in rows:
        vector = tuple(float(v) for v in row)
        assert a.raw_score(vector).hex() == b.raw_score(vector).hex(), vector


def test_the_committed_model_is_walked_and_equals_lightgbm_bit_for_bit() -> None:
    walked, lightgbm = Scorer(DEFAULT_MODEL_DIR), Scorer(DEFAULT_MODEL_DIR, walk_trees=False)
    assert walked.evaluator.startswith("trees (86 trees"), walked.evaluator
    assert lightgbm.evaluator.startswith("lightgbm")
    _same_bits(walked, lightgbm, _rows(5000))
    trees = walked._trees
    assert trees is not None
    probes = np.array(trees.probes(len(FEATURE_NAMES)))
    _same_bits(walked, lightgbm, probes)
    # a list works as well as the engine's tuple
    row = [float(v) for v in _rows(1)[0]]
    assert walked.raw_score(row) == lightgbm.raw_score(row)


def test_the_c_walk_and_the_object_walk_agree_bit_for_bit() -> None:
    """With the native build, the walk runs over udfs._treewalk's C arrays; without it, over the
    compiled (or pure) Node objects. Both on the same rows, including the probes."""
    text = (DEFAULT_MODEL_DIR / "model.txt").read_text()
    index = Scorer(DEFAULT_MODEL_DIR)._code_index
    default, objects = TreeModel(text, index), TreeModel(text, index, native=False)
    assert objects.forest is None
    if selected["mode"] == "native":
        assert default.forest is not None, "the native build should include udfs._treewalk"
    rows = [tuple(float(v) for v in row) for row in _rows(5000, seed=3)]
    rows += [tuple(r) for r in default.probes(len(FEATURE_NAMES))]
    for row in rows:
        assert default.raw(row).hex() == objects.raw(row).hex(), row
        assert default.raw(list(row)) == objects.raw(row)
    ints = tuple(range(len(FEATURE_NAMES)))  # ints are read as floats, as LightGBM's row does
    assert default.raw(ints) == objects.raw(ints) == objects.raw(tuple(map(float, ints)))


def test_a_vector_the_model_cannot_read_is_an_error() -> None:
    text = (DEFAULT_MODEL_DIR / "model.txt").read_text()
    index = Scorer(DEFAULT_MODEL_DIR)._code_index
    for trees in (TreeModel(text, index), TreeModel(text, index, native=False)):
        with pytest.raises(IndexError):
            trees.raw((1.0,) * 3)
        with pytest.raises(TypeError):
            trees.raw(("x",) * len(FEATURE_NAMES))


@pytest.mark.parametrize(
    "params",
    [
        {},  # missing type NaN where the training data had NaN, None elsewhere
        {"zero_as_missing": True},  # missing type Zero
        {"use_missing": False},  # missing type None everywhere
        {"min_data_in_leaf": 4000},  # single-leaf trees
        {"sigmoid": 0.7},
    ],
    ids=["nan", "zero-as-missing", "no-missing", "single-leaf", "sigmoid"],
)
def test_models_trained_here_are_walked_bit_for_bit(tmp_path: Path, params: dict[str, Any]) -> None:
    model = _model_dir(tmp_path, params)
    walked, lightgbm = Scorer(model), Scorer(model, walk_trees=False)
    assert walked.evaluator.startswith("trees"), walked.evaluator
    rows = _rows(3000, seed=2)
    _same_bits(walked, lightgbm, rows)
    booster = lgb.Booster(model_file=str(model / "model.txt"))
    expected = booster.predict(rows[:, : len(INPUTS)])
    got = np.array([walked.raw_score(tuple(r)) for r in rows])
    assert np.array_equal(got, expected)
    if params.get("zero_as_missing"):  # the model really has missing type Zero splits
        assert 1 in _missing_types(model)


def _missing_types(model: Path) -> set[int]:
    kinds = set()
    for line in (model / "model.txt").read_text().splitlines():
        if line.startswith("decision_type="):
            kinds |= {(int(d) >> 2) & 3 for d in line.split("=", 1)[1].split()}
    return kinds


def test_a_categorical_model_is_scored_by_lightgbm_with_the_reason(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, {"min_data_per_group": 5, "cat_smooth": 1}, categorical=True)
    assert "num_cat=1" in (model / "model.txt").read_text()
    with pytest.raises(Unsupported, match="categorical"):
        TreeModel((model / "model.txt").read_text(), list(range(len(INPUTS))))
    scorer = Scorer(model)
    assert scorer.evaluator.startswith("lightgbm (the tree walker does not cover this model")
    assert "categorical" in scorer.evaluator
    _same_bits(scorer, Scorer(model, walk_trees=False), _rows(500))


def test_a_walker_that_disagrees_with_lightgbm_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    class OffByOneUlp:
        trees = 1

        def __init__(self, text: str, index: list[int]) -> None:
            self.inner = TreeModel(text, index)

        def probes(self, width: int) -> list[list[float]]:
            return self.inner.probes(width)

        def probability(self, vector: Any) -> float:
            return math.nextafter(self.inner.probability(vector), 1.0)

    monkeypatch.setattr(udfs.scoring, "TreeModel", OffByOneUlp)
    scorer = Scorer(DEFAULT_MODEL_DIR)
    assert scorer.evaluator.startswith("lightgbm (the tree walker gave"), scorer.evaluator
    _same_bits(scorer, Scorer(DEFAULT_MODEL_DIR, walk_trees=False), _rows(200))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("tree\nobjective=regression\n\nTree=0\nnum_leaves=1\nleaf_value=0.5\n", "not binary"),
        ("tree\nnum_class=3\nnum_tree_per_iteration=3\nobjective=multiclass\n\nTree=0\n", "multi"),
        ("tree\nobjective=binary sigmoid:1\n", "no trees"),
        (
            "tree\nobjective=binary sigmoid:1\n\nTree=0\nnum_leaves=2\nis_linear=1\n"
            "leaf_value=0 1\n",
            "linear",
        ),
        (
            "tree\nobjective=binary sigmoid:1\n\nTree=0\nnum_leaves=2\nleaf_value=0 1\n"
            "split_feature=0 1\nthreshold=1\ndecision_type=2\nleft_child=-1\nright_child=-2\n",
            "split_feature has the wrong length",
        ),
    ],
)
def test_what_the_walker_does_not_cover_is_named(text: str, reason: str) -> None:
    with pytest.raises(Unsupported, match=reason):
        TreeModel(text, [0, 1])


def _calibrations(probabilities: list[float]) -> list[Calibration]:
    """Every kind; the isotonic points include probabilities the rows really score (a score at
    a point exactly, the bisection's edge), a repeated x and points beyond both ends."""
    p = sorted(set(probabilities))
    xs = [p[0] / 2, *p[:: max(1, len(p) // 12)], p[len(p) // 2], (1 + p[-1]) / 2]
    xs.sort()
    ys = [min(1.0, i / len(xs) + 0.01) for i in range(len(xs))]
    for i in range(1, len(xs)):  # a repeated x repeats its y
        if xs[i] == xs[i - 1]:
            ys[i] = ys[i - 1]
    return [
        Calibration("identity"),
        Calibration("platt", a=1.3, b=-0.4),
        Calibration("platt", a=-0.7, b=2.5),  # z on both sides of 0 over the rows
        Calibration("isotonic", x=tuple(xs), y=tuple(ys)),
        Calibration("isotonic", x=(0.5,), y=(0.25,)),
    ]


def test_the_one_call_score_is_the_calibrated_lightgbm_probability_bit_for_bit() -> None:
    """`TreeModel.scorer` (the walk, the sigmoid and the calibration in one call: in C with the
    native build) gives `calibration.apply` of LightGBM's probability, for every calibration
    kind, on random rows and on the probes; the object walk too."""
    text = (DEFAULT_MODEL_DIR / "model.txt").read_text()
    lightgbm = Scorer(DEFAULT_MODEL_DIR, walk_trees=False)
    index = lightgbm._code_index
    default, objects = TreeModel(text, index), TreeModel(text, index, native=False)
    rows = [tuple(float(v) for v in row) for row in _rows(2000, seed=5)]
    rows += [tuple(r) for r in default.probes(len(FEATURE_NAMES))]
    probabilities = [lightgbm.raw_score(row) for row in rows]
    for calibration in _calibrations(probabilities):
        for trees in (default, objects):
            score = trees.scorer(calibration)
            for row, p in zip(rows, probabilities, strict=True):
                expected = calibration.apply(p)
                assert score(row).hex() == expected.hex(), (calibration.kind, row)
            assert score(list(rows[0])) == calibration.apply(probabilities[0])
            with pytest.raises(IndexError):
                score((1.0,) * 3)


def test_the_scorer_serves_the_one_call_score_when_it_checks_out() -> None:
    scorer = Scorer(DEFAULT_MODEL_DIR)
    assert scorer.calibration.kind == "platt"  # the committed model is calibrated
    trees = scorer._trees
    assert trees is not None and scorer.evaluator.startswith("trees")
    if trees.forest is not None:  # the engine calls C directly
        assert scorer.score == trees.forest.score
    reference = Scorer(DEFAULT_MODEL_DIR, walk_trees=False)
    for row in _rows(500, seed=6):
        vector = tuple(float(v) for v in row)
        assert scorer.score(vector).hex() == reference.score(vector).hex()


def test_a_calibrated_walk_that_disagrees_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    real = TreeModel.scorer

    def off_by_one_ulp(self: TreeModel, calibration: Calibration) -> Any:
        score = real(self, calibration)
        return lambda vector: math.nextafter(score(vector), 1.0)

    monkeypatch.setattr(TreeModel, "scorer", off_by_one_ulp)
    scorer = Scorer(DEFAULT_MODEL_DIR)
    assert scorer.evaluator.startswith("lightgbm (the tree walk's calibrated score"), (
        scorer.evaluator
    )
    assert scorer._trees is None
    reference = Scorer(DEFAULT_MODEL_DIR, walk_trees=False)
    for row in _rows(100, seed=7):
        vector = tuple(float(v) for v in row)
        assert scorer.score(vector) == reference.score(vector)
        assert scorer.raw_score(vector) == reference.raw_score(vector)


# Score reasons from udfs._treewalk's TreeSHAP: LightGBM's contributions bit for bit (recorded
# per tree and decision pattern, then replayed), the same reasons as LightGBM's path, and
# LightGBM's path wherever the compiled one is absent or disagrees.
native_only = pytest.mark.skipif(
    selected.get("mode") != "native", reason="the compiled TreeSHAP is part of the native build"
)


def _hex(values: list[float]) -> list[str]:
    return [float(v).hex() for v in values]


def _vectors(n: int, seed: int) -> list[tuple[float, ...]]:
    return [tuple(float(v) for v in row) for row in _rows(n, seed=seed)]


@native_only
def test_the_committed_model_is_explained_by_the_compiled_treeshap_bit_for_bit() -> None:
    """Each row twice: the first time a tree meets a decision pattern it runs the recursion and
    records it, later rows with that pattern replay the recording; both are LightGBM's values
    to the last bit, and so is `Booster.predict(pred_contrib=True)`."""
    scorer, lightgbm = Scorer(DEFAULT_MODEL_DIR), Scorer(DEFAULT_MODEL_DIR, walk_trees=False)
    assert scorer.explainer.startswith("trees (TreeSHAP"), scorer.explainer
    assert lightgbm.explainer == "lightgbm"
    trees = scorer._trees
    assert trees is not None
    rows = _vectors(2000, seed=11) + [tuple(r) for r in trees.probes(len(FEATURE_NAMES))]
    expected = [_hex(lightgbm.contributions(row)) for row in rows]
    for _ in range(2):
        for row, want in zip(rows, expected, strict=True):
            assert _hex(scorer.contributions(row)) == want, row
    booster = lgb.Booster(model_file=str(DEFAULT_MODEL_DIR / "model.txt"))
    cols = [FEATURE_NAMES.index(n) for n in scorer.names]
    x = np.array(rows[:300])[:, cols]
    walked = np.array([scorer.contributions(r) for r in rows[:300]])
    assert np.array_equal(walked, booster.predict(x, pred_contrib=True))


@native_only
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"zero_as_missing": True},
        {"use_missing": False},
        {"min_data_in_leaf": 4000},
        {"num_leaves": 40, "min_data_in_leaf": 2},
    ],
    ids=["nan", "zero-as-missing", "no-missing", "single-leaf", "deep-trees"],
)
def test_models_trained_here_are_explained_bit_for_bit(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    """Missing types, single-leaf trees, and trees with more nodes than the pattern table
    covers (those run the recursion every time)."""
    model = _model_dir(tmp_path, params)
    scorer, lightgbm = Scorer(model), Scorer(model, walk_trees=False)
    assert scorer.explainer.startswith("trees (TreeSHAP"), scorer.explainer
    if "num_leaves" in params:
        text = (model / "model.txt").read_text()
        assert max(int(line[11:]) for line in text.splitlines()
                   if line.startswith("num_leaves=")) > 11  # fmt: skip
    for row in _vectors(1500, seed=12) * 2:
        assert _hex(scorer.contributions(row)) == _hex(lightgbm.contributions(row)), row
        assert scorer.explain(row) == lightgbm.explain(row)
    assert len(INPUTS) == len(scorer.names)


@native_only
def test_the_reasons_are_those_of_lightgbms_path_memo_or_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same flat reasons as the LightGBM path (which sorts LightGBM's contributions in
    Python), with the memo and without it, on rows that repeat."""
    lightgbm = Scorer(DEFAULT_MODEL_DIR, walk_trees=False)
    rows = _vectors(1000, seed=13)
    rows += rows[:300]
    expected = [lightgbm.explain(row) for row in rows]
    for memo in (udfs.scoring.EXPLAIN_MEMO, 0):
        monkeypatch.setattr(udfs.scoring, "EXPLAIN_MEMO", memo)
        scorer = Scorer(DEFAULT_MODEL_DIR)
        assert [scorer.explain(row) for row in rows] == expected
        assert scorer.explain_memo_hits == (300 if memo else 0)


def _tie_forest() -> Any:
    """Two identical stumps on inputs 1 and 0 (in that order) and one on input 2 with a larger
    leaf: inputs 0 and 1 contribute exactly the same."""
    forest = TreeModel(
        "tree\nobjective=binary sigmoid:1\n\n"
        + "".join(
            f"Tree={i}\nnum_leaves=2\nsplit_feature={f}\nthreshold=0.5\ndecision_type=2\n"
            f"left_child=-1\nright_child=-2\nleaf_value={v} {-v}\nleaf_count=10 30\n"
            "internal_count=40\n\n"
            for i, (f, v) in enumerate(((1, 0.25), (0, 0.25), (2, 1.0)))
        )
        + "end of trees\n",
        [0, 1, 2],
    ).forest
    assert forest is not None
    return forest


@native_only
def test_reasons_keep_equal_contributions_in_input_order() -> None:
    """Python's sort by -abs(value) is stable; the C selection keeps ties in input order too."""
    forest = _tie_forest()
    values = forest.contributions((1.0, 1.0, 1.0))
    assert values[0] == values[1] and abs(values[2]) > abs(values[0]) > 0
    assert forest.reasons((1.0, 1.0, 1.0), 3) == [2, values[2], 0, values[0], 1, values[1]]
    assert forest.reasons((1.0, 1.0, 1.0), 2) == [2, values[2], 0, values[0]]
    assert forest.reasons((1.0, 1.0, 1.0), 0) == []
    order = sorted(range(3), key=lambda i: -abs(values[i]))
    assert forest.reasons((1.0, 1.0, 1.0), 3)[::2] == order
    with pytest.raises(ValueError, match="k must be"):
        forest.reasons((1.0, 1.0, 1.0), 17)
    with pytest.raises(IndexError):
        forest.contributions((1.0,))
    with pytest.raises(TypeError):
        forest.reasons(("x", 1.0, 1.0), 3)


@native_only
def test_a_treeshap_that_disagrees_with_lightgbm_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = TreeModel.contributions

    def off(self: TreeModel, vector: Any) -> list[float] | None:
        values = real(self, vector)
        return None if values is None else [v + 2**-40 for v in values]

    monkeypatch.setattr(TreeModel, "contributions", off)
    scorer = Scorer(DEFAULT_MODEL_DIR)
    assert scorer.explainer.startswith("lightgbm (the compiled TreeSHAP gave"), scorer.explainer
    assert scorer.evaluator.startswith("trees")  # scoring keeps the walk
    lightgbm = Scorer(DEFAULT_MODEL_DIR, walk_trees=False)
    for row in _vectors(100, seed=14):
        assert scorer.explain(row) == lightgbm.explain(row)
        assert scorer.contributions(row) == lightgbm.contributions(row)


@native_only
def test_a_model_without_row_counts_is_explained_by_lightgbm(tmp_path: Path) -> None:
    """TreeSHAP needs each node's training rows; without them the walk still scores."""
    model = _model_dir(tmp_path, {})
    text = (model / "model.txt").read_text()
    counts = ("leaf_count=", "internal_count=")
    stripped = "\n".join(line for line in text.splitlines() if not line.startswith(counts))
    trees = TreeModel(stripped + "\n", list(range(len(INPUTS))))
    assert not trees.counted and trees.contributions((0.0,) * len(INPUTS)) is None
    assert trees.forest is not None and trees.forest.raw((0.0,) * len(INPUTS)) is not None
