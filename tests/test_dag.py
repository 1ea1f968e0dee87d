"""The Airflow DAG on a real Airflow: it loads with no import errors, its task graph and settings
are as designed, templates render to the logical date, and ``dag.test()`` (SQLite metadata DB
migrated in a temporary AIRFLOW_HOME) runs every step through spark-submit on a tiny platform,
after which the tables hold the run.

Airflow runs in subprocesses: its settings are read at import from AIRFLOW_HOME, which must be
the test's own folder (never the user's ~/airflow).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from tests.helpers import DAG_WAIT_TIMEOUT_S, JAVA_OPTIONS, ROOT, airflow_env, run_py

from botwatch import nightly
from botwatch import tables as t
from botwatch.delta_io import read_table

# Conf overrides as an operator types them: braces (a Spark class path) and a space reach the job as typed.
SETS = ["spark.extra_conf.spark.executor.extraClassPath={{PWD}}/x.jar", "train.golden_salt=golden v2"]
# ... and the driver's Java options too (spark-submit's conf is templated as well).
DRIVER_OPTIONS = f"{JAVA_OPTIONS} -Dlog4j2.configurationFile={{{{PWD}}}}/log4j2.xml"
EXPECTED_ORDER = ["validate", "activity", "features", "train", "score_stage1", "score_stage2", "publish", "monitor"]


INSPECT = r"""
import json
import sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="airflow_dags")
dag = bag.dags.get("botwatch_nightly")
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dag_ids),
       "heavy_imports": sorted(m for m in ("pyspark", "torch", "xgboost", "botwatch", "pandas") if m in sys.modules)}
if dag is not None:
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    # The first two runs the scheduler would create (the timetable as the scheduler sees it).
    timetable = coerce_to_core_timetable(dag.timetable)
    runs, last = [], None
    restriction = TimeRestriction(earliest=dag.start_date, latest=None, catchup=True)
    for _ in range(2):
        info = timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        runs.append({"logical_date": info.logical_date.isoformat(), "run_after": info.run_after.isoformat()})
        last = info.data_interval
    out.update({
        "runs": runs, "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
        "start_date": dag.start_date.isoformat(),
        "tasks": {
            task.task_id: {
                "upstream": sorted(task.upstream_task_ids), "downstream": sorted(task.downstream_task_ids),
                "pool": task.pool, "retries": task.retries, "backoff": task.retry_exponential_backoff,
                "retry_delay_s": task.retry_delay.total_seconds(), "depends_on_past": task.depends_on_past,
                "type": type(task).__name__, "conn_id": task._conn_id, "application": task.application,
                "conf": task.conf,
            }
            for task in dag.tasks
        },
    })
    rendered = {}
    for ds in ("2026-01-12", "2026-02-01"):
        task = dag.get_task("score_stage2")
        ctx = {"ds": ds, "ds_nodash": ds.replace("-", "")}
        rendered[ds] = {
            "args": task.render_template(task.application_args, ctx),
            "name": task.render_template(task.name, ctx),
            "conf": task.render_template(task.conf, ctx),
        }
    out["rendered"] = rendered
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("airflow_home")


@pytest.fixture(scope="module")
def inspected(airflow_home) -> dict:
    """The DAG as a fresh Airflow parses it (one interpreter for the structure and template tests), with
    a relative warehouse and conf overrides that hold braces and spaces."""
    env = airflow_env(airflow_home, warehouse="/tmp/bw-warehouse", sets=";".join(SETS))
    env["BOTWATCH_WAREHOUSE"] = "bw-warehouse"
    env["BOTWATCH_DRIVER_JAVA_OPTIONS"] = DRIVER_OPTIONS
    return run_py(INSPECT, env, timeout=300)


