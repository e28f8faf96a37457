"""The Grafana dashboard (docker/grafana/dashboards/profilestream.json) queries only metric names
the metrics test saw on a running cluster (docker/grafana/metric-names.txt, which
tests/integration/test_cluster.py checks against the live endpoints), and has a panel for each
of the job's metrics (udfs.metrics), Kafka consumer lag and checkpoint duration and age."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from flink_jobs.config import PROJECT_ROOT
from tests.support.prometheus import read_metric_names
from udfs.metrics import EXPORTED_NAMES

GRAFANA = PROJECT_ROOT / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "profilestream.json"
VERIFIED = read_metric_names(GRAFANA / "metric-names.txt")

# PromQL words that are not metric names: functions, aggregations, keywords.
PROMQL_WORDS = frozenset(
    """abs absent absent_over_time avg avg_over_time bool bottomk by ceil changes clamp clamp_max
    clamp_min count count_over_time count_values day_of_month day_of_week delta deriv exp floor
    group group_left group_right histogram_quantile holt_winters idelta ignoring increase irate
    label_join label_replace last_over_time ln log10 log2 max max_over_time min min_over_time
    offset on or and unless predict_linear quantile quantile_over_time rate resets round scalar
    sgn sort sort_desc sqrt stddev stddev_over_time stdvar sum sum_over_time time timestamp topk
    vector without""".split()  # noqa: SIM905 (a word list reads better as text)
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: its identifiers once label matchers, label
    lists (by/without/on/ignoring), range and offset durations, strings and numbers are removed,
    minus PromQL's own words."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\boffset\s+\w+", "", text)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d\w*", w)}


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'sum by (reason) (rate(a_b{job_name=~"$job", x="y z"}[5m])) / ignoring(le) '
        "max(c) > 0 and on(job_id) time() - d offset 5m"
    )
    assert metric_names(expr) == {"a_b", "c", "d"}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panels() -> list[dict[str, Any]]:
    found = []
    pending = list(dashboard()["panels"])
    while pending:
        panel = pending.pop(0)
        pending += panel.get("panels", [])  # rows may nest panels
        if panel.get("type") != "row":
            found.append(panel)
    return found


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard, template variables included."""
    out = [(p["title"], t["expr"]) for p in panels() for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            # Grafana's label_values(metric, label): the label is not a metric.
            query = re.sub(r"label_values\((.*),\s*\w+\)", r"\1", variable["query"]["query"])
            out.append((f"${variable['name']}", query))
    return out


def test_every_name_the_dashboard_queries_was_seen_on_a_running_cluster() -> None:
    used = {name for _, expr in queries() for name in metric_names(expr)}
    assert used, "no metric names found in the dashboard"
    assert sorted(used - VERIFIED) == [], "not in docker/grafana/metric-names.txt"


def test_the_verified_names_include_every_metric_the_job_exports() -> None:
    assert sorted(set(EXPORTED_NAMES) - VERIFIED) == []


@pytest.mark.parametrize("name", EXPORTED_NAMES)
def test_each_job_metric_has_a_panel(name: str) -> None:
    assert any(name in metric_names(expr) for _, expr in queries())


@pytest.mark.parametrize(
    ("title", "names"),
    [
        ("Kafka consumer lag", {"flink_taskmanager_job_task_operator_pendingRecords"}),
        ("Checkpoint duration", {"flink_jobmanager_job_lastCheckpointDuration"}),
        ("Checkpoint age", {"flink_jobmanager_job_lastCheckpointCompletedTimestamp"}),
    ],
)
def test_kafka_lag_and_checkpoint_panels(title: str, names: set[str]) -> None:
    exprs = [expr for panel_title, expr in queries() if panel_title == title]
    assert exprs and names <= set().union(*map(metric_names, exprs))


def test_panels_use_the_datasource_variable_and_have_unique_ids() -> None:
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
