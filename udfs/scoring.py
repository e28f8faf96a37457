"""Purchase-propensity scoring with a LightGBM model directory and its feature contract.

A model directory holds `model.txt` (LightGBM's native text format) and `metadata.json`
(`name`, `version`, `feature_names` in order, provenance, metrics). `load_model` checks that the
metadata, the booster and the code (`udfs.features.FEATURE_NAMES`) agree, and fails with one line
naming the mismatch otherwise.

Single-row scoring goes through LightGBM's own C API (`LGBM_BoosterPredictForMatSingleRowFast`
with a FastConfig made once), which returns exactly what `Booster.predict` returns at a fraction of
its per-call overhead.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udfs.features import FEATURE_NAMES

_C_API_DTYPE_FLOAT64 = 1
_C_API_PREDICT_NORMAL = 0


class ModelError(RuntimeError):
    """The model directory is missing, unreadable, or breaks the feature contract."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    feature_names: tuple[str, ...]
    path: Path
    metadata: dict[str, Any]


def read_metadata(model_dir: Path) -> ModelInfo:
    meta_path = model_dir / "metadata.json"
    if not (model_dir / "model.txt").is_file() or not meta_path.is_file():
        raise ModelError(
            f"no model at {model_dir} (needs model.txt and metadata.json): set --model-dir / "
            "PROFILESTREAM_MODEL_DIR to a model directory such as "
            "models/purchase_propensity/bootstrap-v1"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return ModelInfo(
            name=str(meta["name"]),
            version=str(meta["version"]),
            feature_names=tuple(meta["feature_names"]),
            path=model_dir,
            metadata=meta,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{meta_path} is not valid model metadata: {exc!r}") from None


class Scorer:
    """A loaded model. Not thread-safe: make one per operator instance (Flink's `open()`)."""

    def __init__(self, model_dir: Path | str, expected_features: Sequence[str] = FEATURE_NAMES):
        import lightgbm as lgb
        from lightgbm.basic import _LIB, _safe_call  # type: ignore[attr-defined]

        self.info = read_metadata(Path(model_dir))
        expected = tuple(expected_features)
        if self.info.feature_names != expected:
            raise ModelError(
                f"model {self.info.version} at {model_dir} was trained on features "
                f"{list(self.info.feature_names)} but this code computes {list(expected)}: "
                "retrain the model or point --model-dir at one built for this code"
            )
        try:
            self.booster = lgb.Booster(model_file=str(Path(model_dir) / "model.txt"))
        except lgb.basic.LightGBMError as exc:
            raise ModelError(f"cannot load {model_dir}/model.txt: {exc}") from None
        if tuple(self.booster.feature_name()) != expected:
            raise ModelError(
                f"{model_dir}/model.txt names features {self.booster.feature_name()}, "
                f"metadata.json names {list(expected)}: the directory is inconsistent"
            )
        self.version = self.info.version
        self._n = len(expected)
        self._lib = _LIB
        self._safe_call = _safe_call
        self._fast = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                self.booster._handle,
                ctypes.c_int(_C_API_PREDICT_NORMAL),
                ctypes.c_int(0),  # start_iteration
                ctypes.c_int(-1),  # all iterations
                ctypes.c_int(_C_API_DTYPE_FLOAT64),
                ctypes.c_int32(self._n),
                ctypes.c_char_p(b""),
                ctypes.byref(self._fast),
            )
        )
        self._row = (ctypes.c_double * self._n)()
        self._out_len = ctypes.c_int64()
        self._out = ctypes.c_double()
        self._predict = _LIB.LGBM_BoosterPredictForMatSingleRowFast
        self._row_ref = ctypes.byref(self._row)
        self._out_len_ref = ctypes.byref(self._out_len)
        self._out_ref = ctypes.byref(self._out)

    def score(self, features: Sequence[float]) -> float:
        """Probability for one feature row (bit-identical to `Booster.predict`)."""
        self._row[:] = features  # type: ignore[call-overload]
        ret = self._predict(self._fast, self._row_ref, self._out_len_ref, self._out_ref)
        if ret != 0:
            self._safe_call(ret)
        return self._out.value

    def close(self) -> None:
        if self._fast:
            self._lib.LGBM_FastConfigFree(self._fast)
            self._fast = ctypes.c_void_p()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
