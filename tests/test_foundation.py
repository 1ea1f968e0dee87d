"""Foundation: Delta write/overwrite/time travel, reading Delta without a JVM, graph
triangle counts against networkx, the session's settings, and configuration errors."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb
import networkx as nx
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from tests.helpers import restore_session_conf

from botwatch import files
from botwatch.config import PROJECT_ROOT, ConfigError, load_config
from botwatch.spark import MissingJarsError, application_name, delta_loaded, find_jars, get_spark, session_conf


def test_delta_overwrite_and_time_travel(spark, warehouse):
    path = f"{warehouse}/t"
    first = spark.createDataFrame([(1, "a"), (2, "b")], ["id", "v"])
    second = spark.createDataFrame([(3, "c")], ["id", "v"])
    first.write.format("delta").save(path)
    second.write.format("delta").mode("overwrite").save(path)
    assert_df_equality(spark.read.format("delta").load(path), second, ignore_row_order=True)
    v0 = spark.read.format("delta").option("versionAsOf", 0).load(path)
    assert_df_equality(v0, first, ignore_row_order=True)
    assert spark.sql(f"SELECT count(*) AS n FROM delta.`{path}`").first()["n"] == 1


def test_delta_readable_without_jvm(spark, warehouse):
    path = f"{warehouse}/nojvm"
    rows = [(i, i % 3) for i in range(30)]
    spark.createDataFrame(rows, ["id", "grp"]).write.format("delta").partitionBy("grp").save(path)
    table = DeltaTable(path)
    arrow = table.to_pyarrow_table()
    assert arrow.num_rows == 30
    con = duckdb.connect()
    con.register("t", arrow)
    got = dict(con.execute("SELECT grp, sum(id) FROM t GROUP BY grp").fetchall())
    want = {g: sum(i for i, gg in rows if gg == g) for g in range(3)}
    assert got == want


def test_session_settings(spark):
    conf = spark.sparkContext.getConf()
    assert delta_loaded(spark)  # what a job under spark-submit checks before anything runs
    assert conf.get("spark.app.name") == "botwatch-tests"
    named = load_config(None, ["spark.app_name=fraud-nightly", "warehouse=/w"])
    assert (application_name(named, "features-2026-01-12"), application_name(named)) == (
        "fraud-nightly-features-2026-01-12", "fraud-nightly")
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.conf.get("spark.sql.adaptive.enabled") == "true"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"
    assert "DeltaSparkSessionExtension" in conf.get("spark.sql.extensions")
    assert "delta-spark_" in conf.get("spark.jars")
    assert conf.get("spark.pyspark.python") == sys.executable
    # conf's python_call_sites (false): PySpark's Column functions skip recording their call site.
    from pyspark.errors.utils import is_debugging_enabled

    assert spark.conf.get("spark.python.sql.dataFrameDebugging.enabled") == "false" and not is_debugging_enabled()
    assert spark.sparkContext.getCheckpointDir()
    # conf's java_options reach the running JVM (the driver is the executor in local mode).
    runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    jvm_args = list(runtime.getInputArguments())
    assert "-XX:-DontCompileHugeMethods" in jvm_args


def test_days_are_utc_days_or_the_steps_refuse_to_run(spark, warehouse):
    # Cut-offs at the session's midnights must match the UTC day partitions of events.
    import datetime as dt

    from botwatch.features.build import build_features
    from botwatch.spark import SessionTimeZoneError, require_utc, session_settings
    from botwatch.training import TrainParams, prepare_training

    # A null entry sets nothing (an overlay dropping a base conf's entry): not the text "None".
    dropped = load_config(None, ["warehouse=/w", "spark.extra_conf.spark.executor.instances=null",
                                 "spark.extra_conf.spark.sql.session.timeZone=null"])
    assert "spark.executor.instances" not in session_settings(dropped)
    assert session_settings(dropped)["spark.sql.session.timeZone"] == "UTC"
    local = load_config(None, ["warehouse=/w", "spark.extra_conf.spark.sql.session.timeZone=Asia/Kolkata"])
    with pytest.raises(ConfigError, match="spark.sql.session.timeZone to 'Asia/Kolkata'.*remove that entry"):
        session_settings(local)
    require_utc(spark)
    day = dt.date(2026, 1, 12)
    with session_conf(spark, {"spark.sql.session.timeZone": "Asia/Kolkata"}):
        with pytest.raises(SessionTimeZoneError, match="is 'Asia/Kolkata'.*UTC day partitions"):
            build_features(spark, warehouse, day, {})
        with pytest.raises(SessionTimeZoneError, match="is 'Asia/Kolkata'"):
            prepare_training(spark, warehouse, day, TrainParams(label_weights={"investigator": 1.0}))
    require_utc(spark)


def test_run_log_and_registry_times_are_utc_instants_on_a_driver_outside_utc(spark, warehouse, monkeypatch):
    """A driver host in New York: the run log's and registry's times, read in the UTC session, are the
    UTC times the run took (naive datetimes were stored as New York time: 5 hours late), also after
    the run rewrites D's log rows it read back."""
    import datetime as dt
    import time

    from pyspark.sql import functions as F

    from botwatch import nightly, registry
    from botwatch.delta_io import read_table

    day = dt.date(2026, 3, 10)
    noon = dt.datetime(2026, 3, 10, 12, 0, 0)  # naive UTC, as the run takes it
    zone = time.tzname
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        rows = {"validate": nightly.log_row(day, "validate", "ok", {}, {}, "r1", noon)}
        nightly.write_log(spark, warehouse, day, rows)
        rows = nightly.log_rows(spark, warehouse, day)  # read back, then rewritten with the next step's row
        rows["activity"] = nightly.log_row(day, "activity", "ok", {}, {}, "r1", noon + dt.timedelta(hours=1))
        nightly.write_log(spark, warehouse, day, rows)
        registry.upsert(spark, warehouse, registry.ModelRecord("stage1_xgb", 1, "champion", day))
    finally:
        monkeypatch.undo()  # TZ as it was (set or not), then applied: deleting it left the host's zone
        time.tzset()
    assert time.tzname == zone  # later tests run in the zone the session started in
    shown = F.date_format("started_at", "yyyy-MM-dd HH:mm")
    logged = read_table(spark, warehouse, "run_log").select("step", shown.alias("at")).collect()
    log = {r["step"]: r["at"] for r in logged}
    assert log == {"validate": "2026-03-10 12:00", "activity": "2026-03-10 13:00"}
    created = read_table(spark, warehouse, "model_registry").select(F.date_format("created_at", "yyyy-MM-dd HH:mm"))
    assert created.first()[0] == "2026-03-10 00:00"


