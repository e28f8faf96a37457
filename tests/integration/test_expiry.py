"""Inactivity on the real job: event-time timers mark users at risk, and after 90 silent days
delete their state and mark the PostgreSQL row expired (not deleted).

That the state is really gone is shown by the state itself: after the expiry, an event *older*
than the expiry time arrives for that user. Had the state survived, the event would have been
folded into it (same epoch, one more event); on deleted state it starts a new profile.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg2
import pytest

from flink_jobs.io.producer import EventPublisher, ensure_topic
from flink_jobs.job.run import preflight, run_job
from tests.support.e2e import job_config
from udfs import events as ev
from udfs.events import make_message
from udfs.params import DAY_MS

pytestmark = [pytest.mark.flink, pytest.mark.integration]

T0 = 1_735_689_600_000  # 2025-01-01


def view(user: str, t: int, n: int) -> object:
    return make_message(
        event_id=f"{user}-{t}-{n}",
        user_id=user,
        event_type=ev.VIEW,
        event_time_ms=t,
        item_id=f"item{n}",
        category_id="c1",
    )


def row(dsn: str, user: str) -> dict[str, object] | None:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT profile_epoch_ms, profile_version, event_count, expired, segment "
            "FROM user_profiles WHERE user_id = %s",
            (user,),
        )
        found = cur.fetchone()
    conn.close()
    if found is None:
        return None
    keys = ("epoch", "version", "events", "expired", "segment")
    return dict(zip(keys, found, strict=True))


def test_silent_user_expires_and_its_state_is_deleted(
    kafka: str, pg_dsn: str, tmp_path: Path
) -> None:
    topic = "expiry-events"
    ensure_topic(kafka, topic, partitions=2)
    with EventPublisher(kafka, topic) as pub:
        for n in range(3):
            pub.publish(view("gone", T0 + n * 1000, n))  # then silent for 100 days
        pub.publish(view("quiet", T0 + 80 * DAY_MS, 0))  # silent for 20 days: at risk
        for u in range(12):  # event time moves on in both partitions
            pub.publish(view(f"filler{u}", T0 + 100 * DAY_MS + u, 0))

    phase = {"n": 1, "deadline": time.monotonic() + 150}
    seen: dict[str, object] = {}

    def tick() -> None:
        if phase["n"] == 1:
            gone = row(pg_dsn, "gone")
            if gone and gone["expired"]:
                seen["expired_row"] = gone
                with EventPublisher(kafka, topic) as pub:  # older than the expiry time
                    pub.publish(view("gone", T0 + DAY_MS, 99))
                phase["n"] = 2
        elif phase["n"] == 2:
            gone = row(pg_dsn, "gone")
            if gone and not gone["expired"]:
                seen["new_row"] = gone
                phase["n"] = 3

    config = job_config(kafka, pg_dsn, topic, tmp_path, idleness_ms=1000)
    result = run_job(
        config,
        preflight(config),
        on_tick=tick,
        stop_when=lambda: phase["n"] == 3 or time.monotonic() > phase["deadline"],
    )
    assert result.status == "CANCELED"
    assert phase["n"] == 3, f"stopped in phase {phase['n']}: {seen}"

    expired = seen["expired_row"]
    assert expired == {
        "epoch": T0,
        "version": 6,
        "events": 3,
        "expired": True,
        "segment": "dormant",
    }  # 3 events, at risk, dormant, expired
    assert seen["new_row"] == {
        "epoch": T0 + DAY_MS,
        "version": 1,
        "events": 1,
        "expired": False,
        "segment": "new",
    }
    quiet = row(pg_dsn, "quiet")
    assert quiet is not None and quiet["segment"] == "at_risk" and not quiet["expired"]
