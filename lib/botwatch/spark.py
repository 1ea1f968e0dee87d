"""The one SparkSession factory: jobs, tests, notebooks and the DAG all build sessions here.

It composes the builder from conf: master and memory, Delta's SQL extension and catalog,
the project's jars on ``spark.jars`` (fetched at setup time by ``make jars``; nothing is
resolved from a network at run time), a checkpoint dir, AQE on, session time zone UTC, and
``PYSPARK_PYTHON`` pinned to the running interpreter so Python workers see the same
packages as the driver (``xgboost.spark`` needs pandas there).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from botwatch.config import PROJECT_ROOT, Config, ConfigError, resolve_path

FETCH_JARS_COMMAND = "make jars"
DELTA_JAR_PREFIX = "delta-spark_"
GRAPHFRAMES_JAR_PREFIX = "graphframes-spark4_"
# botwatch's days are UTC days: event partitions, and the label, edge and account cut-offs.
TIME_ZONE_KEY = "spark.sql.session.timeZone"
UTC_NAMES = ("UTC", "Etc/UTC", "Z", "+00:00")


class MissingJarsError(RuntimeError):
    """The JVM packages Spark needs are not in the jars folder."""


class SessionTimeZoneError(RuntimeError):
    """The session's time zone is not UTC, so day cut-offs would not match the UTC day partitions."""


def require_utc(spark) -> None:
    """Raise :class:`SessionTimeZoneError` unless ``spark``'s session time zone is UTC."""
    zone = spark.conf.get(TIME_ZONE_KEY)
    if zone not in UTC_NAMES:
        raise SessionTimeZoneError(
            f"{TIME_ZONE_KEY} is {zone!r}: botwatch cuts labels, edges and accounts at UTC midnights to match "
            f"the UTC day partitions of events; set it back with spark.conf.set({TIME_ZONE_KEY!r}, 'UTC') or "
            "build the session with botwatch.spark.get_spark")


DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"


def jars_dir(conf: Config) -> Path:
    return Path(resolve_path(conf["spark.jars_dir"]))


def find_jars(folder: Path) -> list[Path]:
    """The jars to put on ``spark.jars``; raises when Delta's jar is missing."""
    jars = sorted(folder.glob("*.jar")) if folder.is_dir() else []
    if not any(j.name.startswith(DELTA_JAR_PREFIX) for j in jars):
        raise MissingJarsError(
            f"Delta Lake's jar is not in {folder}. Fetch the JVM packages once with "
            f"`{FETCH_JARS_COMMAND}` (run from {PROJECT_ROOT}); jobs never download them at run time."
        )
    return jars


def has_graphframes_jar(conf: Config) -> bool:
    folder = jars_dir(conf)
    return folder.is_dir() and any(j.name.startswith(GRAPHFRAMES_JAR_PREFIX) for j in folder.glob("*.jar"))


def launched_by_spark_submit() -> bool:
    """Whether this Python process is the driver of a ``spark-submit`` (its JVM is already up)."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT"))


def worker_python() -> str:
    """The Python the workers run: ``PYSPARK_PYTHON`` where the operator set it (a packed environment on a
    cluster, ``./environment/bin/python``), else this process's own."""
    return os.environ.get("PYSPARK_PYTHON") or sys.executable


def _after_ours(ours: list[str], setting: Any) -> str:
    """A comma-separated setting holding ``ours`` first, then its own entries, each once."""
    theirs = [v.strip() for v in str(setting).split(",") if v.strip()]
    return ",".join(dict.fromkeys([*ours, *theirs]))


def check_time_zone(conf: Config) -> None:
    """Refuse (ConfigError) a ``spark.extra_conf`` time zone other than UTC: botwatch's days are UTC days."""
    zone = (conf.section("spark").get("extra_conf") or {}).get(TIME_ZONE_KEY)
    if zone is not None and str(zone) not in UTC_NAMES:
        raise ConfigError(f"spark.extra_conf sets {TIME_ZONE_KEY} to {zone!r}: botwatch's days are UTC days "
                          "(event partitions, label and edge cut-offs); remove that entry")


