"""Shared fixtures: one SparkSession for the whole test session (local[2], 4 shuffle
partitions, UI off, warehouse in a temp folder), and a fresh warehouse folder per test."""
from __future__ import annotations

import threading

import pytest
from tests.helpers import PLATFORM_FEATURE_DATES, PLATFORM_SETTINGS, restore_session_conf, write_test_platform

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
def spark(conf, request):
    session = get_spark(conf, app_name="tests")
    yield session
    request.config.stash[_JVM_MEMORY] = jvm_memory_pools(session)
    session.stop()


_JVM_MEMORY = pytest.StashKey[str]()


def jvm_memory_pools(session) -> str:
    """The session JVM's code cache and heap: used, peak and maximum MB of each pool. A full code
    cache stops the JIT and can fail a task (VirtualMachineError); this shows how near the suite came."""
    lines = []
    for pool in session._jvm.java.lang.management.ManagementFactory.getMemoryPoolMXBeans():
        name = str(pool.getName())
        if "Code" not in name and str(pool.getType().toString()) != "Heap memory":
            continue
        used, peak, after_gc = pool.getUsage(), pool.getPeakUsage(), pool.getCollectionUsage()
        top = used.getMax() if used.getMax() >= 0 else used.getCommitted()
        # After the last collection: what was live, not garbage waiting for one.
        live = f", {after_gc.getUsed() / 2**20:.1f} MB after the last GC" if after_gc is not None else ""
        lines.append(f"  {name}: {used.getUsed() / 2**20:.1f} MB used, peak {peak.getUsed() / 2**20:.1f} MB "
                     f"of {top / 2**20:.1f} MB{live}")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter, config):
    pools = config.stash.get(_JVM_MEMORY, "")
    if pools:
        terminalreporter.write_line("JVM memory pools of the test session's Spark driver at its end:")
        terminalreporter.write_line(pools)


@pytest.fixture(autouse=True)
def _session_conf_restored():
    """A test that runs a command in process (CliRunner, a job's ``main``) reuses this session through
    ``get_spark``, which applies the command's conf to it (conf/local.yaml: 8 shuffle partitions, not
    4; its own warehouse's checkpoint dir). Later tests would then partition, and sum floats,
    differently from the rest of the session, and write their scratch frames under that test's
    warehouse: the session's settings are put back after every test."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    before = dict(session.conf.getAll) if session is not None else None
    yield
    if session is not None and before is not None:
        restore_session_conf(session, before)


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


@pytest.fixture(scope="session")
def platform(spark, conf, tmp_path_factory, request):
    """(conf, run dates): 2,000 simulated accounts x 14 days with features on a few dates
    (:func:`tests.helpers.write_test_platform`).

    When the session has tests that need ``dag_run``, its Airflow run starts here, in the
    background, on a copy taken now (see :func:`dag_run`)."""
    warehouse = str(tmp_path_factory.mktemp("platform"))
    pconf = conf.with_overrides([f"warehouse={warehouse}", *PLATFORM_SETTINGS])
    write_test_platform(spark, pconf)
    dates = list(PLATFORM_FEATURE_DATES)
    if any(map(_needs_dag_run, request.session.items)):
        run = _start_dag_run(pconf, dates[-1], tmp_path_factory)
        request.addfinalizer(run.join)  # never leave spark-submits running after the session
        request.config.stash[_DAG_RUN] = run
    return pconf, dates


# The whole run's settings on the platform: stage 2 (the torch model) has its own tests, so the
# run's mechanics are checked on the stage-1 path.
RUN_SETTINGS = ["train.n_bootstrap=20", "cascade.enabled=false"]


class _DagRun(threading.Thread):
    """``airflow_dag_test`` in a thread: its spark-submits (separate processes) overlap the
    session's own tests; the thread only waits on them."""

    def __init__(self, run_date, warehouse: str, home):
        super().__init__(name="airflow-dag-run", daemon=True)
        self.run_date, self.warehouse, self.home = run_date, warehouse, home
        self.states: dict | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from tests.helpers import airflow_dag_test

        # The session's conf minus what spark-submit sets itself (master, driver memory).
        sets = [s for s in TEST_SETTINGS if not s.startswith(("spark.master=", "spark.driver_memory="))]
        try:
            self.states = airflow_dag_test(self.home, self.warehouse, [*sets, *PLATFORM_SETTINGS, *RUN_SETTINGS],
                                           self.run_date)
        except BaseException as exc:  # re-raised in the test that reads the result
            self.error = exc


_DAG_RUN = pytest.StashKey[_DagRun]()


def _start_dag_run(pconf, run_date, tmp_path_factory) -> _DagRun:
    from tests.helpers import copy_warehouse

    # Copied before any test writes to the platform (training tests register models in it).
    warehouse = copy_warehouse(pconf["warehouse"], tmp_path_factory.mktemp("dag_run") / "wh")
    run = _DagRun(run_date, warehouse, tmp_path_factory.mktemp("airflow_home"))
    run.start()
    return run


def _needs_dag_run(item) -> bool:
    return "dag_run" in item.fixturenames


def pytest_collection_modifyitems(items):
    """Tests that need the Airflow run go last (a stable sort): it runs in the background from
    the moment the platform exists, so the rest of the suite overlaps it."""
    items.sort(key=_needs_dag_run)


@pytest.fixture(scope="session")
def dag_run(platform, request):
    """The platform's last feature date run whole the way production runs it: ``dag.test()`` on a
    real Airflow, every task a spark-submit of its job, on a private copy of the platform (started
    by ``platform``). One run serves the DAG test and the rerun tests (test_run), which check that
    rerunning in process changes nothing. Returns (conf of that warehouse, run date, dag.test's
    states)."""
    pconf, _ = platform
    run = request.config.stash[_DAG_RUN]
    run.join()
    if run.error is not None:
        raise run.error
    return pconf.with_overrides([f"warehouse={run.warehouse}", *RUN_SETTINGS]), run.run_date, run.states
