"""The model registry's pure side: what a published model is, which version a running job should
serve, and the check a model must pass before it scores a row.

The registry itself is a PostgreSQL table (`model_registry`, migration 0006; access in
flink_jobs/io/registry.py). A published model carries its files' content, not a path: a cluster's
workers do not share the publisher's filesystem. Its identity is `sha256`, the SHA-256 of
`model.txt`, a NUL byte, then `metadata.json` (neither text contains NUL), so a version can be
published twice only with the very same content.

Which version serves (`choose`): the newest published version (publish order) that was not
refused, whatever the job started with; a running job switches to it when it differs from what
it serves. A candidate passes `check_scorer` (beyond `udfs.scoring.Scorer`'s own checks of the
feature contract and model.txt against metadata.json) or is refused with the reason.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from udfs.errors import ModelError
from udfs.features import FEATURE_NAMES
from udfs.scoring import Scorer

MODEL_FILE = "model.txt"
METADATA_FILE = "metadata.json"
# Polls that fail (the database unreachable) back off up to this long.
MAX_POLL_BACKOFF_MS = 60_000


class ModelState(enum.StrEnum):
    PENDING = "pending"  # published, no job has switched to it yet
    SERVING = "serving"  # a job scores with it (serving_since: when the first one started)
    REFUSED = "refused"  # a job's check failed (refused_reason); never served
    RETIRED = "retired"  # a newer version started serving (it may never have served itself)


def model_sha256(model_txt: str, metadata_json: str) -> str:
    """The identity of a model's content (see the module docstring)."""
    digest = hashlib.sha256(model_txt.encode("utf-8"))
    digest.update(b"\0")
    digest.update(metadata_json.encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True)
