"""Purchase-propensity scoring with a LightGBM model directory and its feature contract.

A model directory holds `model.txt` (LightGBM's native text format) and `metadata.json`
(`name`, `version`, `feature_names`: the model's inputs in order, a subset of the profile's
features; `calibration`; provenance, metrics). `Scorer` checks that the metadata, the model file
and the code (`udfs.features.FEATURE_NAMES`) agree, and fails with one line naming the mismatch
otherwise. It takes the profile's whole feature vector (FEATURE_NAMES order) and picks the
model's inputs by name; the score is the model's probability mapped through the calibration
(`udfs.calibration`), i.e. a calibrated probability.

`explain` gives the reasons for a score: LightGBM's own SHAP values (what
`C_API_PREDICT_CONTRIB` gives; computed by the tree walker's TreeSHAP in C, checked bit for bit
against LightGBM's single-row path at load, or by that path): per feature, its contribution to
the log-odds; the contributions
of all features plus the bias (expected value) add up to the model's raw log-odds. The three
largest in magnitude are kept. Explanations are memoised by the exact model input (the bytes of
the doubles LightGBM reads; `EXPLAIN_MEMO` most recently used): a shopper's first event gives one
of a handful of vectors (one view, one cart ...), so most explanations of new profiles repeat one
already computed, bit for bit the same (docs/performance.md).

Scores come from `udfs.trees.TreeModel`, LightGBM's prediction walked over the model's trees
in compiled code (~4 µs per score against ~5 µs through LightGBM's single-row C path outside
Flink, and no ctypes call inside it), and are LightGBM's, bit for bit: each Scorer checks this
against LightGBM on probe rows at every split's threshold, either side of it, at zero and
missing, when it loads a model, and keeps LightGBM's C path for a model that differs or that the
walker does not cover (`Scorer.evaluator` says which and why). Explanations are LightGBM's
TreeSHAP (src/io/tree.cpp) done over the same arrays with the same operations in the same order
(`Scorer.explainer`): a tree's contributions depend on the row only through the side it takes at
each node, so the additions each such pattern makes are recorded once per tree and replayed, in
order (~4-14 µs per explanation against ~60-95 µs through LightGBM, whose recursion is the cost).

LightGBM is called through its own C library (`lib_lightgbm.so` from the lightgbm wheel) with
ctypes: the model is loaded with `LGBM_BoosterCreateFromModelfile` and each row goes through
`LGBM_BoosterPredictForMatSingleRowFast` with a FastConfig made once. The result is what
`lightgbm.Booster.predict` returns (same library, same trees) at a fraction of its per-call
cost. The `lightgbm` Python package is not imported: it imports scikit-learn and SciPy when they
are installed, and SciPy's extension modules hang when loaded inside Flink's thread-mode
interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from operator import itemgetter
from pathlib import Path
from typing import Any

from udfs.calibration import Calibration
from udfs.errors import ModelError
from udfs.features import FEATURE_NAMES
from udfs.trees import Explainer, TreeModel, Unsupported

_C_API_DTYPE_FLOAT64 = 1
_C_API_PREDICT_NORMAL = 0
_C_API_PREDICT_CONTRIB = 3
REASONS = 3
# Explanations kept per Scorer, least recently used dropped first (a few hundred bytes each; 0:
# no memo).
EXPLAIN_MEMO = 4096


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    feature_names: tuple[str, ...]
    path: Path
    metadata: dict[str, Any]
    calibration: Calibration


def read_metadata(model_dir: Path) -> ModelInfo:
    meta_path = model_dir / "metadata.json"
    if not (model_dir / "model.txt").is_file() or not meta_path.is_file():
        raise ModelError(
            f"no model at {model_dir} (needs model.txt and metadata.json): set --model-dir / "
            "PROFILESTREAM_MODEL_DIR to a model directory such as "
            "models/purchase_propensity/taobao-v2"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return ModelInfo(
            name=str(meta["name"]),
            version=str(meta["version"]),
            feature_names=tuple(meta["feature_names"]),
            path=model_dir,
            metadata=meta,
            calibration=Calibration.from_json(meta.get("calibration")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{meta_path} is not valid model metadata: {exc!r}") from None


@cache
def _library() -> ctypes.PyDLL:
    spec = importlib.util.find_spec("lightgbm")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the lightgbm package is not installed: run `make setup`")
    base = Path(next(iter(spec.submodule_search_locations)))
    for candidate in (
        base / "lib" / "lib_lightgbm.so",
        base / "lib_lightgbm.so",
        base / "lib" / "lib_lightgbm.dylib",
    ):
        if candidate.is_file():
            # PyDLL keeps the GIL during calls. A prediction takes ~2 us; releasing the GIL
            # around it (ctypes.CDLL) let the job's other Python thread take it and made each
            # call wait, ~15 us per score inside the job.
            lib = ctypes.PyDLL(str(candidate))
            lib.LGBM_GetLastError.restype = ctypes.c_char_p
            return lib
    raise ModelError(f"lib_lightgbm not found in {base}: reinstall lightgbm (`make setup`)")


def _check(ret: int) -> None:
    if ret != 0:
        raise ModelError(_library().LGBM_GetLastError().decode("utf-8", "replace"))


def _model_feature_names(lib: ctypes.PyDLL, handle: ctypes.c_void_p) -> list[str]:
    n = ctypes.c_int()
    _check(lib.LGBM_BoosterGetNumFeature(handle, ctypes.byref(n)))
    size = 256
    while True:
        buffers = [ctypes.create_string_buffer(size) for _ in range(n.value)]
        pointers = (ctypes.c_char_p * n.value)(*[ctypes.cast(b, ctypes.c_char_p) for b in buffers])
        out_len, needed = ctypes.c_int(), ctypes.c_size_t()
        _check(
            lib.LGBM_BoosterGetFeatureNames(
                handle,
                ctypes.c_int(n.value),
                ctypes.byref(out_len),
                ctypes.c_size_t(size),
                ctypes.byref(needed),
                pointers,
            )
        )
        if needed.value <= size:
            return [b.value.decode("utf-8") for b in buffers[: out_len.value]]
        size = needed.value


class Scorer:
    """A loaded model. Not thread-safe: make one per operator instance (Flink's `open()`)."""

    def __init__(
        self,
        model_dir: Path | str,
        computed_features: Sequence[str] = FEATURE_NAMES,
        *,
        walk_trees: bool = True,
    ):
        """`walk_trees=False` scores through LightGBM's C path only (tests compare the two)."""
        model_dir = Path(model_dir)
        self.info = read_metadata(model_dir)
        expected = self.info.feature_names
        computed = tuple(computed_features)
        unknown = [name for name in expected if name not in computed]
        if unknown or not expected:
            raise ModelError(
                f"model {self.info.version} at {model_dir} uses features {unknown or '(none)'} "
                "that this code does not compute",
                fix="retrain the model (`profilestream train`) or point --model-dir at one built "
                "for this code",
            )
        index = [computed.index(name) for name in expected]
        self._code_index = index
        self._pick: Callable[[Sequence[Any]], tuple[Any, ...]] = (
            itemgetter(*index) if len(index) > 1 else (lambda v: (v[index[0]],))
        )
        lib = self._lib = _library()
        self._handle = ctypes.c_void_p()
        self._fast = ctypes.c_void_p()
        self._fast_contrib = ctypes.c_void_p()
        iterations = ctypes.c_int()
        try:
            _check(
                lib.LGBM_BoosterCreateFromModelfile(
                    str(model_dir / "model.txt").encode(),
                    ctypes.byref(iterations),
                    ctypes.byref(self._handle),
                )
            )
        except ModelError as exc:
            raise ModelError(f"cannot load {model_dir}/model.txt: {exc}") from None
        names = _model_feature_names(lib, self._handle)
        if tuple(names) != expected:
            self.close()
            raise ModelError(
                f"{model_dir}/model.txt names features {names}, metadata.json names "
                f"{list(expected)}: the directory is inconsistent"
            )
        self.version = self.info.version
        self.names = expected
        self.calibration = self.info.calibration
        self._calibrated = self.calibration.kind != "identity"
        self._n = len(expected)
        for kind, handle in (
            (_C_API_PREDICT_NORMAL, self._fast),
            (_C_API_PREDICT_CONTRIB, self._fast_contrib),
        ):
            _check(
                lib.LGBM_BoosterPredictForMatSingleRowFastInit(
                    self._handle,
                    ctypes.c_int(kind),
                    ctypes.c_int(0),
                    ctypes.c_int(-1),
                    ctypes.c_int(_C_API_DTYPE_FLOAT64),
                    ctypes.c_int32(self._n),
                    ctypes.c_char_p(b"num_threads=1"),
                    ctypes.byref(handle),
                )
            )
        self._row = (ctypes.c_double * self._n)()
        self._out_len = ctypes.c_int64()
        self._out = ctypes.c_double()
        self._contrib = (ctypes.c_double * (self._n + 1))()
        self._predict = lib.LGBM_BoosterPredictForMatSingleRowFast
        self._row_ref = ctypes.byref(self._row)
        self._out_len_ref = ctypes.byref(self._out_len)
        self._out_ref = ctypes.byref(self._out)
        self._contrib_ref = ctypes.byref(self._contrib)
        self._trees: TreeModel | None = None
        self.evaluator = "lightgbm (walk_trees=False)"
        # The calibrated probability for one profile feature vector (FEATURE_NAMES order): with
        # the tree walk, one call that walks, takes the sigmoid and calibrates (in C when the
        # native build is in use; checked against LightGBM's path at load).
        self.score: Callable[[Sequence[Any]], float] = self._score_lightgbm
        if walk_trees:
            self._trees, self.score, self.evaluator = self._tree_walker(model_dir, len(computed))
        self._probability: Callable[[Sequence[Any]], float] = (
            self._trees.probability if self._trees is not None else self._lightgbm_raw
        )
        # Explanations: the tree walker's TreeSHAP (udfs._treewalk) when it gives LightGBM's
        # contributions bit for bit on the probe rows, else LightGBM's path.
        self._shap: Any = None
        self.explainer = "lightgbm"
        if self._trees is not None:
            self._shap, self.explainer = self._shap_walker(self._trees, len(computed))
        shap = self._shap
        # The score's reasons: the REASONS largest contributions by magnitude, largest first,
        # flat [index in FEATURE_NAMES, contribution in millionths of log-odds, ...] (what the
        # state stores; `udfs.rows.reasons_json` renders it). A model input explained before
        # (the same bytes) gets the memoised reasons: the same computation would give the same
        # ones. Compiled (`udfs.trees.Explainer`): it runs on a third of the rows.
        # With TreeSHAP it holds only the forest's methods: no reference cycle through this
        # Scorer, which is then freed as soon as it is dropped (a model switch).
        self.explain: Explainer = Explainer(
            shap.input_key if shap is not None else self._lightgbm_input_key,
            shap.reasons if shap is not None else None,
            shap.contributions if shap is not None else self._lightgbm_contributions,
            self._code_index,
            self._n,
            REASONS,
            EXPLAIN_MEMO,
        )

    def _tree_walker(
        self, model_dir: Path, width: int
    ) -> tuple[TreeModel | None, Callable[[Sequence[Any]], float], str]:
        """The compiled tree walker and its one-call calibrated scorer, when both give what
        LightGBM's path gives (the probability, and the calibrated score) bit for bit on the
        probe rows, with the evaluator's name; otherwise LightGBM's path, and why."""
        fallback = self._score_lightgbm
        try:
            text = (model_dir / "model.txt").read_text(encoding="utf-8")
            trees = TreeModel(text, self._code_index)
        except (Unsupported, KeyError, ValueError, IndexError) as exc:
            return None, fallback, f"lightgbm (the tree walker does not cover this model: {exc})"
        rows = trees.probes(width)
        expected = [self._lightgbm_raw(row) for row in rows]  # LightGBM once per probe
        for row, raw in zip(rows, expected, strict=True):
            walked = trees.probability(row)
            if walked.hex() != raw.hex():
                return (
                    None,
                    fallback,
                    (f"lightgbm (the tree walker gave {walked!r} where LightGBM gives {raw!r})"),
                )
        scorer = trees.scorer(self.calibration)
        for row, raw in zip(rows, expected, strict=True):
            got, want = scorer(row), self._calibrate(raw)
            if got.hex() != want.hex():
                return (
                    None,
                    fallback,
                    (
                        f"lightgbm (the tree walk's calibrated score was {got!r} where LightGBM's"
                        f" path gives {want!r})"
                    ),
                )
        return trees, scorer, f"trees ({trees.trees} trees, checked against LightGBM)"

    def _shap_walker(self, trees: TreeModel, width: int) -> tuple[Any, str]:
        """The C forest that computes contributions (its `contributions`, `reasons` and
        `input_key`) when its values are LightGBM's bit for bit on every 29th probe row (every
        kind of value at a node, spread over the nodes: the arithmetic does not depend on the row
        and the routing is the walk's, checked above; ~30 ms for the shipped model, LightGBM's
        contributions being the cost), and the explainer's name; otherwise None, and why."""
        if trees.contributions([0.0] * width) is None:
            return None, "lightgbm (no compiled TreeSHAP for this model)"
        for row in trees.probes(width)[::29]:
            walked = trees.contributions(row)
            expected = self._lightgbm_contributions(row)
            assert walked is not None
            if [v.hex() for v in walked] != [v.hex() for v in expected]:
                return None, (
                    f"lightgbm (the compiled TreeSHAP gave {walked!r} where LightGBM gives "
                    f"{expected!r})"
                )
        return trees.forest, "trees (TreeSHAP over the walked trees, checked against LightGBM)"

    def _fill(self, features: Sequence[Any]) -> None:
        """The model's inputs, picked from the profile's feature vector, into the C row."""
        self._row[:] = self._pick(features)  # type: ignore[call-overload]

    def _run(self, fast: ctypes.c_void_p, out_ref: Any) -> None:
        """LightGBM's single-row prediction of the filled row with the FastConfig `fast`."""
        ret = self._predict(fast, self._row_ref, self._out_len_ref, out_ref)
        if ret != 0:
            _check(ret)

    def _lightgbm_raw(self, features: Sequence[Any]) -> float:
        self._fill(features)
        self._run(self._fast, self._out_ref)
        value: float = self._out.value
        return value

    def raw_score(self, features: Sequence[Any]) -> float:
        """The model's probability (what `Booster.predict` returns for the model's inputs picked
        from the profile's feature vector; NaN = missing), before calibration."""
        return self._probability(features)

    def _calibrate(self, raw: float) -> float:
        return self.calibration.apply(raw) if self._calibrated else raw

    def _score_lightgbm(self, features: Sequence[Any]) -> float:
        """`score` through LightGBM's C path."""
        return self._calibrate(self._lightgbm_raw(features))

    def contributions(self, features: Sequence[Any]) -> list[float]:
        """SHAP values of the model's inputs (log-odds), then the bias as the last element; they
        add up to the raw score's log-odds."""
        shap = self._shap
        if shap is not None:
            values: list[float] = shap.contributions(features)
            return values
        return self._lightgbm_contributions(features)

    def _lightgbm_contributions(self, features: Sequence[Any]) -> list[float]:
        """`contributions` through LightGBM's C path."""
        self._fill(features)
        self._run(self._fast_contrib, self._contrib_ref)
        return list(self._contrib)

    @property
    def explain_calls(self) -> int:
        """Rows explained (`explain` calls) by this Scorer."""
        return self.explain.calls

    @property
    def explain_memo_hits(self) -> int:
        """Of those, the ones answered by the memo."""
        return self.explain.memo_hits

    def _lightgbm_input_key(self, features: Sequence[Any]) -> bytes:
        """The model's inputs as the doubles LightGBM reads (the memo's key on LightGBM's path)."""
        self._fill(features)
        return bytes(self._row)

    def close(self) -> None:
        for name in ("_fast", "_fast_contrib"):
            handle = getattr(self, name, None)
            if handle:
                self._lib.LGBM_FastConfigFree(handle)
                setattr(self, name, ctypes.c_void_p())
        if getattr(self, "_handle", None):
            self._lib.LGBM_BoosterFree(self._handle)
            self._handle = ctypes.c_void_p()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
