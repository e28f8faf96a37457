"""LightGBM's prediction for a binary model, evaluated in (mypyc-compiled) Python from model.txt.

`udfs.scoring.Scorer` scores every profile update. LightGBM's single-row C path costs a ctypes
call, a copy of the row into a C array and the library's own row conversion per score (~3 µs
outside Flink, ~15-19 µs measured inside the job's keyed thread). The model is small (tens of
trees of a few leaves), so walking its trees here, compiled, costs about a microsecond, with no
boundary crossing and the profile's feature vector read in place.

The result is LightGBM's own, bit for bit, because every step is the one LightGBM takes for a
numerical split (LightGBM/src/io/tree.h, `Tree::NumericalDecision`; src/c_api.cpp, the dense
row function; src/boosting/gbdt_prediction.cpp; src/objective/binary_objective.hpp):

- an input with |x| <= kZeroThreshold (1e-35 as a float) that is not NaN is read as 0.0 (the
  dense row function drops it, the predict buffer holds zeros);
- at a node, NaN becomes 0.0 unless the node's missing type is NaN; a missing value (zero for
  missing type Zero, NaN for missing type NaN) goes to the default child; otherwise
  `x <= threshold` goes left;
- the raw score is the sum of the trees' leaf values in tree order, from 0.0;
- the probability is 1 / (1 + exp(-sigmoid * raw)).

The text format prints thresholds and leaf values with 17 significant digits, so `float()` of the
text is the double LightGBM holds. A model this module does not cover (categorical splits,
linear trees, several trees per iteration, another objective, `average_output`) raises
`Unsupported` with the reason; `Scorer` then keeps LightGBM's C path. `Scorer` also checks this
evaluator against LightGBM on probe rows at every node's threshold before using it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final

from udfs._impl import native_module
from udfs.calibration import Calibration

K_ZERO_THRESHOLD: Final = 1.0000000180025095e-35  # LightGBM's kZeroThreshold (1e-35f) as double
_MISSING_NONE: Final = 0
_MISSING_ZERO: Final = 1
_MISSING_NAN: Final = 2
_CATEGORICAL_MASK: Final = 1
# udfs.calibration kinds -> udfs._treewalk's codes (CAL_IDENTITY, CAL_PLATT, CAL_ISOTONIC).
CALIBRATION_CODES: Final = {"identity": 0, "platt": 1, "isotonic": 2}
_DEFAULT_LEFT_MASK: Final = 2


class Unsupported(ValueError):
    """The model uses something this evaluator does not implement (the message says what)."""


def _numbers(text: str) -> list[str]:
    return text.split(" ") if text else []


def _fields(text: str) -> dict[str, str]:
    """The `key=value` lines of a model.txt section."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


def _forest_class() -> Any:
    """udfs._treewalk.Forest when the native build is selected and has it, else None."""
    module = native_module("udfs._treewalk")
    return module.Forest if module is not None else None


class Node:
    """A split (`feature`, `threshold` and the four children) or a leaf (`value`)."""

    def __init__(self, leaf: bool, feature: int, threshold: float, value: float) -> None:
        self.leaf = leaf
        self.feature = feature
        self.threshold = threshold
        self.value = value
        self.left: Node = self
        self.right: Node = self
        self.on_nan: Node = self
        self.on_zero: Node = self


