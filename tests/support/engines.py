"""The job's profile engine as the stream job's operator builds it (a real model's score, explain
and version, a pseudonymiser and the shipped segmentation), for tests that recompute what the job
wrote (`udfs.consistency.recompute`)."""

from __future__ import annotations

from pathlib import Path

from flink_jobs.config import DEFAULT_SEGMENTS_DIR
from udfs.clusters import load_segmentation
from udfs.engine import ProfileEngine
from udfs.params import ProfileParams
from udfs.pseudonym import Pseudonymiser
from udfs.scoring import Scorer


def job_engine(
    scorer: Scorer,
    pseudonymiser: Pseudonymiser,
    params: ProfileParams | None = None,
    segments_dir: Path = DEFAULT_SEGMENTS_DIR,
) -> ProfileEngine:
    """The engine of `flink_jobs.job.functions.UpdateProfile` without its metrics' timers."""
    return ProfileEngine(
        params or ProfileParams(),
        scorer.score,
        scorer.version,
        pseudonymiser,
        explain=scorer.explain,
        segmentation=load_segmentation(segments_dir),
    )