def test_session_conf_sets_for_the_block_and_puts_back_what_was_there(spark):
    set_before, unset_before, left_alone = (
        "spark.sql.files.maxRecordsPerFile", "spark.sql.broadcastTimeout", "spark.sql.ansi.enabled")
    spark.conf.set(set_before, "7")
    spark.conf.unset(unset_before)
    ansi = spark.conf.get(left_alone, None)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with session_conf(spark, {set_before: "9", unset_before: "11s", left_alone: None}):
                assert (spark.conf.get(set_before), spark.conf.get(unset_before)) == ("9", "11s")
                assert spark.conf.get(left_alone, None) == ansi  # None: not touched
                raise RuntimeError("boom")  # a failed block puts the settings back too
        assert spark.conf.get(set_before) == "7"
        assert spark.conf.get(unset_before, None) is None  # unset again, not set to its default
    finally:
        spark.conf.unset(set_before)


def test_a_command_run_in_process_leaves_no_checkpoint_dir_behind(spark, tmp_path):
    # get_spark with a command's conf (its own warehouse) sets even what conf.set refuses; the
    # fixture that restores the session after every test must put that back too.
    before = dict(spark.conf.getAll)
    other = str(tmp_path / "other")
    get_spark(load_config("conf/local.yaml", [f"warehouse={other}", "spark.log_level=ERROR"]))
    assert spark.conf.get("spark.checkpoint.dir") == f"{other}/_checkpoints"
    restore_session_conf(spark, before)
    assert dict(spark.conf.getAll) == before
    context_dir = spark.sparkContext._jsc.sc().getCheckpointDir().get().removeprefix("file:")
    assert context_dir.startswith(before["spark.checkpoint.dir"] + "/")