class TreeModel:
    """A binary LightGBM model's trees, flattened: node `n` of the whole model splits on input
    `feature[n]` (an index into the caller's vector) at `threshold[n]`; a child >= 0 is a node, a
    child < 0 is leaf `~child` of `leaf_value`."""

    def __init__(self, model_text: str, feature_index: list[int], native: bool = True) -> None:
        """`model_text` is model.txt; `feature_index[i]` is where the model's input `i` sits in
        the vectors `raw` and `probability` will be given. `native`: walk the C arrays of
        udfs._treewalk when the native build is in use (False: always these objects)."""
        self.feature: list[int] = []
        self.threshold: list[float] = []
        self.missing: list[int] = []
        self.default_left: list[bool] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.leaf_value: list[float] = []
        self.root: list[int] = []  # per tree: its root node, or ~leaf for a single-leaf tree
        self.on_nan: list[int] = []  # per node: the child a NaN input goes to
        self.on_zero: list[int] = []  # ... and a zero (or |x| <= K_ZERO_THRESHOLD) input
        # SHAP (`contributions`): per node its model input and the training rows through it, per
        # leaf its rows, per tree its expected value (LightGBM's Tree::ExpectedValue)
        self.inputs: list[int] = []
        self.node_count: list[float] = []
        self.leaf_count: list[float] = []
        self.expected: list[float] = []
        self.n_inputs = len(feature_index)
        self.counted = True  # every tree has its row counts (False: no SHAP values here)
        self.sigmoid = 1.0
        self.trees = 0
        header, _, body = model_text.partition("\nTree=")
        if not body:
            raise Unsupported("no trees in the model text")
        self._header(header)
        for chunk in body.split("end of trees", 1)[0].split("\nTree="):
            index, _, tree = chunk.partition("\n")
            self._tree(index.strip(), tree, feature_index)
        self.trees = len(self.root)
        self._routes()
        self.roots: list[Node] = []
        self.forest: Any = None
        forest = _forest_class() if native else None
        if forest is not None:
            self.forest = forest(
                self.feature, self.threshold, self.left, self.right, self.on_nan,
                self.on_zero, self.leaf_value, self.root,
            )  # fmt: skip
            if self.counted:
                self.forest.set_shap(
                    self.inputs, self.n_inputs, list(feature_index), self.node_count,
                    self.leaf_count, self.expected,
                )  # fmt: skip
        else:
            self._link()

    def _header(self, header: str) -> None:
        fields = _fields(header)
        if fields.get("num_tree_per_iteration", "1") != "1" or fields.get("num_class", "1") != "1":
            raise Unsupported("more than one tree per iteration (a multiclass model)")
        if "average_output" in header.splitlines():
            raise Unsupported("average_output (a random forest model)")
        objective = fields.get("objective", "").split(" ")
        if not objective or objective[0] != "binary":
            raise Unsupported(f"objective {fields.get('objective')!r} is not binary")
        for part in objective[1:]:
            key, _, value = part.partition(":")
            if key == "sigmoid":
                self.sigmoid = float(value)

    def _tree(self, index: str, text: str, feature_index: list[int]) -> None:
        fields = _fields(text)
        if fields.get("is_linear", "0") != "0":
            raise Unsupported("linear trees")
        if fields.get("num_cat", "0") != "0":
            raise Unsupported("categorical splits")
        leaves = int(fields["num_leaves"])
        leaf_base = len(self.leaf_value)
        values = [float(v) for v in _numbers(fields["leaf_value"])]
        self.leaf_value.extend(values)
        if len(values) != leaves:
            raise Unsupported(f"tree {index}: leaf_value has the wrong length")
        if leaves == 1:
            self.root.append(~leaf_base)
            self.leaf_count.append(0.0)
            self.expected.append(values[0])
            return
        base = len(self.feature)
        splits = leaves - 1
        for name in ("split_feature", "threshold", "decision_type", "left_child", "right_child"):
            if len(_numbers(fields[name])) != splits:
                raise Unsupported(f"tree {index}: {name} has the wrong length")
        counts = [float(int(c)) for c in _numbers(fields.get("leaf_count", ""))]
        internal = [float(int(c)) for c in _numbers(fields.get("internal_count", ""))]
        if len(counts) != leaves or len(internal) != splits or internal[0] <= 0:
            self.counted = False  # no SHAP values from these trees (LightGBM's path gives them)
            counts, internal = [0.0] * leaves, [1.0] * splits
        self.leaf_count.extend(counts)
        self.node_count.extend(internal)
        # Tree::ExpectedValue: the leaves' values weighted by their share of the root's rows
        total = internal[0]
        expected = 0.0
        for count, value in zip(counts, values, strict=True):
            expected += (count / total) * value
        self.expected.append(expected)
        for f in _numbers(fields["split_feature"]):
            self.inputs.append(int(f))
            self.feature.append(feature_index[int(f)])
        self.threshold.extend(float(v) for v in _numbers(fields["threshold"]))
        for d in _numbers(fields["decision_type"]):
            kind = int(d)
            if kind & _CATEGORICAL_MASK:
                raise Unsupported("categorical splits")
            self.missing.append((kind >> 2) & 3)
            self.default_left.append(bool(kind & _DEFAULT_LEFT_MASK))
        for side, out in (("left_child", self.left), ("right_child", self.right)):
            for c in _numbers(fields[side]):
                child = int(c)
                out.append(child + base if child >= 0 else ~(~child + leaf_base))
        self.root.append(base)

    def _routes(self) -> None:
        """Where NaN and a zero input go at each node (so a step of the walk is one read of the
        vector and two comparisons): the default child for the node's missing type, else the
        side 0.0 takes."""
        for i in range(len(self.feature)):
            default = self.left[i] if self.default_left[i] else self.right[i]
            at_zero = self.left[i] if self.threshold[i] >= 0.0 else self.right[i]
            self.on_nan.append(default if self.missing[i] != _MISSING_NONE else at_zero)
            self.on_zero.append(default if self.missing[i] == _MISSING_ZERO else at_zero)

    def _link(self) -> None:
        """The nodes as linked objects (mypyc keeps their fields unboxed in C structs), for the
        walk without udfs._treewalk."""
        leaves = [Node(True, 0, 0.0, v) for v in self.leaf_value]
        nodes = [Node(False, f, t, 0.0) for f, t in zip(self.feature, self.threshold, strict=True)]

        def child(c: int) -> Node:
            return nodes[c] if c >= 0 else leaves[~c]

        for i, node in enumerate(nodes):
            node.left = child(self.left[i])
            node.right = child(self.right[i])
            node.on_nan = child(self.on_nan[i])
            node.on_zero = child(self.on_zero[i])
        self.roots = [child(r) for r in self.root]

    def raw(self, vector: Sequence[float]) -> float:
        """The model's raw score (log-odds) for the profile's feature vector (the engine's is a
        tuple: compiled code reads a tuple's items directly, another sequence is copied)."""
        forest = self.forest
        if forest is not None:
            walked: float = forest.raw(vector)
            return walked
        values: tuple[Any, ...] = vector if isinstance(vector, tuple) else tuple(vector)
        total = 0.0
        for root in self.roots:
            node = root
            while not node.leaf:
                x: float = values[node.feature]
                if math.isnan(x):
                    node = node.on_nan
                elif -K_ZERO_THRESHOLD <= x <= K_ZERO_THRESHOLD:
                    node = node.on_zero
                elif x <= node.threshold:
                    node = node.left
                else:
                    node = node.right
            total += node.value
        return total

    def contributions(self, vector: Sequence[float]) -> list[float] | None:
        """LightGBM's SHAP values (`pred_contrib`) of the model's inputs for the profile's
        feature vector, then the bias, computed by udfs._treewalk (None without it)."""
        forest = self.forest
        if forest is None or not self.counted:
            return None
        values: list[float] = forest.contributions(vector)
        return values

    def probability(self, vector: Sequence[float]) -> float:
        """What LightGBM's `predict` returns: the sigmoid of the raw score."""
        return 1.0 / (1.0 + math.exp(-self.sigmoid * self.raw(vector)))

    def scorer(self, calibration: Calibration) -> Callable[[Sequence[float]], float]:
        """`calibration.apply(self.probability(vector))` as one callable: with the C walk, the
        sigmoid and the calibration run in C too (one call from the engine, no Python frame in
        between), computed with the same operations in the same order."""
        forest = self.forest
        if forest is not None:
            forest.set_output(
                self.sigmoid,
                CALIBRATION_CODES[calibration.kind],
                calibration.a,
                calibration.b,
                list(calibration.x),
                list(calibration.y),
            )
            score: Callable[[Sequence[float]], float] = forest.score
            return score
        apply = calibration.apply
        probability = self.probability
        return lambda vector: apply(probability(vector))

    def probes(self, width: int) -> list[list[float]]:
        """Rows that take every node's both sides and its missing-value branches: per node, the
        threshold, the next doubles either side, zero, a tiny value and NaN at its input, the
        other inputs 0.0 (a self-check against LightGBM; `width` is the vector's length)."""
        rows: list[list[float]] = []
        for node in range(len(self.feature)):
            t = self.threshold[node]
            for x in (
                t,
                math.nextafter(t, math.inf),
                math.nextafter(t, -math.inf),
                0.0,
                -0.0,
                1e-36,
                math.nan,
                t * 2 + 1,
            ):
                row = [0.0] * width
                row[self.feature[node]] = x
                rows.append(row)
        return rows


