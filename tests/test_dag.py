"""The Airflow DAG on a real Airflow: it loads with no import errors, its task graph and settings
are as designed, templates render to the logical date, and ``dag.test()`` (SQLite metadata DB
migrated in a temporary AIRFLOW_HOME) runs every step through spark-submit on a tiny platform,
after which the tables hold the run.

Airflow runs in subprocesses: its settings are read at import from AIRFLOW_HOME, which must be
the test's own folder (never the user's ~/airflow).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from tests.helpers import copy_warehouse

from botwatch import nightly
from botwatch import tables as t
from botwatch.delta_io import read_table

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"
EXPECTED_ORDER = ["validate", "activity", "features", "train", "score_stage1", "score_stage2", "publish", "monitor"]


def airflow_env(home: Path, warehouse: str = "", sets: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "airflow_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        # spark-submit (and the python3 it starts the driver with) must come from the venv.
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "BOTWATCH_WAREHOUSE": warehouse,
        "BOTWATCH_SETS": sets,
        "BOTWATCH_DRIVER_MEMORY": "2g",
        # Each task is a short job on tiny data: C1-only JIT costs a cold JVM about a third less CPU.
        "BOTWATCH_DRIVER_JAVA_OPTIONS": JAVA_OPTIONS,
    })
    if warehouse != "/tmp/bw-warehouse":
        env["BOTWATCH_RETRIES"] = "0"  # dag.test would wait out the 5-minute retry delay
    return env


def run_py(code: str, env: dict[str, str], timeout: int) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-8000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


INSPECT = r"""
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="airflow_dags")
dag = bag.dags.get("botwatch_nightly")
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dag_ids)}
if dag is not None:
    out.update({
        "schedule": str(dag.schedule), "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
        "start_date": dag.start_date.isoformat(),
        "tasks": {
            task.task_id: {
                "upstream": sorted(task.upstream_task_ids), "downstream": sorted(task.downstream_task_ids),
                "pool": task.pool, "retries": task.retries, "backoff": task.retry_exponential_backoff,
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
        }
    out["rendered"] = rendered
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("airflow_home")


@pytest.fixture(scope="module")
def inspected(airflow_home) -> dict:
    """The DAG as a fresh Airflow parses it (one interpreter for the structure and template tests)."""
    return run_py(INSPECT, airflow_env(airflow_home, warehouse="/tmp/bw-warehouse"), timeout=300)


def test_dagbag_loads_and_graph_is_as_designed(inspected):
    got = inspected
    assert got["import_errors"] == {}
    assert got["dag_ids"] == ["botwatch_nightly"]
    assert got["schedule"] == "@daily"
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
        assert task["pool"] == ("gpu" if task_id == "score_stage2" else "default_pool")
        assert task["conf"] == {"spark.driver.extraJavaOptions": JAVA_OPTIONS}
    # Every job file the DAG names exists and goes through the nightly runner.
    for task_id in EXPECTED_ORDER:
        assert f'run_date_step("{task_id}"' in (ROOT / "jobs" / f"{task_id}.py").read_text()


def test_templates_render_to_the_logical_date(inspected):
    got = inspected
    for ds in ("2026-01-12", "2026-02-01"):
        args = got["rendered"][ds]["args"]
        assert args[args.index("--date") + 1] == ds
        assert args[args.index("--warehouse") + 1] == "/tmp/bw-warehouse"
        assert got["rendered"][ds]["name"] == f"botwatch-score_stage2-{ds}"


DAG_TEST = r"""
import json, sys, pendulum
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="airflow_dags")
assert not bag.import_errors, bag.import_errors
dag = bag.dags.get("botwatch_nightly")
dr = dag.test(logical_date=pendulum.parse(sys.argv[1], tz="UTC"))
print(json.dumps({"state": str(dr.state), "tis": {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}}))
"""


# Whole runs on a simulated platform; the default 900 s also counts the fixtures' setup.
@pytest.mark.timeout(1800)
def test_dag_test_runs_the_whole_dag(spark, platform, tmp_path, airflow_home):
    """``dag.test()`` on a real Airflow: every task a spark-submit of its job, on the shared platform
    with a champion trained the day before (so train reuses it and every step has work to do)."""
    pconf, dates = platform
    warehouse = copy_warehouse(pconf["warehouse"], tmp_path / "wh")
    run_date = dates[-1]
    env = airflow_env(airflow_home, warehouse=warehouse, sets=";".join([
        "spark.shuffle_partitions=4", "spark.ui_enabled=false", "spark.log_level=ERROR",
        "train.min_train_rows=30", "train.valid_days=4", "train.n_bootstrap=20", "cascade.enabled=false",
    ]))
    # A champion from the previous feature date: the refresh policy reuses it on D.
    wconf = pconf.with_overrides([f"warehouse={warehouse}", "train.n_bootstrap=20", "cascade.enabled=false"])
    nightly.run_steps(spark, wconf, dates[-2], ["train"])
    subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
    subprocess.run([str(VENV_BIN / "airflow"), "pools", "set", "gpu", "1", "stage-2 inference"], env=env, check=True,
                   capture_output=True, timeout=300)
    code = DAG_TEST.replace("sys.argv[1]", repr(run_date.isoformat()))
    got = run_py(code, env, timeout=1500)
    assert got["state"] == "success", got
    assert got["tis"] == {s: "success" for s in EXPECTED_ORDER}

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
    assert isinstance(dt.date.fromisoformat(meta[0]["run_date"]), dt.date)
