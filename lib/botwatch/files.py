"""Small files the pipeline keeps beside its Delta tables (model artifacts, run reports, the run lock),
read and written on the driver: local paths with Python's own IO, every other URI (HDFS, S3A, ABFS, GCS)
through Spark's Hadoop ``FileSystem``, so they reach whatever store the tables are on, with the session's
own credentials and settings. (fsspec, used before, needed a package per store and credentials of its
own: ``s3a://`` failed without s3fs, and it knows no ``abfss://``.)

Usage::

    write_bytes(f"{warehouse}/models/stage1_xgb/3/model.json", raw)
    raw = read_bytes(f"{warehouse}/models/stage1_xgb/3/model.json")  # FileNotFoundError when absent
"""
from __future__ import annotations

import os
import uuid

from pyspark.sql import SparkSession

from botwatch.config import is_uri
from botwatch.delta_io import hadoop_fs


class NoSparkSessionError(RuntimeError):
    """A file on a Hadoop file system was read or written in a process with no SparkSession."""


def local_path(path: str) -> str | None:
    """The OS path of a local path (``file:``, or no scheme where Hadoop's default file system is the
    local one); None for HDFS, S3A, ABFS, ..."""
    if path.startswith("file:"):  # file:/x and file:///x
        return "/" + path[len("file:"):].lstrip("/")
    # Any other scheme, with or without "//": hdfs:/wh and dbfs:/mnt are not on the driver's disk.
    return None if is_uri(path) or not _default_fs_is_local() else path


def _default_fs_is_local() -> bool:
    """Whether Spark resolves a path with no scheme on the local disk. On a cluster whose
    ``fs.defaultFS`` is HDFS (or DBFS), ``/data/wh`` is a path there: the tables go there, so the
    artifacts, reports and the run lock beside them must too. With no Spark in this process, local."""
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    if context is None:
        return True
    default = context._jsc.hadoopConfiguration().get("fs.defaultFS")  # type: ignore[union-attr]
    return default is None or default.startswith("file:")


def _session(spark: SparkSession | None, path: str) -> SparkSession:
    session = spark or SparkSession.getActiveSession()
    if session is None:
        raise NoSparkSessionError(
            f"{path} is not on a local disk: it is reached through Spark's Hadoop file systems, and this process "
            "has no SparkSession; build one first (botwatch.spark.get_spark)")
    return session


def read_bytes(path: str, spark: SparkSession | None = None) -> bytes:
    """The file's bytes; FileNotFoundError when there is none."""
    local = local_path(path)
    if local is not None:
        with open(local, "rb") as src:
            return src.read()
    session = _session(spark, path)
    fs, jpath = hadoop_fs(session, path)
    try:
        stream = fs.open(jpath)
        try:
            return bytes(session._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))  # type: ignore[union-attr]
        finally:
            stream.close()
    except Exception as exc:
        # py4j wraps Hadoop's FileNotFoundException; opened, the file may go before the read (S3A opens lazily).
        if not_found(exc) or not fs.exists(jpath):
            raise FileNotFoundError(path) from exc
        raise


def not_found(exc: Exception) -> bool:
    """Whether a Hadoop call failed (through py4j) because its file is not there."""
    return "java.io.FileNotFoundException" in str(exc)


def write_bytes(path: str, data: bytes, spark: SparkSession | None = None) -> None:
    """Write the file whole, replacing any there (folders made as needed); a new file, so its
    modification time is now on any file system."""
    local = local_path(path)
    if local is not None:
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        tmp = f"{local}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as out:
            out.write(data)
        os.replace(tmp, local)  # readers see the old file or the new one, never half of it
        return
    fs, jpath = hadoop_fs(_session(spark, path), path)
    out = fs.create(jpath, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()


def exists(path: str, spark: SparkSession | None = None) -> bool:
    local = local_path(path)
    if local is not None:
        return os.path.exists(local)
    fs, jpath = hadoop_fs(_session(spark, path), path)
    return bool(fs.exists(jpath))