def test_dagbag_loads_and_graph_is_as_designed(inspected):
    got = inspected
    assert got["import_errors"] == {}
    assert got["dag_ids"] == ["botwatch_nightly"]
    assert got["heavy_imports"] == []  # parsing the DAG file stays cheap for the scheduler
    # Daily, and the run for day D starts once D has ended: {{ ds }} is a finished day, never the one just begun.
    assert got["runs"] == [
        {"logical_date": "2026-01-05T00:00:00+00:00", "run_after": "2026-01-06T00:00:00+00:00"},
        {"logical_date": "2026-01-06T00:00:00+00:00", "run_after": "2026-01-07T00:00:00+00:00"},
    ]
    assert got["catchup"] is True
    assert got["max_active_runs"] == 1
    assert got["start_date"].startswith("2026-01-05")
    tasks = got["tasks"]
    assert sorted(tasks) == sorted(EXPECTED_ORDER)
    # A straight chain in the run's order.
    for before, after in zip(EXPECTED_ORDER, EXPECTED_ORDER[1:], strict=False):
        assert tasks[before]["downstream"] == [after]
        assert tasks[after]["upstream"] == [before]
    assert tasks["validate"]["upstream"] == [] and tasks["monitor"]["downstream"] == []
    for task_id, task in tasks.items():
        assert task["type"] == "SparkSubmitOperator"
        assert task["conn_id"] == "spark_default"
        assert task["application"] == str(ROOT / "jobs" / f"{task_id}.py")
        assert task["retries"] == 2 and task["backoff"] is True
        # A retry comes after a killed attempt's lock has expired (run.lock_stale_hours, 9 min).
        assert task["retry_delay_s"] > 0.15 * 3600
        assert task["depends_on_past"] is True  # a failed night stops the next one's step
        assert task["pool"] == ("gpu" if task_id == "score_stage2" else "default_pool")
        assert list(task["conf"]) == ["spark.driver.extraJavaOptions"]
    # Every job file the DAG names exists and goes through the nightly runner.
    for task_id in EXPECTED_ORDER:
        assert f'run_date_step("{task_id}"' in (ROOT / "jobs" / f"{task_id}.py").read_text()


def test_templates_render_to_the_logical_date(inspected):
    got = inspected
    for ds in ("2026-01-12", "2026-02-01"):
        args = got["rendered"][ds]["args"]
        assert args[args.index("--date") + 1] == ds
        assert args[args.index("--warehouse") + 1] == str(ROOT / "bw-warehouse")  # the project's, not the cwd's
        assert [args[i + 1] for i, a in enumerate(args) if a == "--set"] == SETS
        assert got["rendered"][ds]["name"] == f"botwatch-score_stage2-{ds}"
        assert got["rendered"][ds]["conf"] == {"spark.driver.extraJavaOptions": DRIVER_OPTIONS}


def test_the_documented_backfill_runs_one_date_at_a_time(tmp_path):
    """Airflow 3's backfill ignores the DAG's max_active_runs (10 runs at once by default): D+1's train
    would read the drift alert before D's monitor wrote it. The command given says --max-active-runs 1,
    a flag the installed Airflow's `backfill create` has."""
    code = ("import json\nfrom airflow.cli.cli_config import BACKFILL_COMMANDS\n"
            "print(json.dumps({c.name: [f for a in c.args for f in a.flags] for c in BACKFILL_COMMANDS}))")
    flags = run_py(code, airflow_env(tmp_path), timeout=300)
    assert "--max-active-runs" in flags["create"]
    readme = (ROOT / "README.md").read_text()
    assert "airflow backfill create --dag-id botwatch_nightly --from-date D1 --to-date D2 --max-active-runs 1" in readme
    assert "--max-active-runs 1" in (ROOT / "airflow_dags" / "botwatch_nightly.py").read_text()


# Waits for the whole run (and, run alone, the platform); the default 900 s also counts fixtures' setup.
@pytest.mark.timeout(DAG_WAIT_TIMEOUT_S)
def test_dag_test_runs_the_whole_dag(spark, dag_run):
    """``dag.test()`` on a real Airflow (the ``dag_run`` fixture): every task a spark-submit of its
    job, on the shared platform's last date; afterwards the run log and the tables hold the run."""
    conf, run_date, got = dag_run
    warehouse = conf["warehouse"]
    assert got["tis"] == {s: "success" for s in EXPECTED_ORDER}, got["failed_output"]
    assert got["state"] == "success", got

    logged = nightly.log_rows(spark, warehouse, run_date)
    assert {s: logged[s]["status"] for s in EXPECTED_ORDER} == {s: "ok" for s in EXPECTED_ORDER}
    n_accounts = read_table(spark, warehouse, t.FEATURES).where(F.col(t.RUN_DATE) == run_date).count()
    scores = read_table(spark, warehouse, t.SCORES).where(F.col(t.RUN_DATE) == run_date)
    assert scores.count() == n_accounts > 0
    assert scores.select(t.ACCOUNT_ID).distinct().count() == n_accounts
    latest = read_table(spark, warehouse, t.SCORES_LATEST)
    assert latest.where(F.col(t.RUN_DATE) == run_date).count() == n_accounts
    # Each step's commits name the step and the date (DESCRIBE HISTORY as a run log).
    history = spark.sql(f"DESCRIBE HISTORY delta.`{t.table_path(warehouse, t.SCORES)}`").collect()
    meta = [json.loads(h["userMetadata"]) for h in history if h["userMetadata"]]
    assert {"run_date": run_date.isoformat(), "step": "score_stage1"} in meta
    assert meta[0]["run_date"] == run_date.isoformat()  # the newest commit is this run's