def test_python_workers_use_project_interpreter(spark):
    # Workers must run the venv's python (xgboost.spark needs pandas there).
    got = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("sys").executable).collect()
    assert got == [sys.executable]


def test_triangles_match_networkx(spark):
    from botwatch.features.graph import triangle_counts

    g = nx.powerlaw_cluster_graph(60, 3, 0.5, seed=7)
    edges = spark.createDataFrame([(int(a), int(b)) for a, b in g.edges()], ["src", "dst"])
    got = {r["account_id"]: r["triangles"] for r in triangle_counts(edges).collect()}
    want = nx.triangles(g)
    assert {k: got.get(k, 0) for k in want} == want


def test_missing_jars_names_the_fix(tmp_path):
    with pytest.raises(MissingJarsError, match="make jars"):
        find_jars(tmp_path)


def _write(tmp_path, text):
    path = tmp_path / "env.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, "warehouse: /tmp/w\nspark:\n  mastr: local[2]\n")
    with pytest.raises(ConfigError, match=r"unknown key 'spark\.mastr'") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_wrong_type_names_key(tmp_path):
    path = _write(tmp_path, "spark:\n  shuffle_partitions: many\n")
    with pytest.raises(ConfigError, match=r"'spark\.shuffle_partitions' must be an integer"):
        load_config(path)
    # Null for a number or a flag fails here, not mid-run with a TypeError.
    # So does null for a string whose null means nothing: a null golden salt made every account golden (nothing
    # actioned, nothing trained), a null java_options started no JVM. A blank YAML value is null too.
    for setting, want in (("train.min_train_rows=null", "an integer"), ("run.lock_stale_hours=null", "a number"),
                          ("train.golden_salt=null", "a string"), ("spark.java_options=~", "a string")):
        with pytest.raises(ConfigError, match=rf"'{re.escape(setting.split('=')[0])}' must be {want}, got null"):
            load_config(None, [setting])
    blank_salt = _write(tmp_path, "train:\n  golden_salt:    # rotated: the new salt goes here\n")
    with pytest.raises(ConfigError, match=r"'train.golden_salt' must be a string, got null \(give it a value\)"):
        load_config(blank_salt)
    assert load_config(None, ["spark.checkpoint_dir=null"])["spark.checkpoint_dir"] is None  # null: the default
    # A section whose entries are all commented out changes nothing (it was a null section, then a KeyError).
    commented = _write(tmp_path, "train:\n  # seed: 3\nspark:\n  extra_conf:\n")
    assert load_config(commented).section("train")["seed"] == load_config(None).section("train")["seed"]
    # --set text that is not YAML: as typed for a string or a Spark setting, else a ConfigError.
    conf = load_config(None, ["spark.extra_conf.spark.executor.extraClassPath={{PWD}}/x.jar", "train.golden_salt=*v2"])
    assert conf["spark.extra_conf"]["spark.executor.extraClassPath"] == "{{PWD}}/x.jar"
    assert conf["train.golden_salt"] == "*v2"
    with pytest.raises(ConfigError, match=r"--set train.seed=\[1: '\[1' is not a YAML value"):
        load_config(None, ["train.seed=[1"])


def test_missing_required_value(tmp_path):
    path = _write(tmp_path, "warehouse: null\n")
    with pytest.raises(ConfigError, match="missing required value 'warehouse'"):
        load_config(path)


def test_overlay_order_base_env_set(tmp_path):
    path = _write(tmp_path, "warehouse: /from/env\nspark:\n  shuffle_partitions: 3\n")
    conf = load_config(path, ["spark.shuffle_partitions=5"])
    assert conf["warehouse"] == "/from/env"
    assert conf["spark.shuffle_partitions"] == 5
    assert conf["spark.app_name"] == "botwatch"  # from base


