"""Plain helpers for tests (not fixtures): the test platform, warehouse copies, and Airflow run in subprocesses.

Airflow reads its settings at import from AIRFLOW_HOME, which must be the test's own folder (never
the user's ~/airflow): so every Airflow call runs in a fresh interpreter with :func:`airflow_env`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# Each DAG task is a short job on tiny data: C1-only JIT costs a cold JVM about a third less CPU. C1 only
# also shrinks the code cache to 48 MB, which the features and publish jobs fill; the JVM then stops
# compiling and, needing room for an adapter or a method-handle stub, can throw VirtualMachineError. A
# publish task failed once beside a full code cache (its output was not kept then): the tiered default's 240 MB.
JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m"
# dag.test() of the whole DAG shares 2 cores with the rest of the suite: alone it took about 15 minutes
# here (session 22), beside the suite about 25, in CI past the old 25-minute limit. The limit only catches a hang.
DAG_TEST_TIMEOUT_S = 3600
# A test that waits for that run, when run alone, also waits for the platform it starts from.
DAG_WAIT_TIMEOUT_S = DAG_TEST_TIMEOUT_S + 1800

# ---- the small simulated platform the model tests share (conftest's ``platform``; two benches build it too) ----
PLATFORM_START = dt.date(2026, 1, 5)
PLATFORM_DAYS = 14
# Feature runs every few days are enough for point-in-time training rows.
PLATFORM_FEATURE_OFFSETS = (3, 6, 9, 13)
PLATFORM_FEATURE_DATES = tuple(PLATFORM_START + dt.timedelta(days=d) for d in PLATFORM_FEATURE_OFFSETS)
PLATFORM_SETTINGS = [
    "simulate.labels.investigator_per_week_per_100k=6000",  # enough labels on 2,000 accounts
    "train.min_train_rows=30",
    "train.valid_days=4",
    "train.n_bootstrap=50",
]


def write_test_platform(spark, conf, feature_dates: Sequence[dt.date] = PLATFORM_FEATURE_DATES) -> None:
    """The test platform in ``conf``'s warehouse (``conf`` carries :data:`PLATFORM_SETTINGS`): 2,000
    simulated accounts x :data:`PLATFORM_DAYS` days, then the features step on ``feature_dates``."""
    from botwatch import steps
    from botwatch.config import warehouse_path
    from botwatch.simulate import write_platform

    write_platform(spark, warehouse_path(conf), accounts=2000, days=PLATFORM_DAYS, seed=11,
                   start_date=PLATFORM_START, params=conf.section("simulate"))
    for day in feature_dates:
        steps.features_step(spark, conf, day)


# The cascade trained small on the test platform (test_cascade's fixture, bench/driver_calls.py). One heavy
# member: ensembles are scored in test_stage2_worker; four would quadruple this training.
CASCADE_TRAIN_SETTINGS = [
    "heavy.epochs=8", "heavy.batch_size=32", "heavy.max_len=48", "heavy.seq_hidden=32", "heavy.num_threads=1",
    "heavy.ensemble=1", "cascade.budget=0.10", "cascade.quantize_cpu=false",
]

# dag.test() for the logical date in argv[1]; prints the run's and each task's state as JSON.
DAG_TEST = r"""
import json, sys, pendulum
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="airflow_dags")
assert not bag.import_errors, bag.import_errors
dag = bag.dags.get("botwatch_nightly")
dr = dag.test(logical_date=pendulum.parse(sys.argv[1], tz="UTC"))
print(json.dumps({"state": str(dr.state), "tis": {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}}))
"""


def canonical_rows(df):
    """``df``'s rows as text in a canonical order: every column as JSON (floats to the last bit),
    columns by name, rows sorted with pandas (independent of Spark's partitioning and hashing); and
    the SHA-256 of that text. Returns (pandas frame, hex digest)."""
    from pyspark.sql import functions as F

    cols = sorted(df.columns)
    rows = df.select(*[F.to_json(F.struct(c)).alias(c) for c in cols]).toPandas()
    rows = rows.sort_values(cols).reset_index(drop=True)
    return rows, hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()


def copy_warehouse(src: str, dst) -> str:
    """A private copy of a warehouse (Delta tables are folders with relative paths)."""
    shutil.copytree(src, dst)
    return str(dst)


def airflow_env(home: Path, warehouse: str = "", sets: str = "") -> dict[str, str]:
    """The environment of an Airflow subprocess: its home, SQLite database and logs under ``home``,
    the DAG pointed at ``warehouse`` with the ``;``-separated conf overrides ``sets``."""
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
        "BOTWATCH_DRIVER_JAVA_OPTIONS": JAVA_OPTIONS,
    })
    if warehouse != "/tmp/bw-warehouse":
        env["BOTWATCH_RETRIES"] = "0"  # dag.test would wait out the 5-minute retry delay
    return env


def run_py(code: str, env: dict[str, str], timeout: int, args: tuple[str, ...] = (), log: Path | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (``args`` as its ``sys.argv[1:]``); its last stdout line is JSON.
    ``log``: where to keep its whole stdout and stderr."""
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if log is not None:
        log.write_text(f"{proc.stdout}\n--- stderr\n{proc.stderr}")
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-8000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def failed_task_output(log: Path, states: dict, lines: int = 30) -> str:
    """What a ``dag.test()`` run printed for its failed tasks, so that a failed task's error reaches
    the test report: each one's last ``lines`` lines that name an error, then its last ``lines``
    lines (400 characters of each); "" when every task succeeded."""
    text = log.read_text().splitlines()
    out = []
    for task, state in states["tis"].items():
        if state == "success":
            continue
        starts = [i for i, line in enumerate(text) if f"[DAG TEST] starting task_id={task} " in line]
        if not starts:
            out.append(f"--- {task}: {state} (never started)")
            continue
        ends = [i for i, line in enumerate(text) if "[DAG TEST] starting task_id=" in line and i > starts[-1]]
        section = [line[:400] for line in text[starts[-1]:ends[0] if ends else len(text)]]
        errors = [line for line in section if re.search(r"Error|Exception|Traceback|failed", line)]
        out += [f"--- {task}: {state}", *errors[-lines:], "--- its last lines", *section[-lines:]]
    return "\n".join(out)


def airflow_dag_test(home: Path, warehouse: str, sets: list[str], run_date) -> dict:
    """``dag.test()`` of ``botwatch_nightly`` for ``run_date`` on a real Airflow (SQLite metadata
    database migrated in ``home``, the ``gpu`` pool created): every task a spark-submit of its job.
    Returns ``{"state": ..., "tis": {task_id: state}, "failed_output": what failed tasks printed}``."""
    env = airflow_env(home, warehouse=warehouse, sets=";".join(sets))
    subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
    subprocess.run([str(VENV_BIN / "airflow"), "pools", "set", "gpu", "1", "stage-2 inference"], env=env, check=True,
                   capture_output=True, timeout=300)
    log = home / "dag_test.log"
    states = run_py(DAG_TEST, env, timeout=DAG_TEST_TIMEOUT_S, args=(run_date.isoformat(),), log=log)
    return {**states, "failed_output": failed_task_output(log, states)}


def restore_session_conf(session, before: dict[str, str]) -> None:
    """Put ``session``'s conf back to ``before``. ``getOrCreate`` sets even the settings that
    ``conf.set`` refuses (``spark.checkpoint.dir``): those go back the way it set them, through the
    session state, and the checkpoint dir of the context with them."""
    for key, value in dict(session.conf.getAll).items():
        if before.get(key) == value:
            continue
        if session.conf.isModifiable(key):
            session.conf.set(key, before[key]) if key in before else session.conf.unset(key)
            continue
        state = session._jsparkSession.sessionState().conf()
        state.setConfString(key, before[key]) if key in before else state.unsetConf(key)
        if key == "spark.checkpoint.dir" and key in before:
            session.sparkContext.setCheckpointDir(before[key])


def merges_losing(monkeypatch, times: int) -> list[int]:
    """Delta MERGEs whose first ``times`` commits lose to another writer's (``ConcurrentAppendException``,
    as when a backfill of another date commits first); returns the list of attempts, appended to by each."""
    from delta.exceptions import ConcurrentAppendException
    from delta.tables import DeltaMergeBuilder

    # The unpatched method, also when an earlier call of this test patched it.
    real_execute = getattr(DeltaMergeBuilder.execute, "__wrapped__", DeltaMergeBuilder.execute)
    attempts: list[int] = []

    def execute(self):
        attempts.append(1)
        if len(attempts) <= times:
            raise ConcurrentAppendException("injected: another writer committed first")
        return real_execute(self)

    execute.__wrapped__ = real_execute  # type: ignore[attr-defined]
    monkeypatch.setattr(DeltaMergeBuilder, "execute", execute)
    return attempts
