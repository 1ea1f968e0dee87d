"""Shared fixtures: one SparkSession for the whole test session (local[2], 4 shuffle
partitions, UI off, warehouse in a temp folder), and a fresh warehouse folder per test."""
from __future__ import annotations

import pytest

from botwatch.config import load_config
from botwatch.spark import get_spark

TEST_SETTINGS = [
    "spark.master=local[2]",
    "spark.shuffle_partitions=4",
    "spark.ui_enabled=false",
    "spark.driver_memory=4g",
    "spark.log_level=ERROR",
]


@pytest.fixture(scope="session")
def session_warehouse(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("warehouse"))


@pytest.fixture(scope="session")
def conf(session_warehouse):
    return load_config("conf/local.yaml", TEST_SETTINGS + [f"warehouse={session_warehouse}"])


@pytest.fixture(scope="session")
def spark(conf):
    session = get_spark(conf, app_name="botwatch-tests")
    yield session
    session.stop()


@pytest.fixture
def warehouse(tmp_path) -> str:
    """A per-test warehouse root, so Delta tables never leak between tests."""
    path = tmp_path / "warehouse"
    path.mkdir()
    return str(path)


@pytest.fixture
def test_conf(conf, warehouse):
    """The session conf pointed at this test's own warehouse."""
    return conf.with_overrides([f"warehouse={warehouse}"])


# ---- a small simulated platform with features, shared by the model tests ----
PLATFORM_START = __import__("datetime").date(2026, 1, 5)
PLATFORM_DAYS = 14
# Feature runs every few days are enough for point-in-time training rows.
PLATFORM_FEATURE_OFFSETS = (3, 6, 9, 13)
PLATFORM_SETTINGS = [
    "simulate.labels.investigator_per_week_per_100k=6000",  # enough labels on 2,000 accounts
    "train.min_train_rows=30",
    "train.valid_days=4",
    "train.n_bootstrap=50",
]


@pytest.fixture(scope="session")
def platform(spark, conf, tmp_path_factory):
    """(conf, run dates): 2,000 simulated accounts x 14 days with features on a few dates."""
    import datetime as dt

    from botwatch import steps
    from botwatch.simulate import write_platform

    warehouse = str(tmp_path_factory.mktemp("platform"))
    pconf = conf.with_overrides([f"warehouse={warehouse}", *PLATFORM_SETTINGS])
    write_platform(
        spark, warehouse, accounts=2000, days=PLATFORM_DAYS, seed=11, start_date=PLATFORM_START,
        params=pconf.section("simulate"),
    )
    dates = [PLATFORM_START + dt.timedelta(days=d) for d in PLATFORM_FEATURE_OFFSETS]
    for day in dates:
        steps.features_step(spark, pconf, day)
    return pconf, dates


# The whole run's settings on the platform: stage 2 (the torch model) has its own tests, so the
# run's mechanics are checked on the stage-1 path.
RUN_SETTINGS = ["train.n_bootstrap=20", "cascade.enabled=false"]


@pytest.fixture(scope="session")
def dag_run(platform, tmp_path_factory):
    """The platform's last feature date run whole the way production runs it: ``dag.test()`` on a
    real Airflow, every task a spark-submit of its job, on a private copy of the platform. One run
    serves the DAG test and the rerun tests (test_run), which check that rerunning in process
    changes nothing. Returns (conf of that warehouse, run date, dag.test's states)."""
    from tests.helpers import airflow_dag_test, copy_warehouse

    pconf, dates = platform
    warehouse = copy_warehouse(pconf["warehouse"], tmp_path_factory.mktemp("dag_run") / "wh")
    # The session's conf minus what spark-submit sets itself (master, driver memory).
    sets = [s for s in TEST_SETTINGS if not s.startswith(("spark.master=", "spark.driver_memory="))]
    sets += [*PLATFORM_SETTINGS, *RUN_SETTINGS]
    states = airflow_dag_test(tmp_path_factory.mktemp("airflow_home"), warehouse, sets, dates[-1])
    return pconf.with_overrides([f"warehouse={warehouse}", *RUN_SETTINGS]), dates[-1], states