def test_mixed_type_knob_and_free_form_mapping(tmp_path):
    from botwatch.training import TrainParams

    # train.prevalence is "auto", a number or null, from a file and from --set alike.
    path = _write(tmp_path, "train:\n  prevalence: 0.05\nspark:\n  extra_conf:\n    spark.a: x\n")
    assert load_config(path)["train.prevalence"] == 0.05
    for raw, want in (("null", None), ("0.1", 0.1), ("auto", "auto")):
        assert load_config(path, [f"train.prevalence={raw}"])["train.prevalence"] == want
    with pytest.raises(ConfigError, match=r"'train\.prevalence' must be a string or integer or number"):
        load_config(path, ["train.prevalence=[1]"])
    for bad in ("sometimes", 1.5, 0, "2"):
        with pytest.raises(ConfigError, match="train.prevalence must be 'auto'"):
            TrainParams(label_weights={}, prevalence=bad)
    assert TrainParams(label_weights={}, prevalence="0.05").prevalence == 0.05  # quoted, as files held it
    # A dotted key inside a free-form mapping is one key there, added to what the file set.
    # Its values are Spark settings, text as typed: 022 is not YAML's octal 18.
    conf = load_config(path, ["spark.extra_conf.spark.executor.instances=20",
                              "spark.extra_conf.spark.hadoop.fs.permissions.umask-mode=022"])
    assert conf["spark.extra_conf"] == {"spark.a": "x", "spark.executor.instances": "20",
                                        "spark.hadoop.fs.permissions.umask-mode": "022"}
    # From a file too: YAML read 077 as octal 63 and 3.10 as 3.1; a nested mapping set nothing, silently.
    written = tmp_path / "typed.yaml"
    written.write_text("spark:\n  extra_conf:\n    spark.hadoop.fs.permissions.umask-mode: 077\n"
                       "    spark.executorEnv.PYVER: 3.10\n    spark.a: x\n    spark.b: true\n"
                       "    spark.c: null\n    spark.d: yes\n    spark.e: Off\n    spark.f: 10_485_760\n"
                       "    spark.g: 20\n    spark.h: 1:30\n    spark.i: 0x1F\n")
    assert load_config(written)["spark.extra_conf"] == {
        "spark.hadoop.fs.permissions.umask-mode": "077", "spark.executorEnv.PYVER": "3.10", "spark.a": "x",
        "spark.b": "true", "spark.c": None, "spark.d": "true", "spark.e": "false", "spark.f": "10485760",
        "spark.g": "20", "spark.h": "1:30", "spark.i": "0x1F"}
    nested = tmp_path / "nested.yaml"
    nested.write_text("spark:\n  extra_conf:\n    spark:\n      executor:\n        instances: 20\n")
    with pytest.raises(ConfigError, match=r"'spark\.extra_conf\.spark' must be one value, got a mapping"):
        load_config(nested)
    # A knob declared null with one type: a typo fails at load, not on a vacuum night mid-run.
    assert load_config(path, ["maintenance.vacuum_listing_parallelism=8"])[
        "maintenance.vacuum_listing_parallelism"] == 8
    for bad in ("many", "1e3", "true"):
        with pytest.raises(ConfigError, match="'maintenance.vacuum_listing_parallelism' must be an integer"):
            load_config(path, [f"maintenance.vacuum_listing_parallelism={bad}"])
    # A string knob keeps the text as typed (YAML numbers, '#'), drops YAML quotes; null is null.
    assert load_config(path, ["spark.app_name=123"])["spark.app_name"] == "123"
    assert load_config(path, ["warehouse=/data/bw #2"])["warehouse"] == "/data/bw #2"
    assert load_config(path, ["spark.app_name='fraud nightly'"])["spark.app_name"] == "fraud nightly"
    assert load_config(path, ["simulate.drift.new_family=null"])["simulate.drift.new_family"] is None