class Explainer:
    """A score's reasons, memoised by the exact model input: what `udfs.scoring.Scorer.explain`
    is (see there; compiled, so a row's call costs no interpreted frame).

    `input_key(vector)` gives the memo's key (the model's inputs as the doubles LightGBM reads);
    `reasons(vector, k)`, when given, the k largest contributions by magnitude as flat [input,
    value, ...] or None (the compiled TreeSHAP; None for a NaN contribution); otherwise, and then,
    the `width` values of `contributions(vector)` are sorted here (largest magnitude first, the
    lower input first on ties). Inputs are reported as their indexes in the profile's feature
    vector (`code_index`), values in millionths, rounded half to even. At most `memo` inputs are
    kept, least recently used dropped first (0: none)."""

    def __init__(
        self,
        input_key: Callable[[Sequence[Any]], bytes],
        reasons: Callable[[Sequence[Any], int], list[Any] | None] | None,
        contributions: Callable[[Sequence[Any]], list[float]],
        code_index: list[int],
        width: int,
        k: int,
        memo: int,
    ) -> None:
        self.input_key = input_key
        self.reasons = reasons
        self.contributions = contributions
        self.code_index = code_index
        self.width = width
        self.k = k
        self.memo = memo
        self.explained: OrderedDict[bytes, tuple[int, ...]] = OrderedDict()
        self.calls = 0
        self.memo_hits = 0

    def __call__(self, vector: Sequence[Any]) -> list[int]:
        self.calls += 1
        key = self.input_key(vector)
        explained = self.explained
        known = explained.get(key)
        if known is not None:
            explained.move_to_end(key)
            self.memo_hits += 1
            return list(known)
        reasons = self.reasons
        top: list[Any] | None = reasons(vector, self.k) if reasons is not None else None
        if top is None:
            values = self.contributions(vector)
            top = []
            for i in sorted(range(self.width), key=lambda i: -abs(values[i]))[: self.k]:
                top.append(i)
                top.append(values[i])
        code_index = self.code_index
        out: list[int] = []
        for j in range(0, len(top), 2):
            out.append(code_index[top[j]])
            out.append(round(top[j + 1] * 1e6))
        if self.memo > 0:
            if len(explained) >= self.memo:
                explained.popitem(last=False)
            explained[key] = tuple(out)
        return out