def session_settings(conf: Config) -> dict[str, str]:
    """Every Spark setting the factory applies, as strings (also used by spark-submit in the DAG)."""
    spark_conf = conf.section("spark")
    warehouse = resolve_path(conf["warehouse"])
    checkpoint = resolve_path(spark_conf.get("checkpoint_dir") or f"{warehouse}/_checkpoints")
    # Under spark-submit its --jars are the session's (get_spark keeps them): no local jars needed.
    jars = [] if launched_by_spark_submit() else find_jars(jars_dir(conf))
    settings: dict[str, Any] = {
        "spark.app.name": spark_conf["app_name"],
        "spark.master": spark_conf["master"],
        "spark.driver.memory": spark_conf["driver_memory"],
        "spark.executor.memory": spark_conf["executor_memory"],
        "spark.sql.shuffle.partitions": spark_conf["shuffle_partitions"],
        "spark.jars": ",".join(str(j) for j in jars),
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.adaptive.enabled": "true",
        TIME_ZONE_KEY: "UTC",
        "spark.sql.warehouse.dir": f"{warehouse}/_spark_sql",
        "spark.ui.enabled": spark_conf["ui_enabled"],
        "spark.checkpoint.dir": checkpoint,
        "spark.pyspark.python": worker_python(),
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.defaultJavaOptions": spark_conf["java_options"],
        "spark.executor.defaultJavaOptions": spark_conf["java_options"],
        # Delta rebuilds table state with this many partitions (default 50: slow on small tables).
        "spark.databricks.delta.snapshotPartitions": spark_conf["delta_snapshot_partitions"],
        # PySpark's DataFrame query context (static: read once per session).
        "spark.python.sql.dataFrameDebugging.enabled": spark_conf["python_call_sites"],
    }
    # A null entry sets nothing (an overlay's way to drop a base conf's entry): Spark's default, or ours.
    settings.update({k: v for k, v in (spark_conf.get("extra_conf") or {}).items() if v is not None})
    # An operator's jars (a JDBC driver, hadoop-aws) come after the project's, and an operator's SQL extension
    # beside Delta's, never in their place: without Delta's jar or extension the first Delta read fails.
    settings["spark.jars"] = _after_ours([str(j) for j in jars], settings["spark.jars"])
    settings["spark.sql.extensions"] = _after_ours([DELTA_EXTENSION], settings["spark.sql.extensions"])
    check_time_zone(conf)
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in settings.items() if v != ""}


@contextmanager
def session_conf(spark, settings: Mapping[str, str | None]) -> Iterator[None]:
    """Set Spark SQL settings for the block and put back what was there before (a None value: leave
    that setting alone)."""
    given = {key: value for key, value in settings.items() if value is not None}
    previous = {key: spark.conf.get(key, None) for key in given}
    for key, value in given.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


def delta_loaded(spark) -> bool:
    """Whether the session's JVM can load Delta Lake's classes."""
    from py4j.java_gateway import JavaClass

    return isinstance(spark.sparkContext._jvm.io.delta.tables.DeltaTable, JavaClass)


def application_name(conf: Config, app_name: str | None = None) -> str:
    """The session's name in the Spark UI and the cluster manager: conf ``spark.app_name``, then
    what the caller adds (``features-2026-01-12``)."""
    return f"{conf['spark.app_name']}-{app_name}" if app_name else str(conf["spark.app_name"])


def get_spark(conf: Config, app_name: str | None = None):
    """Build (or return the running) SparkSession for ``conf``, named :func:`application_name`.

    >>> from botwatch.config import load_config
    >>> spark = get_spark(load_config())  # doctest: +SKIP
    """
    from pyspark.sql import SparkSession

    if str(conf["spark.master"]).startswith("local"):
        # Bind to loopback in local mode: sandboxes and laptops often lack a routable hostname.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = worker_python()
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    settings = session_settings(conf)
    settings["spark.app.name"] = application_name(conf, app_name)
    if launched_by_spark_submit():
        # Launched by spark-submit (the DAG): its --master and --jars (the Airflow connection) win,
        # so pointing the DAG at a cluster is a connection change, not a conf change.
        for key in ("spark.master", "spark.jars", "spark.driver.memory"):
            settings.pop(key, None)
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if launched_by_spark_submit() and not delta_loaded(spark):
        # Its jars are spark-submit's to give; say so here, not in an obscure Delta class error later.
        raise MissingJarsError(
            "spark-submit started this job without Delta Lake's jar: pass the jars of `make jars` with --jars "
            "(the DAG: BOTWATCH_JARS or the Airflow connection)"
        )
    spark.sparkContext.setLogLevel(conf["spark.log_level"])
    spark.sparkContext.setCheckpointDir(settings["spark.checkpoint.dir"])
    return spark
