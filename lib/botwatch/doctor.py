"""``botwatch doctor``: versions of the stack and live checks of Delta and GraphFrames."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
import uuid
from collections.abc import Callable

from botwatch.config import Config, warehouse_path
from botwatch.spark import has_graphframes_jar, jars_dir

PACKAGES = {
    "Spark (pyspark)": "pyspark",
    "Delta (delta-spark)": "delta-spark",
    "GraphFrames (graphframes-py)": "graphframes-py",
    "XGBoost": "xgboost",
    "torch": "torch",
    "Airflow": "apache-airflow",
}


def _java_version() -> str:
    """The version of the java Spark starts: ``$JAVA_HOME/bin/java`` where JAVA_HOME is set, as spark-submit
    picks it, else the one on the PATH."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else "java"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not found ({exc})"
    return (out.stderr or out.stdout).splitlines()[0] if (out.stderr or out.stdout) else "unknown"


def versions_of(dists: list[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist in dists:
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            found[dist] = None
    return found


def versions() -> dict[str, str]:
    found = {"Python": platform.python_version(), "Java": _java_version()}
    installed = versions_of(list(PACKAGES.values()))
    for label, dist in PACKAGES.items():
        found[label] = installed[dist] or "not installed"
    return found


def cuda_status() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"visible ({torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)})"
        return "not visible (CPU only)"
    except Exception as exc:  # noqa: BLE001 - doctor reports, never crashes
        return f"unknown ({exc})"


def check_packages() -> str:
    """Raise naming every package of :data:`PACKAGES` that is not installed (the steps import them)."""
    missing = [dist for dist, version in versions_of(list(PACKAGES.values())).items() if version is None]
    if missing:
        raise RuntimeError(f"not installed: {', '.join(missing)}; run `make setup` (pip install -e .)")
    return f"{len(PACKAGES)} installed"


def check_delta(spark, warehouse: str) -> str:
    """Write, overwrite, time-travel and DESCRIBE HISTORY (Delta's SQL extension) a table under the
    configured warehouse, where the steps write, then delete it."""
    from botwatch.delta_io import delete_path

    path = f"{warehouse}/_doctor/delta_check-{uuid.uuid4().hex[:12]}"
    try:
        spark.range(5).write.format("delta").mode("overwrite").save(path)
        spark.range(7).write.format("delta").mode("overwrite").save(path)
        now = spark.read.format("delta").load(path).count()
        then = spark.read.format("delta").option("versionAsOf", 0).load(path).count()
        if (now, then) != (7, 5):
            raise RuntimeError(f"read back {now} rows (want 7) and {then} at version 0 (want 5)")
        versions = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").count()
        if versions != 2:
            raise RuntimeError(f"DESCRIBE HISTORY lists {versions} versions, want 2")
    finally:
        delete_path(spark, path)
    return f"write, overwrite, time travel and SQL under {warehouse} ok"


def check_graphframes(spark, conf: Config) -> str:
    if not has_graphframes_jar(conf):
        raise RuntimeError(
            f"the GraphFrames jar is not in {jars_dir(conf)}: `make jars` tries Maven Central "
            "(io.graphframes:graphframes-spark4_2.13), which refused it on this machine"
        )
    from graphframes import GraphFrame

    v = spark.createDataFrame([(1,), (2,), (3,)], ["id"])
    e = spark.createDataFrame([(1, 2), (2, 3), (3, 1)], ["src", "dst"])
    tri = {r["id"]: r["count"] for r in GraphFrame(v, e).triangleCount().collect()}
    if tri != {1: 1, 2: 1, 3: 1}:
        raise RuntimeError(f"triangle counts {tri}, want one per vertex")
    return "triangleCount on a 3-cycle ok"


def run_doctor(conf: Config, echo: Callable[[str], None] = print) -> bool:
    """Print versions and live checks; return True when every check passed."""
    for label, version in versions().items():
        echo(f"{label:32s} {version}")
    echo(f"{'CUDA':32s} {cuda_status()}")
    ok = True

    def report(name: str, fn: Callable[[], str]) -> None:
        nonlocal ok
        try:
            echo(f"[ok]     {name}: {fn()}")
        except Exception as exc:  # noqa: BLE001 - doctor reports each failure with its reason
            ok = False
            echo(f"[failed] {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    from botwatch.spark import get_spark

    spark_box = {}

    def start() -> str:
        spark_box["spark"] = get_spark(conf, app_name="doctor")
        return f"SparkSession {spark_box['spark'].version} on {conf['spark.master']}"

    report("packages", check_packages)
    report("spark session", start)
    if "spark" in spark_box:
        spark = spark_box["spark"]
        report("delta", lambda: check_delta(spark, warehouse_path(conf)))
        report("graphframes", lambda: check_graphframes(spark, conf))
    return ok
