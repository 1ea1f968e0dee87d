"""The botwatch nightly DAG: one Spark job per pipeline step for the logical date ``{{ ds }}``.

Each task runs ``jobs/<step>.py`` through ``SparkSubmitOperator`` on the connection
``spark_default`` (default ``local[*]``; pointing it at YARN or Kubernetes is a connection change,
not a code change). The stage-2 (torch) task runs in the Airflow pool ``gpu``. Nothing heavy is
imported here: the DAG file only names paths and templates.

Every job goes through ``botwatch.nightly`` (date lock, run log, skip when done and inputs are
unchanged), so clearing a task reruns only what changed; ``catchup=True`` runs missed nights in
order, one DAG run at a time. Airflow's own backfill ignores ``max_active_runs`` (its default is 10
runs at once): run it with ``airflow backfill create ... --max-active-runs 1``, since each date's
train reads the drift alert of the date before.

Knobs (environment, so that parsing the file stays cheap): ``BOTWATCH_HOME`` (project folder;
default: this file's parent's parent), ``BOTWATCH_CONF`` (conf file, default ``conf/local.yaml``),
``BOTWATCH_WAREHOUSE`` (overrides the conf's warehouse), ``BOTWATCH_JARS`` (jars folder),
``BOTWATCH_START_DATE`` (first logical date, default 2026-01-05), ``BOTWATCH_DRIVER_MEMORY``
(spark-submit ``--driver-memory``, default 4g), ``BOTWATCH_DRIVER_JAVA_OPTIONS`` (the driver JVM's
``spark.driver.extraJavaOptions``, default ``-XX:-DontCompileHugeMethods`` as conf's ``spark.java_options``,
which a job reads only after spark-submit started its JVM), ``BOTWATCH_RETRIES`` (default 2),
``BOTWATCH_SETS`` (extra ``key=value`` conf overrides, separated by ``;``; passed as typed, braces included).
A relative ``BOTWATCH_WAREHOUSE`` is taken from ``BOTWATCH_HOME``.
"""
from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, CronDataIntervalTimetable

HOME = Path(os.environ.get("BOTWATCH_HOME", Path(__file__).resolve().parents[1]))
CONF = os.environ.get("BOTWATCH_CONF", str(HOME / "conf" / "local.yaml"))
WAREHOUSE = os.environ.get("BOTWATCH_WAREHOUSE", "")
if WAREHOUSE and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", WAREHOUSE):
    # A relative path is the project's, as in conf: not wherever the Airflow worker runs the task.
    WAREHOUSE = str(HOME / Path(WAREHOUSE).expanduser())
JARS_DIR = Path(os.environ.get("BOTWATCH_JARS", HOME / "jvm" / "jars"))
SETS = [s for s in os.environ.get("BOTWATCH_SETS", "").split(";") if s.strip()]
START_DATE = pendulum.parse(os.environ.get("BOTWATCH_START_DATE", "2026-01-05"), tz="UTC")
# spark-submit's --driver-memory: the driver JVM starts before the job reads its conf.
DRIVER_MEMORY = os.environ.get("BOTWATCH_DRIVER_MEMORY", "4g")
# Default: let the JIT compile Spark's huge generated methods (see conf/base.yaml). E.g.
# "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m" where every job is short (tiny data): JIT with
# C1 only, less CPU (C1 only alone shrinks the code cache to 48 MB, which a job can fill and then fail).
DRIVER_JAVA_OPTIONS = os.environ.get("BOTWATCH_DRIVER_JAVA_OPTIONS", "-XX:-DontCompileHugeMethods")
RETRIES = int(os.environ.get("BOTWATCH_RETRIES", "2"))
# Longer than conf run.lock_stale_hours (0.15 h = 9 min): a retry after a killed attempt finds its lock
# expired instead of exiting 3 (held) and spending a retry.
RETRY_DELAY = timedelta(minutes=10)

# (task id = job file, pool), in the pipeline's order (botwatch.steps.RUN_ORDER).
STEPS = (
    ("validate", None),
    ("activity", None),
    ("features", None),
    ("train", None),
    ("score_stage1", None),
    ("score_stage2", "gpu"),
    ("publish", None),
    ("monitor", None),
)
GPU_POOL = "gpu"


def _jars() -> str | None:
    # A directory listing only: the jars were fetched at setup time, never at run time.
    jars = sorted(str(p) for p in JARS_DIR.glob("*.jar")) if JARS_DIR.is_dir() else []
    return ",".join(jars) or None


def _literal(value: str) -> str:
    # application_args and conf are templated: a value's own braces ({{PWD}} in a class path) reach the job as typed.
    return "{% raw %}" + value + "{% endraw %}" if "{" in value else value


def _args() -> list[str]:
    args = ["--date", "{{ ds }}", "--conf", _literal(CONF)]
    if WAREHOUSE:
        args += ["--warehouse", _literal(WAREHOUSE)]
    for item in SETS:
        args += ["--set", _literal(item.strip())]
    return args


with DAG(
    dag_id="botwatch_nightly",
    description="Nightly bot-detection scoring: validate, activity, features, train, score, publish, monitor",
    # A data-interval timetable: the run for day D starts when D has ended, and {{ ds }} is D. Airflow 3
    # turns a plain "@daily" into a trigger timetable, whose {{ ds }} is the day that has just begun.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=START_DATE,
    catchup=True,
    max_active_runs=1,
    default_args={
        # A step of D runs only once the same step of D-1 succeeded: the features step rolls D-1's window
        # state forward and D-1's validated events, so a failed night stops the chain until it is fixed.
        "depends_on_past": True,
        "retries": RETRIES,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(hours=1),
    },
    tags=["botwatch"],
) as dag:
    previous = None
    for step, pool in STEPS:
        task = SparkSubmitOperator(
            task_id=step,
            application=str(HOME / "jobs" / f"{step}.py"),
            application_args=_args(),
            conn_id="spark_default",
            jars=_jars(),
            driver_memory=DRIVER_MEMORY,
            # conf is templated too: the options' own braces ({{PWD}} in a path) reach spark-submit as typed.
            conf={"spark.driver.extraJavaOptions": _literal(DRIVER_JAVA_OPTIONS)} if DRIVER_JAVA_OPTIONS else None,
            name=f"botwatch-{step}-{{{{ ds }}}}",
            pool=pool or "default_pool",
            # The job's package must import on the driver: the project's lib/ on PYTHONPATH
            # covers a checkout that is not pip-installed in the worker's environment.
            env_vars={"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(HOME / "lib")},
        )
        if previous is not None:
            previous >> task
        previous = task