def test_number_knobs_take_scientific_notation(tmp_path):
    from botwatch.demo import demo_conf

    # PyYAML reads 1e-4 as a string; Python prints 0.00005 as 5e-05 (the demo's own overrides).
    assert load_config(None, ["heavy.weight_decay=1e-4"])["heavy.weight_decay"] == 1e-4
    assert load_config(_write(tmp_path, "heavy:\n  lr: 5E-4\n"))["heavy.lr"] == 5e-4
    assert load_config(None, ["train.prevalence=2.5e-3"])["train.prevalence"] == 0.0025
    assert demo_conf(load_config(None, ["demo.prevalence=0.00005"]))["simulate.prevalence"] == 5e-05
    # an integer knob still wants an integer, and text is still not a number
    with pytest.raises(ConfigError, match="train.n_bootstrap"):
        load_config(None, ["train.n_bootstrap=1e3"])
    with pytest.raises(ConfigError, match="heavy.weight_decay"):
        load_config(None, ["heavy.weight_decay=e-4"])


def test_cli_bad_config_exits_2(tmp_path):
    path = _write(tmp_path, "spark:\n  nope: 1\n")
    out = subprocess.run(
        [sys.executable, "-m", "botwatch", "doctor", "--conf", str(path)],
        capture_output=True, text=True, cwd=PROJECT_ROOT,
    )
    assert out.returncode == 2
    assert "spark.nope" in out.stderr and str(path) in out.stderr


def test_cli_bad_set_exits_2():
    out = subprocess.run(
        [sys.executable, "-m", "botwatch", "doctor", "--set", "spark.shuffle_partitions=lots"],
        capture_output=True, text=True, cwd=PROJECT_ROOT,
    )
    assert out.returncode == 2
    assert "spark.shuffle_partitions" in out.stderr


def test_conf_and_session_settings_without_a_project_checkout(tmp_path, monkeypatch):
    import botwatch.config as config
    import botwatch.spark as spark_factory

    # A cluster-mode driver runs the installed package: base.yaml and the env file come beside each other
    # (spark-submit --files), not from a checkout, and the jars from spark-submit --jars.
    shipped = tmp_path / "container"
    shipped.mkdir()
    (shipped / "base.yaml").write_text((PROJECT_ROOT / "conf" / "base.yaml").read_text())
    (shipped / "cluster.yaml").write_text("warehouse: s3a://b/wh\nspark:\n  master: yarn\n  jars_dir: /opt/none\n")
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path / "site-packages")
    conf = config.load_config(shipped / "cluster.yaml", ["spark.shuffle_partitions=8"])
    assert conf["spark.master"] == "yarn" and conf.sources[0] == str(shipped / "base.yaml")
    assert conf.with_overrides(["spark.shuffle_partitions=9"])["spark.shuffle_partitions"] == 9
    with pytest.raises(MissingJarsError):
        spark_factory.session_settings(conf)
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")
    assert "spark.jars" not in spark_factory.session_settings(conf)
    # Spark's packed-environment recipe: the workers run the archive's Python, not the driver's path.
    monkeypatch.setenv("PYSPARK_PYTHON", "./environment/bin/python")
    settings = spark_factory.session_settings(conf)
    assert settings["spark.pyspark.python"] == "./environment/bin/python"
    assert settings["spark.checkpoint.dir"] == "s3a://b/wh/_checkpoints"