class PublishedModel:
    """A model as the registry holds it: its two files' text and what metadata.json names."""

    name: str
    version: str
    model_txt: str
    metadata_json: str

    @property
    def sha256(self) -> str:
        return model_sha256(self.model_txt, self.metadata_json)

    @classmethod
    def from_texts(cls, model_txt: str, metadata_json: str, where: str) -> PublishedModel:
        """Check the structure a model needs before it can be published (the feature contract is
        the running job's to check: it is the code that computes the features)."""
        try:
            meta = json.loads(metadata_json)
        except ValueError as exc:
            raise ModelError(f"{where}/{METADATA_FILE} is not JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise ModelError(f"{where}/{METADATA_FILE} is not a JSON object")
        missing = [k for k in ("name", "version", "feature_names") if not meta.get(k)]
        if missing:
            raise ModelError(
                f"{where}/{METADATA_FILE} lacks {', '.join(missing)}: a model directory is what "
                "`profilestream train` writes"
            )
        version = meta["version"]
        if not isinstance(version, str) or not version.strip() or len(version) > 200:
            raise ModelError(
                f"{where}/{METADATA_FILE}: version {version!r} must be a non-empty string "
                "(at most 200 characters)"
            )
        if not isinstance(meta["feature_names"], list):
            raise ModelError(f"{where}/{METADATA_FILE}: feature_names must be a list")
        if not model_txt.startswith("tree\n"):
            raise ModelError(
                f"{where}/{MODEL_FILE} is not a LightGBM model in text format (it starts with "
                f"{model_txt[:20]!r}, not 'tree')"
            )
        if "\0" in model_txt or "\0" in metadata_json:
            raise ModelError(f"{where}: model files must not contain NUL bytes")
        return cls(str(meta["name"]), version, model_txt, metadata_json)

    @classmethod
    def from_dir(cls, directory: Path) -> PublishedModel:
        """The model in `directory` (model.txt and metadata.json), checked as `from_texts`."""
        if not directory.is_dir():
            raise ModelError(f"{directory} is not a directory: give a model directory")
        texts = []
        for name in (MODEL_FILE, METADATA_FILE):
            path = directory / name
            if not path.is_file():
                raise ModelError(
                    f"{directory} has no {name}: a model directory holds model.txt and "
                    "metadata.json (what `profilestream train` writes)"
                )
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelError(f"cannot read {path}: {exc}") from None
        return cls.from_texts(texts[0], texts[1], str(directory))

    def write(self, directory: Path) -> Path:
        """Materialise the model's files in `directory` (created); returns it."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MODEL_FILE).write_text(self.model_txt, encoding="utf-8")
        (directory / METADATA_FILE).write_text(self.metadata_json, encoding="utf-8")
        return directory


@dataclass(frozen=True)
class RegistryEntry:
    """One row of `model_registry` without the model's files (what a poll and `model list`
    read). Times are timezone-aware; None when not (yet) set."""

    version: str
    seq: int  # publish order: the newest usable one serves
    name: str
    sha256: str
    state: ModelState
    refused_reason: str | None = None
    published_at: datetime | None = None
    serving_since: datetime | None = None  # when a job first scored with it
    retired_at: datetime | None = None


def choose(
    entries: Sequence[RegistryEntry], serving_sha256: str, skip: frozenset[str] = frozenset()
) -> RegistryEntry | None:
    """The version a job serving the model `serving_sha256` should switch to, or None to keep
    it: the newest entry not refused (and whose sha256 is not in `skip`, the ones this job
    already refused), when its content differs from what the job serves."""
    usable = [e for e in entries if e.state is not ModelState.REFUSED and e.sha256 not in skip]
    if not usable:
        return None
    newest = max(usable, key=lambda e: e.seq)
    return None if newest.sha256 == serving_sha256 else newest


def next_poll_ms(now_ms: int, interval_ms: int, failures: int) -> int:
    """When to poll next: after `interval_ms`, doubled for each consecutive failed poll up to
    MAX_POLL_BACKOFF_MS (never shorter than the interval)."""
    backoff: int = interval_ms * 2 ** min(failures, 16)
    return now_ms + max(interval_ms, min(backoff, MAX_POLL_BACKOFF_MS))


# Feature vectors a candidate model is probed with: every feature missing, all zeros, all ones.
PROBES: tuple[tuple[float, ...], ...] = (
    tuple(math.nan for _ in FEATURE_NAMES),
    tuple(0.0 for _ in FEATURE_NAMES),
    tuple(1.0 for _ in FEATURE_NAMES),
)


def check_scorer(scorer: Scorer) -> None:
    """What a model must do before it serves, beyond loading: score the probe vectors to a
    finite probability in [0, 1] and explain them with finite contributions (ModelError, the
    reason, otherwise)."""
    for vector in PROBES:
        try:
            score = scorer.score(vector)
            contributions = scorer.contributions(vector)
        except ModelError:
            raise
        except Exception as exc:  # a broken calibration or model raising on a row
            raise ModelError(f"scoring a probe row raised {type(exc).__name__}: {exc}") from None
        if not (isinstance(score, float) and math.isfinite(score) and 0.0 <= score <= 1.0):
            raise ModelError(
                f"model {scorer.version} scores a probe row {score!r}, not a probability in "
                "[0, 1]: check its objective and calibration"
            )
        if not all(math.isfinite(c) for c in contributions):
            raise ModelError(f"model {scorer.version} explains a probe row with non-finite values")


def load_checked(model: PublishedModel, directory: Path) -> Scorer:
    """A Scorer for `model` (its files materialised in `directory`, which the caller removes
    afterwards: the Scorer does not read them again), checked against this code's feature
    contract and `check_scorer`. ModelError (the reason to refuse it) otherwise."""
    try:
        scorer = Scorer(model.write(directory))
    except ModelError as exc:
        # The reason is about the registry's copy, not the temporary directory.
        message = exc.message.replace(f" at {directory}", "").replace(f"{directory}/", "")
        raise ModelError(message.replace(str(directory), "the registry's copy")) from None
    try:
        check_scorer(scorer)
    except BaseException:
        scorer.close()
        raise
    return scorer
