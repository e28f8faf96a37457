"""The command line as a user runs it, against real services: mistakes only a running broker or
database reveals give one actionable line and a non-zero exit within 30 s (no Java stack trace,
no hang), `produce` reports bad CSV rows and keeps going, and `profilestream demo` prints its
summary (on the embedded services and on external ones). The mistakes that need no service are
in tests/unit/test_cli.py."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.support.cli import CLI, assert_one_line_error, run_cli


@pytest.mark.integration
def test_unreachable_broker(pg_dsn: str) -> None:
    started = time.monotonic()
    proc = run_cli("run", "--bootstrap", "127.0.0.1:1", "--pg-dsn", pg_dsn)
    assert_one_line_error(proc, "KAFKA_BOOTSTRAP=127.0.0.1:1", "cannot reach Kafka")
    assert time.monotonic() - started < 30


@pytest.mark.integration
def test_wrong_topic(kafka: str, pg_dsn: str) -> None:
    proc = run_cli("run", "--bootstrap", kafka, "--pg-dsn", pg_dsn, "--topic", "no-such-topic")
    assert_one_line_error(proc, "topic 'no-such-topic' does not exist", "--topic")


@pytest.mark.integration
def test_unmigrated_database(kafka: str, pg_server) -> None:  # type: ignore[no-untyped-def]
    subprocess.run(
        [
            CLI,
            "produce",
            "--bootstrap",
            kafka,
            "--topic",
            "t-unmigrated",
            "--events",
            "10",
            "--users",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    proc = run_cli(
        "run",
        "--bootstrap",
        kafka,
        "--pg-dsn",
        pg_server.dsn("postgres"),
        "--topic",
        "t-unmigrated",
    )
    assert_one_line_error(proc, "schema version 0", "profilestream db migrate")


@pytest.fixture
def demo_state(tmp_path: Path) -> Iterator[Path]:
    """The demo's state directory; the embedded PostgreSQL it leaves running (for psql, by
    design) is stopped afterwards, also when the test fails or the run is interrupted."""
    yield tmp_path
    run_cli("services", "stop", env={"PROFILESTREAM_STATE_DIR": str(tmp_path)})


@pytest.mark.integration
@pytest.mark.flink
def test_demo_prints_summary_with_profiles(demo_state: Path) -> None:
    tmp_path = demo_state
    proc = run_cli(
        "demo",
        "--events",
        "3000",
        "--users",
        "200",
        env={"PROFILESTREAM_STATE_DIR": str(tmp_path), "PROFILESTREAM_PSEUDONYM_KEY": ""},
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    key_file = tmp_path / "demo" / "pseudonym.key"
    assert f"pseudonym key: {key_file} (generated" in out
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert re.search(r"events read\s+3,000 \(of 3,000 produced\)", out), out
    assert re.search(r"profiles written\s+200\b", out), out
    assert re.search(r"dead letters\s+0\b", out), out
    assert "ten highest-scoring users" in out and "taobao-v2" in out
    dsn = re.search(r"(postgresql://\S+)", out.split("Open the database")[1])
    assert dsn is not None
    conn = psycopg2.connect(dsn.group(1))
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), sum(event_count) FROM user_profiles")
        assert cur.fetchone() == (200, 3000)
        # every profile has a learned segment of the default segmentation, and the summary line
        # names the clusters with their sizes as PostgreSQL counts them
        cur.execute(
            "SELECT cluster_version, count(*) FROM user_profiles WHERE NOT expired GROUP BY 1"
        )
        assert cur.fetchall() == [("taobao-s1", 200)]
        cur.execute(
            "SELECT cluster_id, cluster_name, profiles FROM bi_cluster_sizes WHERE profiles > 0 "
            "ORDER BY profiles DESC, cluster_id"
        )
        expected = "; ".join(f"{cid} {name}: {n:,}" for cid, name, n in cur.fetchall())
    conn.close()
    assert f"learned segments     {expected}" in out, out
    stop = run_cli("services", "stop", env={"PROFILESTREAM_STATE_DIR": str(tmp_path)})
    assert "stopped" in stop.stdout


@pytest.mark.integration
@pytest.mark.flink
def test_demo_uses_external_services_when_given(kafka: str, pg_dsn: str, tmp_path: Path) -> None:
    proc = run_cli(
        "demo",
        "--events",
        "1500",
        "--users",
        "100",
        env={"PG_DSN": pg_dsn, "KAFKA_BOOTSTRAP": kafka, "PROFILESTREAM_STATE_DIR": str(tmp_path)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"PostgreSQL: external, PG_DSN={pg_dsn}" in proc.stdout
    assert f"Kafka: external, KAFKA_BOOTSTRAP={kafka}, fresh topic profilestream-demo-" in (
        proc.stdout
    )
    assert not (tmp_path / "demo" / "pgdata").exists()  # no embedded server was started
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), sum(event_count) FROM user_profiles")
        assert cur.fetchone() == (100, 1500)
    conn.close()


@pytest.mark.integration
def test_pseudonym_key_that_does_not_match_the_database(kafka: str, pg_dsn: str) -> None:
    from flink_jobs.io import db
    from flink_jobs.io.producer import ensure_topic
    from udfs.pseudonym import Pseudonymiser

    ensure_topic(kafka, "t-keys", 1)
    db.check_pseudonym_key(pg_dsn, Pseudonymiser(b"the-first-key-" + b"0" * 20).key_id)
    proc = run_cli(
        "run",
        "--bootstrap",
        kafka,
        "--pg-dsn",
        pg_dsn,
        "--topic",
        "t-keys",
        env={"PG_DSN": pg_dsn},
        timeout=30,
    )
    assert_one_line_error(
        proc, "not the one the database's pseudonyms were made with", "rotate-pseudonyms"
    )


@pytest.mark.integration
def test_produce_reports_bad_csv_rows_by_line_and_keeps_going(kafka: str, tmp_path: Path) -> None:
    csv = tmp_path / "taobao.csv"
    csv.write_text(
        "1,10,100,pv,1511658000\n"  # line 1: fine
        "1,11,100\n"  # line 2: too few columns
        "2,12,100,teleport,1511658001\n"  # line 3: unknown behaviour
        "2,13,100,pv,not-a-time\n"  # line 4: bad timestamp
        "3,14,100,buy,631152000\n"  # line 5: 1990, breaks the contract
        "3,15,100,cart,1511658002\n"  # line 6: fine
    )
    proc = run_cli(
        "produce",
        "--bootstrap",
        kafka,
        "--topic",
        "t-csv",
        "--format",
        "taobao",
        "--file",
        str(csv),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in (2, 3, 4, 5):
        assert f"skipped line {line}:" in proc.stderr, proc.stderr
    assert "line 1:" not in proc.stderr and "line 6:" not in proc.stderr
    assert "event_time_out_of_range" in proc.stderr
    assert "delivered 2 events to t-csv" in proc.stdout
    assert "1 invalid refused, 4 rows skipped" in proc.stdout


@pytest.mark.integration
def test_produce_counts_an_oversize_message_as_refused_and_goes_on(
    kafka: str, tmp_path: Path
) -> None:
    from flink_jobs.io.producer import read_topic
    from udfs import events as ev
    from udfs.events import make_message
    from udfs.sources import write_delimited

    def message(n: int, query: str = "shoes") -> bytes:
        return make_message(
            event_id=f"e{n}",
            user_id="u1",
            event_type=ev.SEARCH,
            event_time_ms=1_700_000_000_000 + n,
            search_query=query,
        ).SerializeToString()

    huge = message(2, "x" * 1_200_000)  # over librdkafka's default message.max.bytes (1 MB)
    log = tmp_path / "events.bin"
    write_delimited(log, [message(1), huge, message(3)])
    topic = "t-oversize"
    proc = run_cli(
        "produce", "--bootstrap", kafka, "--topic", topic, "--format", "proto", "--file", str(log),
        "--partitions", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "delivered 2 events" in proc.stdout
    assert "1 refused by Kafka: 1 MSG_SIZE_TOO_LARGE" in proc.stdout
    assert "message.max.bytes=1000000" in proc.stderr  # the reason names the limit
    sent = [value for _, _, value in read_topic(kafka, topic, {0: 2})]
    assert sent == [message(1), message(3)]