def test_paths_uris_pass_through_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    import botwatch.spark as spark_factory
    from botwatch.config import resolve_path, typed_path

    # Spark and Delta print locations as file:/x (DESCRIBE DETAIL): pasted back, they must stay URIs.
    for uri in ("file:/tmp/wh", "hdfs:/wh", "hdfs://nn:8020/wh", "s3a://b/wh", "abfss://c@a.dfs.core.windows.net/w"):
        assert resolve_path(uri) == uri and typed_path(uri) == uri
    assert resolve_path("~/wh") == str(Path.home() / "wh")
    # Model artifacts, the run lock and reports go where the tables are: only these are on the driver's disk.
    for uri in ("hdfs:/wh/x", "dbfs:/mnt/wh/x", "hdfs://nn:8020/wh/x", "s3a://b/wh/x"):
        assert files.local_path(uri) is None, uri
    for path, local in (("file:/tmp/wh/x", "/tmp/wh/x"), ("file:///tmp/wh/x", "/tmp/wh/x"), ("/tmp/wh/x", "/tmp/wh/x"),
                        ("wh/x", "wh/x")):
        assert files.local_path(path) == local, path
    assert resolve_path("data/wh") == str(PROJECT_ROOT / "data" / "wh")
    monkeypatch.chdir(tmp_path)
    assert typed_path("wh") == str(tmp_path.resolve() / "wh")
    # A relative checkpoint folder is the project's, like the warehouse: not wherever Airflow's task runs.
    conf = load_config(None, ["warehouse=/w", "spark.checkpoint_dir=scratch/ckpt"])
    assert spark_factory.session_settings(conf)["spark.checkpoint.dir"] == str(PROJECT_ROOT / "scratch" / "ckpt")
    # An operator's SQL extension joins Delta's instead of replacing it; so do an operator's jars.
    own = conf.with_overrides(["spark.extra_conf.spark.sql.extensions=com.example.MyExtension",
                               "spark.extra_conf.spark.jars=/opt/jdbc/pg.jar"])
    own_settings = spark_factory.session_settings(own)
    assert own_settings["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension,com.example.MyExtension"
    project_jars = spark_factory.session_settings(conf)["spark.jars"]
    assert any("delta-spark_" in j for j in project_jars.split(","))
    assert own_settings["spark.jars"] == f"{project_jars},/opt/jdbc/pg.jar"
    # The checkpoint folder is a path as typed, like the warehouse: not YAML's octal, not cut at '#'.
    for typed, resolved in (("/data/ck #2", "/data/ck #2"), ("022", str(PROJECT_ROOT / "022"))):
        typed_conf = load_config(None, ["warehouse=/w", f"spark.checkpoint_dir={typed}"])
        assert typed_conf["spark.checkpoint_dir"] == typed
        assert spark_factory.session_settings(typed_conf)["spark.checkpoint.dir"] == resolved
    for unset in ("", "null"):
        unset_conf = load_config(None, ["warehouse=/w", f"spark.checkpoint_dir={unset}"])
        assert spark_factory.session_settings(unset_conf)["spark.checkpoint.dir"] == "/w/_checkpoints"


def test_the_declared_numpy_has_what_the_code_calls():
    """A preinstalled numpy 1.26 (cluster images) met the old ``numpy>=1.26`` and every training failed
    on ``np.trapezoid`` (numpy 2.0)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    numpy = next(r for r in map(Requirement, requires("botwatch") or []) if r.name == "numpy")
    assert not numpy.specifier.contains("1.26.4"), numpy
    assert numpy.specifier.contains("2.0.0") and hasattr(__import__("numpy"), "trapezoid")


def test_shipped_conf_files_load():
    for name in ("local.yaml", "cluster.yaml"):
        conf = load_config(PROJECT_ROOT / "conf" / name)
        assert conf["spark.master"]


def test_doctor_reports_the_java_spark_starts(tmp_path, monkeypatch):
    """spark-submit runs $JAVA_HOME/bin/java where JAVA_HOME is set: doctor showed the PATH's java instead."""
    import botwatch.doctor as doctor

    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text('#!/bin/sh\necho \'openjdk version "99.0.1" 2030-01-01\' >&2\n')
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    assert doctor.versions()["Java"] == 'openjdk version "99.0.1" 2030-01-01'
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", str(java.parent))
    assert "99.0.1" in doctor.versions()["Java"]


def test_doctor_fails_on_a_missing_package_and_checks_delta_where_the_steps_write(spark, warehouse, monkeypatch):
    import importlib.metadata as md

    import botwatch.doctor as doctor

    assert doctor.check_packages() == f"{len(doctor.PACKAGES)} installed"
    real_version = md.version

    def without_xgboost(dist):
        if dist == "xgboost":
            raise md.PackageNotFoundError(dist)
        return real_version(dist)

    monkeypatch.setattr(doctor.md, "version", without_xgboost)
    with pytest.raises(RuntimeError, match="not installed: xgboost"):
        doctor.check_packages()
    assert doctor.versions()["XGBoost"] == "not installed"
    # The live Delta check runs against the configured warehouse, through the SQL extension, and cleans up.
    assert "SQL under" in doctor.check_delta(spark, warehouse)
    assert not list((Path(warehouse) / "_doctor").glob("delta_check-*"))
