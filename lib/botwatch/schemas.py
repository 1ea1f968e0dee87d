"""Spark schemas of the input contract and the check run where stages meet."""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import tables as t

ACCOUNTS_SCHEMA = T.StructType(
    [
        T.StructField(t.ACCOUNT_ID, T.LongType(), False),
        T.StructField(t.CREATED_AT, T.TimestampType(), True),
        T.StructField(t.COUNTRY, T.StringType(), True),
        T.StructField(t.VERIFIED, T.BooleanType(), True),
        T.StructField(t.PROFILE_COMPLETENESS, T.DoubleType(), True),
        T.StructField(t.SIGNUP_IP_HASH, T.StringType(), True),
        T.StructField(t.SIGNUP_DEVICE_ID, T.StringType(), True),
    ]
)

EVENTS_SCHEMA = T.StructType(
    [
        T.StructField(t.ACCOUNT_ID, T.LongType(), False),
        T.StructField(t.EVENT_TS, T.TimestampType(), False),
        T.StructField(t.EVENT_TYPE, T.StringType(), False),
        T.StructField(t.IP_HASH, T.StringType(), True),
        T.StructField(t.DEVICE_ID, T.StringType(), True),
        T.StructField(t.EVENT_DATE, T.DateType(), False),
    ]
)

EDGES_SCHEMA = T.StructType(
    [
        T.StructField(t.SRC, T.LongType(), False),
        T.StructField(t.DST, T.LongType(), False),
        T.StructField(t.CREATED_AT, T.TimestampType(), True),
    ]
)

LABELS_SCHEMA = T.StructType(
    [
        T.StructField(t.ACCOUNT_ID, T.LongType(), False),
        T.StructField(t.LABEL, T.IntegerType(), False),
        T.StructField(t.SOURCE, T.StringType(), False),
        T.StructField(t.LABELED_AT, T.TimestampType(), False),
    ]
)

TRUTH_SCHEMA = T.StructType(
    [
        T.StructField(t.ACCOUNT_ID, T.LongType(), False),
        T.StructField(t.FAMILY, T.StringType(), False),
    ]
)

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField(t.TABLE, T.StringType(), False),
        T.StructField(t.REASON, T.StringType(), False),
        T.StructField(t.RUN_DATE, T.DateType(), False),
        T.StructField(t.ROW_JSON, T.StringType(), True),
        # ingest or validate; a table written before this column existed gets it nullable (null in its old rows).
        T.StructField(t.STEP, T.StringType(), False),
    ]
)

INPUT_SCHEMAS = {
    t.ACCOUNTS: ACCOUNTS_SCHEMA,
    t.EVENTS: EVENTS_SCHEMA,
    t.EDGES: EDGES_SCHEMA,
    t.LABELS: LABELS_SCHEMA,
}

# Columns a producer must deliver for each input table (others are optional or extra).
REQUIRED_COLUMNS = {
    t.ACCOUNTS: (t.ACCOUNT_ID, t.CREATED_AT, t.COUNTRY, t.VERIFIED, t.PROFILE_COMPLETENESS),
    t.EVENTS: (t.ACCOUNT_ID, t.EVENT_TS, t.EVENT_TYPE, t.IP_HASH, t.DEVICE_ID),
    t.EDGES: (t.SRC, t.DST, t.CREATED_AT),
    t.LABELS: (t.ACCOUNT_ID, t.LABEL, t.SOURCE, t.LABELED_AT),
}


class SchemaMismatchError(ValueError):
    """A DataFrame handed from one stage to the next lacks columns or has the wrong types."""


def quoted(name: str) -> str:
    """``name`` as a Spark SQL identifier: backticked, so a name with dots or spaces (users' columns) is
    read whole."""
    return "`" + name.replace("`", "``") + "`"


def named_col(name: str) -> Column:
    """The column called ``name``, whatever characters it holds."""
    return F.col(quoted(name))


def require_columns(df: DataFrame, required: dict[str, T.DataType] | tuple[str, ...], where: str) -> DataFrame:
    """Check ``df`` has ``required`` columns (and types, when given as a mapping); return ``df``.

    Raises :class:`SchemaMismatchError` listing what is missing and what was found.
    """
    found = {f.name: f.dataType for f in df.schema.fields}
    names = required.keys() if isinstance(required, dict) else required
    missing = [c for c in names if c not in found]
    wrong = (
        [f"{c} is {found[c].simpleString()}, want {typ.simpleString()}" for c, typ in required.items()
         if c in found and found[c] != typ]
        if isinstance(required, dict)
        else []
    )
    if missing or wrong:
        problems = []
        if missing:
            problems.append(f"missing columns {missing}")
        if wrong:
            problems.append("wrong types: " + "; ".join(wrong))
        raise SchemaMismatchError(
            f"{where}: {', '.join(problems)}. Found columns: {sorted(found)}. "
            "Produce the input with the step before (or `botwatch ingest`)."
        )
    return df
