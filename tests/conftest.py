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
