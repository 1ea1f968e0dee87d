"""Helpers shared by the benchmarks: wall time and peak memory of this process tree
(the Python driver plus the Spark JVM and its Python workers, sampled by psutil)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psutil


class PeakMemory:
    """Samples the RSS of this process (or of process ``pid``) and all its children every ``interval`` seconds."""

    def __init__(self, interval: float = 0.2, keep_samples: bool = False, pid: int | None = None):
        self.interval = interval
        self.pid = pid
        self.keep_samples = keep_samples
        self.peak_bytes = 0
        self.samples: list[tuple[float, int]] = []  # (epoch seconds, bytes) when keep_samples
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        try:
            me = psutil.Process(self.pid)
        except psutil.Error:
            return 0
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._sample()
            self.peak_bytes = max(self.peak_bytes, rss)
            if self.keep_samples:
                self.samples.append((time.time(), rss))
            self._stop.wait(self.interval)

    def peak_between(self, start: float, end: float) -> float:
        """Peak GiB among the samples taken in [start, end] (epoch seconds); needs keep_samples."""
        inside = [rss for ts, rss in self.samples if start <= ts <= end]
        return max(inside, default=0) / 2**30

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._sample())

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30


@contextmanager
def timed():
    """``with timed() as t: ...`` then ``t["seconds"]``."""
    box: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - start


def local_spark(warehouse: str, app_name: str, *, driver_memory: str | None = None,
                shuffle_partitions: int | None = None, overrides: tuple[str, ...] | list[str] = ()):
    """A benchmark's Spark session and conf: local[2], the UI off, quiet logs, tables under ``warehouse``;
    ``overrides`` (``key=value``, as ``--set``) come last and win. Returns ``(spark, conf)``."""
    from botwatch.config import load_config
    from botwatch.spark import get_spark

    sets = ["spark.master=local[2]", "spark.ui_enabled=false", "spark.log_level=ERROR", f"warehouse={warehouse}"]
    if driver_memory:
        sets.append(f"spark.driver_memory={driver_memory}")
    if shuffle_partitions:
        sets.append(f"spark.shuffle_partitions={shuffle_partitions}")
    conf = load_config(overrides=[*sets, *overrides])
    return get_spark(conf, app_name=app_name), conf


def growth_exponent(sizes: list[float], seconds: list[float]) -> float:
    """Least-squares slope of log(time) against log(size): 1.0 means linear growth."""
    import numpy as np

    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def finish(out: dict, json_path: str | None, workdir, keep: bool) -> None:
    """Print the results as JSON (and write them to ``json_path``); remove ``workdir`` unless kept."""
    import json
    import shutil
    from pathlib import Path

    text = json.dumps(out, indent=2, default=str)
    print(text)
    if json_path:
        Path(json_path).write_text(text)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
