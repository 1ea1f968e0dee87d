"""`botwatch demo` (`make demo`) with the shipped `demo` conf, end to end on a temp warehouse."""
from __future__ import annotations

import json

import pytest
from pyspark.sql import functions as F

from botwatch import nightly, steps
from botwatch import tables as t
from botwatch.delta_io import read_table


# Whole runs on a simulated platform; the default 900 s also counts the fixtures' setup.
@pytest.mark.timeout(1800)
def test_demo_simulates_runs_every_day_and_scores_its_last_day(spark, conf, tmp_path):
    """``botwatch demo`` with the shipped ``demo`` conf: every day validated, every day's activity
    partial built, a champion promoted, the last day run whole (scores for every account,
    scores_latest, the report)."""
    from botwatch.demo import demo_conf, report_path, run_demo

    wh = str(tmp_path / "demo_wh")
    dconf = demo_conf(conf.with_overrides([f"warehouse={wh}"]))
    lines: list[str] = []
    out = run_demo(spark, dconf, echo=lines.append)

    days, last = dconf["demo.days"], out["last_day"]
    assert len(out["statuses"]) == days
    assert all(s["validate"] == "ok" for s in out["statuses"].values())
    # Every day's activity partial was built (by the features steps, a run of days per job).
    partial_days = {r[0] for r in read_table(spark, wh, t.ACTIVITY_DAILY).select(t.DAY).distinct().collect()}
    assert partial_days == set(out["statuses"])
    assert out["statuses"][last] == {s: "ok" for s in steps.RUN_ORDER}, out["statuses"][last]
    assert out["headline"]["champion"] is not None
    # The heavy model trained on the last day was promoted and taught stage 1 from the scores it
    # computed in process (its inputs are not gathered in Spark a second time).
    train_log = json.loads(nightly.log_rows(spark, wh, last)["train"]["summary"])
    assert train_log["heavy_promoted"], train_log
    assert train_log["distilled_from"] == f"stage2_heavy:{train_log['heavy_version']}"
    assert train_log["teacher_scores"] == "in process"
    n = dconf["demo.accounts"]
    assert read_table(spark, wh, t.SCORES).where(F.col(t.RUN_DATE) == last).count() == n
    assert read_table(spark, wh, t.SCORES_LATEST).count() == n
    report = report_path(wh, last)
    assert any(report in line for line in lines)
    with open(report) as fh:
        assert "<img" in fh.read()


def test_a_demo_into_another_platforms_warehouse_exits_2_with_the_message(monkeypatch, tmp_path):
    """As `botwatch simulate` does (the README: refused, exit 2), not a traceback and exit 1."""
    from typer.testing import CliRunner

    import botwatch.demo
    import botwatch.spark
    from botwatch.cli import app
    from botwatch.simulate.platform import WarehouseInUseError

    def refused(spark, cfg, echo=print):
        raise WarehouseInUseError("the warehouse holds another platform's tables")

    monkeypatch.setattr(botwatch.spark, "get_spark", lambda *a, **k: None)
    monkeypatch.setattr(botwatch.demo, "run_demo", refused)
    result = CliRunner().invoke(app, ["demo", "--warehouse", str(tmp_path)])
    assert result.exit_code == 2 and "another platform's tables" in result.output, result.output


def test_the_users_sets_win_over_the_demos_own(monkeypatch, tmp_path):
    """`botwatch demo --set simulate.prevalence=0.2` simulates 20 % bots (the demo's 0.08 replaced it)."""
    from typer.testing import CliRunner

    import botwatch.demo
    import botwatch.spark
    from botwatch.cli import app

    seen = []
    monkeypatch.setattr(botwatch.spark, "get_spark", lambda *a, **k: None)
    monkeypatch.setattr(botwatch.demo, "run_demo", lambda spark, cfg, echo=print: seen.append(cfg))
    result = CliRunner().invoke(app, ["demo", "--warehouse", str(tmp_path), "--set", "simulate.prevalence=0.2",
                                      "--set", "demo.min_train_rows=7"])
    assert result.exit_code == 0, result.output
    (cfg,) = seen
    assert cfg["simulate.prevalence"] == 0.2
    assert cfg["train.min_train_rows"] == 7  # the demo's knob, set by the user, still reaches train
    assert cfg["simulate.labels.investigator_per_week_per_100k"] == cfg["demo.investigator_per_week_per_100k"]
