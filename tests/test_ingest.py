"""`botwatch ingest`: every kind of bad input lands in quarantine with its reason, checked row by
row against a reference classifier written here in plain pandas/Python on the input files; rows in
= loaded + quarantined; extra account columns; idempotent re-ingest; missing file/column errors."""
from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import ingest
from botwatch import tables as t
from botwatch.config import PROJECT_ROOT
from botwatch.delta_io import read_table
from botwatch.ingest import (
    BAD_TYPE,
    DUPLICATE_ACCOUNT,
    DUPLICATE_EVENT,
    EVENT_DATE_MISMATCH,
    LABEL_NOT_BINARY,
    MALFORMED_ROW,
    NULL_KEY,
    REASONS,
    ROWS_LOADED,
    ROWS_QUARANTINED,
    SELF_FOLLOW,
    TIMESTAMP_BEFORE_2000,
    TIMESTAMP_IN_FUTURE,
    UNKNOWN_ACCOUNT,
    UNKNOWN_EVENT_TYPE,
    UNKNOWN_LABEL_SOURCE,
    IngestInputError,
    MostlyBadInputError,
    ingest_files,
    open_inputs,
    resolve_input,
    validate_table,
)
from botwatch.schemas import INPUT_SCHEMAS, QUARANTINE_SCHEMA

RUN = date(2024, 6, 30)
COUNTRIES = ("US", "BR", "DE", "IN", "JP")
GOOD_ACCOUNTS = [*range(1, 31), 105, 106]


# ---------------------------------------------------------------- input files (pandas)


def _account(i, **over):
    row = {
        t.ACCOUNT_ID: i,
        t.CREATED_AT: datetime(2021, 1, 1) + timedelta(days=11 * i, hours=i, microseconds=i),
        t.COUNTRY: COUNTRIES[i % len(COUNTRIES)],
        t.VERIFIED: i % 3 == 0,
        t.PROFILE_COMPLETENESS: round(i / 40, 3),
        t.SIGNUP_IP_HASH: f"ip{i % 7}",
        t.SIGNUP_DEVICE_ID: f"dev{i}",
        "followers": 10 * i,
        "karma": i / 8,
        "is_premium": i % 4 == 0,
        "bio": f"hello {i}",
    }
    row.update(over)
    return row


def accounts_rows(fmt):
    rows = [_account(i) for i in range(1, 31)]
    rows += [
        _account(100, account_id=None),  # null_key
        _account(101, account_id=31.5),  # bad_type: an id must be whole
        _account(102, created_at=datetime(2030, 1, 1)),  # timestamp_in_future
        _account(103, created_at=datetime(2024, 7, 1)),  # the first instant after the run date
        _account(104, created_at=datetime(1995, 5, 5)),  # timestamp_before_2000
        _account(5, country="XX"),  # duplicate_account (its JSON sorts after the first copy's, which loads)
        _account(105, created_at=datetime(2024, 6, 30, 23, 59, 59)),  # last instant of the run date: good
        _account(106, created_at=None, verified=None, profile_completeness=None),  # nullable: good
    ]
    if fmt == "csv":
        rows += [
            _account(107, account_id="abc"),
            _account(108, verified="maybe"),
            _account(109, profile_completeness="high"),
            _account(110, created_at="2024-13-45 10:00:00"),
            # pandas writes a boolean column with gaps as 1.0/0.0: good; 2.0 is not a boolean
            _account(111, verified="1.0"),
            _account(112, verified="0.0"),
            _account(113, verified="2.0"),
        ]
    return rows


def events_rows(fmt):
    rng = np.random.default_rng(3)
    rows = []
    for acc in GOOD_ACCOUNTS:
        for k in range(int(rng.integers(3, 15))):
            ts = datetime(2024, 6, 1) + timedelta(seconds=int(rng.integers(0, 29 * 86400)), microseconds=k)
            rows.append(
                {
                    t.ACCOUNT_ID: acc,
                    t.EVENT_TS: ts,
                    t.EVENT_TYPE: t.EVENT_TYPES[int(rng.integers(0, 5))],
                    t.IP_HASH: f"ip{int(rng.integers(0, 9))}" if k % 5 else None,  # nullable
                    t.DEVICE_ID: f"dev{acc}",
                    "client": "web",  # an extra column: dropped, but kept in the quarantine JSON
                }
            )
    ok = dict(rows[0])
    bad = [
        {**ok, t.ACCOUNT_ID: None},  # null_key
        {**ok, t.EVENT_TS: None},  # null_key
        {**ok, t.EVENT_TYPE: None},  # null_key
        {**ok, t.EVENT_TS: datetime(2024, 7, 1)},  # timestamp_in_future
        {**ok, t.EVENT_TS: datetime(2024, 6, 30, 23, 59, 59, 999999)},  # good: last microsecond of the run date
        {**ok, t.EVENT_TS: datetime(1999, 12, 31, 23, 59, 59)},  # timestamp_before_2000
        {**ok, t.ACCOUNT_ID: 999},  # unknown_account
        {**ok, t.ACCOUNT_ID: 102},  # unknown_account: that account was quarantined
        {**ok, t.ACCOUNT_ID: 999, t.EVENT_TS: datetime(2031, 1, 1)},  # both: the first reason wins (future)
        {**ok, t.EVENT_TYPE: "retweet"},  # unknown_event_type
        {**ok, t.EVENT_TYPE: "Post"},  # unknown_event_type (case matters)
        dict(rows[3]),
        dict(rows[3]),  # two exact copies of rows[3]: duplicate_event x2
        dict(rows[7]),  # duplicate_event
    ]
    if fmt == "csv":
        bad += [{**ok, t.EVENT_TS: "not-a-date"}, {**ok, t.ACCOUNT_ID: "x1"}, {**ok, t.ACCOUNT_ID: "7.5"}]
    else:
        bad += [{**ok, t.ACCOUNT_ID: 7.5}]
    return rows + bad


def edges_rows(fmt):
    rng = np.random.default_rng(5)
    pairs = {(int(a), int(b)) for a, b in rng.choice(GOOD_ACCOUNTS, size=(160, 2)) if a != b}
    rows = [
        {t.SRC: a, t.DST: b, t.CREATED_AT: datetime(2023, 1, 1) + timedelta(hours=(a * 31 + b) % 9000)}
        for a, b in sorted(pairs)
    ]
    rows += [
        {t.SRC: None, t.DST: 2, t.CREATED_AT: datetime(2024, 1, 1)},  # null_key
        {t.SRC: 1, t.DST: None, t.CREATED_AT: datetime(2024, 1, 1)},  # null_key
        {t.SRC: 1, t.DST: 999, t.CREATED_AT: datetime(2024, 1, 1)},  # unknown_account
        {t.SRC: 102, t.DST: 1, t.CREATED_AT: datetime(2024, 1, 1)},  # unknown_account
        {t.SRC: 999, t.DST: 999, t.CREATED_AT: datetime(2024, 1, 1)},  # unknown_account before self_follow
        {t.SRC: 3, t.DST: 3, t.CREATED_AT: datetime(2024, 1, 1)},  # self_follow
        {t.SRC: 3, t.DST: 4, t.CREATED_AT: datetime(2024, 8, 1)},  # timestamp_in_future
        {t.SRC: 3, t.DST: 5, t.CREATED_AT: datetime(1980, 8, 1)},  # timestamp_before_2000
        {t.SRC: 4, t.DST: 3, t.CREATED_AT: None},  # good: created_at is nullable
    ]
    if fmt == "csv":
        rows += [{t.SRC: "abc", t.DST: 1, t.CREATED_AT: datetime(2024, 1, 1)}]
    return rows


def labels_rows(fmt):
    rows = [
        {
            t.ACCOUNT_ID: acc,
            t.LABEL: int(acc % 4 == 0),
            t.SOURCE: t.LABEL_SOURCES[k % 4],
            t.LABELED_AT: datetime(2024, 6, 1 + k % 28, 12),
        }
        for k, acc in enumerate(GOOD_ACCOUNTS + GOOD_ACCOUNTS[:10])
    ]
    ok = dict(rows[0])
    rows += [
        {**ok, t.LABEL: 2},  # label_not_binary
        {**ok, t.LABEL: -1},  # label_not_binary
        {**ok, t.LABEL: 2, t.SOURCE: "oracle"},  # label_not_binary comes first
        {**ok, t.SOURCE: "oracle"},  # unknown_label_source
        {**ok, t.SOURCE: None},  # null_key
        {**ok, t.LABELED_AT: None},  # null_key
        {**ok, t.LABELED_AT: datetime(2024, 7, 2)},  # timestamp_in_future
        {**ok, t.ACCOUNT_ID: 999},  # unknown_account
    ]
    rows += [{**ok, t.LABEL: "yes"}, {**ok, t.LABEL: "1.0"}] if fmt == "csv" else [{**ok, t.LABEL: 0.5}]
    return rows


BUILDERS = {t.ACCOUNTS: accounts_rows, t.EVENTS: events_rows, t.EDGES: edges_rows, t.LABELS: labels_rows}


def _csv_text(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, float) and value.is_integer():
        return str(value)  # "5.0", as pandas writes an integer column that has gaps
    return str(value)


def write_input(folder: Path, table: str, fmt: str, rows=None) -> str:
    """Write a table as pandas would: Parquet with pandas' own dtypes (nanosecond timestamps),
    or CSV text. ``fmt="parquet_dir"`` writes a folder of three Parquet files."""
    rows = BUILDERS[table](fmt) if rows is None else rows
    if fmt == "csv":
        path = folder / f"{table}.csv"
        pd.DataFrame([{k: _csv_text(v) for k, v in r.items()} for r in rows], dtype=object).to_csv(path, index=False)
        if table == t.EVENTS:
            # malformed_row: an unquoted comma inside a value (one field too many), a line cut short
            with open(path, "a") as fh:
                fh.write("1,2024-06-03 10:00:00,post,ip1,dev,9,web\n2,2024-06-03 11:00:00,like\n")
        return str(path)
    pdf = pd.DataFrame(rows)
    for column in pdf.columns:
        if any(isinstance(v, datetime) for v in pdf[column]):
            pdf[column] = pd.to_datetime(pdf[column])
    if fmt == "parquet":
        path = folder / f"{table}.parquet"
        pdf.to_parquet(path, index=False)
        return str(path)
    path = folder / table
    path.mkdir()
    for k, part in enumerate(np.array_split(np.arange(len(pdf)), 3)):
        pdf.iloc[part].to_parquet(path / f"part-{k}.parquet", index=False)
    return str(path)


# ---------------------------------------------------------------- the reference (plain Python)

MISSING, BAD = object(), object()
MALFORMED = "__malformed__"  # read_back: a CSV line with the wrong number of fields, as text (else None)
BOOL_WORDS = {"true": True, "t": True, "yes": True, "y": True, "1": True,
              "false": False, "f": False, "no": False, "n": False, "0": False}  # Spark's string -> boolean


def _missing(v):
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT


def _parse(v, typ):
    if _missing(v):
        return MISSING
    try:
        if isinstance(typ, (T.LongType, T.IntegerType)):
            x = float(v)
            return int(x) if math.isfinite(x) and x.is_integer() else BAD
        if isinstance(typ, T.DoubleType):
            return float(v)
        if isinstance(typ, T.BooleanType):
            if isinstance(v, (bool, np.bool_)):
                return v
            word = BOOL_WORDS.get(str(v).strip().lower())
            return word if word is not None else {0.0: False, 1.0: True}.get(float(v), BAD)
        if isinstance(typ, T.TimestampType):
            ts = pd.Timestamp(v)
            return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return str(v)
    except (ValueError, TypeError):
        return BAD


def reference(table, pdf, known=None):
    """(reason or None per row, parsed contract values per row), by the documented first-reason rules."""
    fields = [f for f in INPUT_SCHEMAS[table].fields if f.name != t.EVENT_DATE]
    end = pd.Timestamp(RUN + timedelta(days=1), tz="UTC")
    start = pd.Timestamp("2000-01-01", tz="UTC")
    reasons, parsed = [], []
    for rec in pdf.to_dict("records"):
        if rec.get(MALFORMED):
            reasons.append(MALFORMED_ROW)
            parsed.append({})
            continue
        p = {f.name: _parse(rec.get(f.name), f.dataType) for f in fields}
        stamps = [v for f in fields if isinstance(f.dataType, T.TimestampType) for v in [p[f.name]]
                  if v is not MISSING and v is not BAD]
        ids = [p[c] for c in ((t.SRC, t.DST) if table == t.EDGES else (t.ACCOUNT_ID,))]
        if any(p[f.name] is MISSING for f in fields if not f.nullable):
            r = NULL_KEY
        elif any(v is BAD for v in p.values()):
            r = BAD_TYPE
        elif any(s >= end for s in stamps):
            r = TIMESTAMP_IN_FUTURE
        elif any(s < start for s in stamps):
            r = TIMESTAMP_BEFORE_2000
        elif known is not None and table != t.ACCOUNTS and any(i not in known for i in ids):
            r = UNKNOWN_ACCOUNT
        elif table == t.EVENTS and p[t.EVENT_TYPE] not in t.EVENT_TYPES:
            r = UNKNOWN_EVENT_TYPE
        elif table == t.EDGES and p[t.SRC] == p[t.DST]:
            r = SELF_FOLLOW
        elif table == t.LABELS and p[t.LABEL] not in (0, 1):
            r = LABEL_NOT_BINARY
        elif table == t.LABELS and p[t.SOURCE] not in t.LABEL_SOURCES:
            r = UNKNOWN_LABEL_SOURCE
        else:
            r = None
        reasons.append(r)
        parsed.append({k: (None if v is MISSING else v) for k, v in p.items()})
    if table in (t.EVENTS, t.ACCOUNTS):
        seen = set()
        keys = [f.name for f in fields] if table == t.EVENTS else [t.ACCOUNT_ID]
        for i, p in enumerate(parsed):
            if reasons[i] is None:
                key = tuple(p[k] for k in keys)
                if key in seen:
                    reasons[i] = DUPLICATE_EVENT if table == t.EVENTS else DUPLICATE_ACCOUNT
                seen.add(key)
    return reasons, parsed


def read_back(path: str) -> pd.DataFrame:
    """An input file as written (CSV: every value text, only empty fields are null; a line whose
    field count differs from the header's is flagged ``MALFORMED``)."""
    if path.endswith(".csv"):
        with open(path, newline="") as fh:
            header, *lines = list(csv.reader(fh))
        rows = [{**{c: v or None for c, v in zip(header, line, strict=False)},
                 MALFORMED: ",".join(line) if len(line) != len(header) else None} for line in lines]
        return pd.DataFrame(rows, columns=[*header, MALFORMED], dtype=object)
    return pd.read_parquet(path)


def references(paths: dict[str, str]):
    out = {}
    acc_reasons, acc_parsed = reference(t.ACCOUNTS, read_back(paths[t.ACCOUNTS]))
    out[t.ACCOUNTS] = (acc_reasons, acc_parsed)
    known = {p[t.ACCOUNT_ID] for r, p in zip(acc_reasons, acc_parsed, strict=True) if r is None}
    for table in (t.EVENTS, t.EDGES, t.LABELS):
        if table in paths:
            out[table] = reference(table, read_back(paths[table]), known)
    return out


def delta_pdf(warehouse: str, table: str) -> pd.DataFrame:
    """A Delta table read without Spark (deltalake), for an independent look at what was written."""
    return DeltaTable(f"{warehouse}/{table}").to_pandas()


def _norm(v):
    return None if _missing(v) else v


def check_counts(refs, result):
    """Counts per table and reason against the reference; rows in = loaded + quarantined."""
    assert set(result) == set(refs)
    for table, (reasons, _) in refs.items():
        got = result[table]
        assert got["reasons"] == dict(Counter(r for r in reasons if r is not None)), table
        assert got["rows_in"] == len(reasons), table
        assert got["rows_loaded"] == sum(r is None for r in reasons), table
        assert got["rows_in"] == got["rows_loaded"] + got["rows_quarantined"], table


def check_against_reference(warehouse, paths, result):
    refs = references(paths)
    check_counts(refs, result)
    for table, (reasons, parsed) in refs.items():
        # What loaded is exactly the reference's good rows (read with deltalake, not Spark).
        cols = [f.name for f in INPUT_SCHEMAS[table].fields if f.name != t.EVENT_DATE]
        loaded = delta_pdf(warehouse, table)
        got_rows = Counter(tuple(_norm(v) for v in row) for row in loaded[cols].itertuples(index=False))
        want_rows = Counter(tuple(p[c] for c in cols) for r, p in zip(reasons, parsed, strict=True) if r is None)
        assert got_rows == want_rows, table
    # The quarantine slice holds exactly those reasons.
    q = delta_pdf(warehouse, t.QUARANTINE)
    q = q[q[t.RUN_DATE] == RUN]
    got_q = Counter(zip(q[t.TABLE], q[t.REASON], strict=True))
    want_q = Counter((table, r) for table, (reasons, _) in refs.items() for r in reasons if r is not None)
    assert got_q == want_q
    return refs


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def mixed(spark, tmp_path_factory):
    """One ingest of accounts.parquet, events.csv, edges.parquet, labels.csv."""
    folder = tmp_path_factory.mktemp("ingest_mixed")
    warehouse = str(folder / "warehouse")
    fmts = {t.ACCOUNTS: "parquet", t.EVENTS: "csv", t.EDGES: "parquet", t.LABELS: "csv"}
    paths = {table: write_input(folder, table, fmt) for table, fmt in fmts.items()}
    notes: list[str] = []
    result = ingest_files(spark, warehouse, **paths, run_date=RUN, echo=notes.append)
    return {"warehouse": warehouse, "paths": paths, "result": result, "notes": notes}


def test_every_bad_row_quarantined_with_reason_and_counts_add_up(mixed):
    check_against_reference(mixed["warehouse"], mixed["paths"], mixed["result"])
    # Every reason of the contract occurred at least once across the tables.
    seen = {r for c in mixed["result"].values() for r in c["reasons"]}
    assert seen == set(REASONS) - {EVENT_DATE_MISMATCH}  # validate's own: ingest derives event_date


def test_quarantine_row_json_is_the_original_row(mixed, spark):
    """For the CSV inputs each quarantined row's JSON is its text row (extras included), with the
    reason the reference gives that row."""
    q = read_table(spark, mixed["warehouse"], t.QUARANTINE)
    assert [(f.name, f.dataType) for f in q.schema] == [(f.name, f.dataType) for f in QUARANTINE_SCHEMA]
    assert {r[0] for r in q.select(t.STEP).distinct().collect()} == {"ingest"}
    refs = references(mixed["paths"])
    for table in (t.EVENTS, t.LABELS):
        rows = q.where((F.col(t.TABLE) == table) & (F.col(t.RUN_DATE) == RUN)).select(t.REASON, t.ROW_JSON).collect()
        got = Counter((r[t.REASON], json.dumps(json.loads(r[t.ROW_JSON]), sort_keys=True)) for r in rows)
        pdf = read_back(mixed["paths"][table])
        # A malformed line is kept as read, in the column Spark gives it.
        records = [{"_corrupt_record": rec[MALFORMED]} if rec.get(MALFORMED)
                   else {k: None if _missing(v) else v for k, v in rec.items() if k != MALFORMED}
                   for rec in pdf.to_dict("records")]
        want = Counter((r, json.dumps(rec, sort_keys=True))
                       for r, rec in zip(refs[table][0], records, strict=True) if r is not None)
        assert got == want, table


def test_loaded_tables_have_the_contract_schema(mixed, spark):
    wh = mixed["warehouse"]
    for table in (t.EVENTS, t.EDGES, t.LABELS):
        # (Reading Delta makes every column nullable; the written schema says NOT NULL where the contract does.)
        got = read_table(spark, wh, table).schema
        # The events file has an extra column (client): kept as its hash, which tells such events apart.
        extra = [(t.SOURCE_EXTRAS_HASH, T.LongType())] if table == t.EVENTS else []
        assert [(f.name, f.dataType) for f in got] == [(f.name, f.dataType) for f in INPUT_SCHEMAS[table]] + extra
    events = read_table(spark, wh, t.EVENTS)
    assert events.where(F.col(t.EVENT_DATE) != F.to_date(t.EVENT_TS)).count() == 0
    # Partitioned by event_date (read from the Delta log without Spark).
    assert DeltaTable(f"{wh}/{t.EVENTS}").metadata().partition_columns == [t.EVENT_DATE]
    # The last microsecond of the run date loads, into the run date's partition.
    last = events.where(F.col(t.EVENT_TS) == F.lit("2024-06-30T23:59:59.999999Z").cast("timestamp"))
    assert [r[t.EVENT_DATE] for r in last.collect()] == [RUN]


def test_extra_numeric_account_columns_kept_string_dropped(mixed, spark):
    accounts = read_table(spark, mixed["warehouse"], t.ACCOUNTS)
    types = dict(accounts.dtypes)
    assert [f.name for f in accounts.schema.fields[:7]] == [f.name for f in INPUT_SCHEMAS[t.ACCOUNTS].fields]
    assert (types["followers"], types["karma"], types["is_premium"]) == ("bigint", "double", "boolean")
    assert "bio" not in types
    assert any("accounts" in n and "bio" in n for n in mixed["notes"])
    assert any("events" in n and "client" in n for n in mixed["notes"])
    got = {r[t.ACCOUNT_ID]: (r["followers"], r["karma"], r["is_premium"]) for r in accounts.collect()}
    want = {i: (10 * i, i / 8, i % 4 == 0) for i in GOOD_ACCOUNTS}
    assert got == want


def test_other_formats_validate_like_the_reference(spark, tmp_path):
    """accounts.csv, a folder of Parquet events, edges.csv, labels.parquet: validated (not written)
    through the same readers, against the reference; CSV extras are typed from their text."""
    fmts = {t.ACCOUNTS: "csv", t.EVENTS: "parquet_dir", t.EDGES: "csv", t.LABELS: "parquet"}
    paths = {table: write_input(tmp_path, table, fmt) for table, fmt in fmts.items()}
    for k, part in enumerate(sorted(Path(paths[t.EVENTS]).iterdir())):
        part.rename(part.with_name(f"{k:06d}_0"))  # Hive's names: a Parquet folder's files need no suffix
    # An optional contract column may be absent: it loads as nulls.
    pd.read_csv(paths[t.ACCOUNTS], dtype=str).drop(columns=[t.SIGNUP_DEVICE_ID]).to_csv(paths[t.ACCOUNTS], index=False)
    with open(paths[t.ACCOUNTS], "a") as fh:
        # malformed_row: a stray comma in the signup IP shifts text into followers and is_premium, which
        # must still be typed from the good rows
        fh.write("111,2021-01-01 00:00:00,US,true,0.5,ip,x,1110,0.5,false,hello\n")
    result, values = {}, {}
    with open_inputs(spark, paths, echo=lambda _: None) as raw:
        known = None
        for table in (t.ACCOUNTS, t.EVENTS, t.EDGES, t.LABELS):
            good, bad = validate_table(raw[table], table, RUN, known_accounts=known)
            if table == t.ACCOUNTS:
                known = good.select(t.ACCOUNT_ID).localCheckpoint()
                types = dict(good.dtypes)
                assert (types["followers"], types["karma"], types["is_premium"]) == ("double", "double", "boolean")
                assert "bio" not in types
                assert good.where(F.col(t.SIGNUP_DEVICE_ID).isNotNull()).count() == 0
            reasons = {r[t.REASON]: r["count"] for r in bad.groupBy(t.REASON).count().collect()}
            loaded = good.count()
            result[table] = {"rows_in": raw[table].count(), "rows_loaded": loaded,
                             "rows_quarantined": sum(reasons.values()), "reasons": reasons}
            cols = [f.name for f in INPUT_SCHEMAS[table].fields if f.name != t.EVENT_DATE]
            # Spark's timestamps come naive, in the session's time zone (UTC); the reference's carry UTC.
            values[table] = Counter(
                tuple(v.tz_localize("UTC") if isinstance(v, pd.Timestamp) else _norm(v) for v in row)
                for row in good.select(*cols).toPandas().itertuples(index=False))
    refs = references(paths)
    check_counts(refs, result)
    # The values, not only the counts: timestamps, booleans and ids as the reference parsed them.
    for table, (reasons, parsed) in refs.items():
        cols = [f.name for f in INPUT_SCHEMAS[table].fields if f.name != t.EVENT_DATE]
        want = Counter(tuple(p[c] for c in cols) for r, p in zip(reasons, parsed, strict=True) if r is None)
        assert values[table] == want, (table, sorted(values[table], key=str)[:2], sorted(want, key=str)[:2])


def _small_inputs(tmp_path, accounts, edges=None):
    """Parquet files: ``accounts`` (pandas) of accounts 1 and 2, an event of each, ``edges`` (default 1 -> 2)."""
    files = {
        t.ACCOUNTS: accounts,
        t.EVENTS: pd.DataFrame({t.ACCOUNT_ID: [1, 2], t.EVENT_TS: [datetime(2024, 6, 29, 8)] * 2,
                                t.EVENT_TYPE: ["post", "like"], t.IP_HASH: ["a", "b"], t.DEVICE_ID: ["c", "d"]}),
        t.EDGES: edges if edges is not None else pd.DataFrame(
            {t.SRC: [1], t.DST: [2], t.CREATED_AT: [datetime(2024, 6, 1)]}),
    }
    paths = {table: str(tmp_path / f"{table}.parquet") for table in files}
    for table, pdf in files.items():
        pdf.to_parquet(paths[table])
    return paths


def test_ingest_without_labels_and_a_failed_write(spark, tmp_path, monkeypatch):
    from botwatch.validate import check_schemas

    # Two edges: 1 -> 2 and a self-follow.
    edges = pd.DataFrame({t.SRC: [1, 2], t.DST: [2, 2], t.CREATED_AT: [datetime(2024, 6, 1)] * 2})
    paths = _small_inputs(tmp_path, pd.DataFrame([_account(1), _account(2)]), edges)
    wh = str(tmp_path / "wh")
    # A write that fails after validation: the bad row (a self-follow) is already in quarantine.
    real_write = ingest.write_table

    def failing(df, warehouse, table, **kw):
        if table == t.EDGES:
            raise OSError("injected: storage went away")
        return real_write(df, warehouse, table, **kw)

    monkeypatch.setattr(ingest, "write_table", failing)
    with pytest.raises(OSError, match="injected"):
        ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=lambda _: None)
    assert [(r[t.TABLE], r[t.REASON]) for r in read_table(spark, wh, t.QUARANTINE).collect()] == [
        (t.EDGES, SELF_FOLLOW)]
    monkeypatch.undo()
    # Without a labels file a young platform still gets every input table: labels empty, so the run starts.
    ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=lambda _: None)
    frames = check_schemas(spark, wh)
    assert frames[t.LABELS].count() == 0 and frames[t.EDGES].count() == 1


def test_a_mostly_bad_input_or_a_non_utc_session_writes_nothing(spark, tmp_path):
    """Ingest replaces the tables whole: an empty accounts file, or accounts whose ids match none of the
    events (every event an ``unknown_account``), would have emptied events, edges and labels. Refused
    before any write, like validate's bad-share stop; so is a session whose days are not UTC days."""
    from botwatch.spark import TIME_ZONE_KEY, SessionTimeZoneError, session_conf

    wh = str(tmp_path / "wh")
    paths = _small_inputs(tmp_path, pd.DataFrame([_account(1), _account(2)]))
    empty = pd.DataFrame([_account(1)]).iloc[:0]
    empty.to_parquet(paths[t.ACCOUNTS])
    with pytest.raises(MostlyBadInputError, match=r"accounts \(.*accounts.parquet\) has no good rows"):
        ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=lambda _: None)
    # 120 events of accounts 101..220, none in the accounts file (ids 1 and 2).
    pd.DataFrame([_account(1), _account(2)]).to_parquet(paths[t.ACCOUNTS])
    pd.DataFrame({t.ACCOUNT_ID: range(101, 221), t.EVENT_TS: [datetime(2024, 6, 29, 8)] * 120,
                  t.EVENT_TYPE: ["post"] * 120, t.IP_HASH: ["a"] * 120, t.DEVICE_ID: ["c"] * 120}
                 ).to_parquet(paths[t.EVENTS])
    with pytest.raises(MostlyBadInputError,
                       match=r"events .* has 120 bad rows of 120 \(over 50%\): unknown_account 120"):
        ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=lambda _: None)
    assert not Path(wh).exists()
    # Under the minimum row count a share is no basis: 119 bad of 120 loads with a higher minimum; 120 of 120
    # does not (no event at all would be left to score).
    with pytest.raises(MostlyBadInputError, match=r"events .* has no good rows: unknown_account 120"):
        ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=lambda _: None, bad_share_min_rows=121)
    one_good = pd.read_parquet(paths[t.EVENTS]).assign(**{t.ACCOUNT_ID: [1, *range(102, 221)]})
    one_good.to_parquet(paths[t.EVENTS])
    got = ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=lambda _: None, bad_share_min_rows=121)
    assert got[t.EVENTS][ROWS_QUARANTINED] == 119 and got[t.EVENTS][ROWS_LOADED] == 1
    # An export whose part files were copied three times is whole: two thirds are copies, none is missing.
    # 20 of its 60 events are of an unknown account: 20 bad of 60, however often copied (3 times: 60 of 100).
    whole = pd.DataFrame({t.ACCOUNT_ID: [1, 2, 999] * 20, t.EVENT_TS: [datetime(2024, 6, 29, 8, m // 3)
                                                                      for m in range(60)],
                          t.EVENT_TYPE: "post", t.IP_HASH: "a", t.DEVICE_ID: "c"})
    pd.concat([whole] * 3).to_parquet(paths[t.EVENTS])
    accounts = pd.DataFrame([_account(i) for i in range(1, 101)])
    pd.concat([accounts] * 3).to_parquet(paths[t.ACCOUNTS])
    got = ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=lambda _: None, bad_share_min_rows=60)
    assert got[t.EVENTS][ROWS_QUARANTINED] == 140 and got[t.EVENTS][ROWS_LOADED] == 40
    assert got[t.ACCOUNTS][ROWS_QUARANTINED] == 200 and got[t.ACCOUNTS][ROWS_LOADED] == 100
    # Another version of an account is no copy: an accounts history (each account in three countries) is refused.
    pd.DataFrame([_account(i, country=c) for i in range(1, 101) for c in ("DE", "FR", "US")]).to_parquet(
        paths[t.ACCOUNTS])
    with pytest.raises(MostlyBadInputError, match=r"accounts .* has 200 bad rows of 300 \(over 50%\): "
                                                  r"duplicate_account 200"):
        ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=lambda _: None, bad_share_min_rows=60)
    pd.DataFrame([_account(1), _account(2)]).to_parquet(paths[t.ACCOUNTS])
    # Copied three times, a mostly bad export is refused, its figures without the copies.
    pd.concat([whole.assign(**{t.ACCOUNT_ID: [1, 999, 998] * 20})] * 3).to_parquet(paths[t.EVENTS])
    with pytest.raises(MostlyBadInputError, match=r"events .* has 40 bad rows of 60 \(over 50%, not counting 120 "
                                                  r"copies of other rows\): unknown_account 40\."):
        ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=lambda _: None, bad_share_min_rows=60)
    # Bad text read as the same null is not one row: 60 timestamps in another format are 60 bad rows, not copies.
    events_csv = tmp_path / "events.csv"
    events_csv.write_text("account_id,event_ts,event_type,ip_hash,device_id\n" + "".join(
        [f"{1 + m % 2},2024-06-29 08:{m:02d}:00,post,a,c\n" for m in range(40)]
        + [f"1,29/06/2024 08:{m:02d},post,a,c\n" for m in range(60)]))
    with pytest.raises(MostlyBadInputError, match=r"events .* has 60 bad rows of 100 \(over 50%\): bad_type 60"):
        ingest_files(spark, wh, **{**paths, t.EVENTS: str(events_csv)}, labels=None, run_date=RUN,
                     echo=lambda _: None, bad_share_min_rows=60)
    # Nor is one placeholder repeated: 60 events whose timestamp is empty are 60 broken events, not one.
    events_csv.write_text("account_id,event_ts,event_type,ip_hash,device_id\n" + "".join(
        [f"{1 + m % 2},2024-06-29 08:{m:02d}:00,post,a,c\n" for m in range(40)] + ["1,,post,a,c\n"] * 60))
    with pytest.raises(MostlyBadInputError, match=r"events .* has 60 bad rows of 100 \(over 50%\): null_key 60"):
        ingest_files(spark, wh, **{**paths, t.EVENTS: str(events_csv)}, labels=None, run_date=RUN,
                     echo=lambda _: None, bad_share_min_rows=60)
    wh2 = str(tmp_path / "wh2")
    with session_conf(spark, {TIME_ZONE_KEY: "America/New_York"}), pytest.raises(SessionTimeZoneError):
        ingest_files(spark, wh2, **paths, labels=None, run_date=RUN, echo=lambda _: None)
    assert not Path(wh2).exists()


def test_file_uris_stay_uris_for_spark(spark, tmp_path):
    """``file:///x`` is a local file even where the cluster's default file system is HDFS: Spark gets the
    URI (a bare ``/x`` would be read from HDFS), and its footers are still checked locally (pandas'
    nanosecond timestamps)."""
    paths = _small_inputs(tmp_path, pd.DataFrame([_account(1), _account(2)]))
    uris = {table: Path(path).as_uri() for table, path in paths.items()}
    assert resolve_input(t.EVENTS, uris[t.EVENTS]) == (uris[t.EVENTS], "parquet")
    assert resolve_input(t.EVENTS, paths[t.EVENTS]) == (paths[t.EVENTS], "parquet")
    # Any other scheme is the cluster's, "//" or not (HDFS prints hdfs:/x): passed on, not looked for locally.
    for uri in ("hdfs:/data/events", "dbfs:/mnt/data/events", "s3a://b/data/events"):
        assert resolve_input(t.EVENTS, uri) == (uri, "parquet")
    wh = str(tmp_path / "wh")
    got = ingest_files(spark, wh, **uris, labels=None, run_date=RUN, echo=lambda _: None)
    assert {table: c[ROWS_LOADED] for table, c in got.items()} == {t.ACCOUNTS: 2, t.EVENTS: 2, t.EDGES: 1}
    assert read_table(spark, wh, t.EVENTS).agg(F.min(t.EVENT_TS)).first()[0] == datetime(2024, 6, 29, 8)


def test_int96_timestamps_and_a_delta_table_folder_load(spark, tmp_path, monkeypatch):
    """Hive, Impala and Spark write Parquet timestamps as INT96, which pyarrow reports as nanoseconds: they are
    Spark's to read, not nanoseconds to convert. A local folder that is a Delta table is read as Delta, its
    current version: as Parquet it would also hold the rows an overwrite removed."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    paths = _small_inputs(tmp_path, pd.DataFrame([_account(1), _account(2)]))
    pq.write_table(pa.Table.from_pandas(pd.read_parquet(paths[t.ACCOUNTS]), preserve_index=False),
                   paths[t.ACCOUNTS], use_deprecated_int96_timestamps=True)
    assert pq.read_schema(paths[t.ACCOUNTS]).field(t.CREATED_AT).type == pa.timestamp("ns")  # what pyarrow says
    events = tmp_path / "events_delta"
    def event_table(ids, hour):
        return pa.table({t.ACCOUNT_ID: pa.array(ids, pa.int64()),
                         t.EVENT_TS: pa.array([datetime(2024, 6, 29, hour)] * len(ids), pa.timestamp("us", tz="UTC")),
                         t.EVENT_TYPE: ["post"] * len(ids), t.IP_HASH: ["a"] * len(ids), t.DEVICE_ID: ["c"] * len(ids)})
    write_deltalake(str(events), event_table([1, 1, 2], 7))
    write_deltalake(str(events), event_table([1, 2], 8), mode="overwrite")  # version 1: two events at 08:00
    assert resolve_input(t.EVENTS, str(events)) == (str(events), "delta")
    wh = str(tmp_path / "wh")
    got = ingest_files(spark, wh, **{**paths, t.EVENTS: str(events)}, labels=None, run_date=RUN, echo=lambda _: None)
    assert {table: c[ROWS_LOADED] for table, c in got.items()} == {t.ACCOUNTS: 2, t.EVENTS: 2, t.EDGES: 1}
    assert {r[t.ACCOUNT_ID]: r[t.CREATED_AT] for r in read_table(spark, wh, t.ACCOUNTS).collect()} == {
        i: _account(i)[t.CREATED_AT] for i in (1, 2)}
    assert [r[0] for r in read_table(spark, wh, t.EVENTS).select(t.EVENT_TS).distinct().collect()] == [
        datetime(2024, 6, 29, 8)]
    # The same table on a cluster's file system (hdfs:, s3a:, dbfs:): found by Spark, not by a local look.
    monkeypatch.setattr(ingest, "_is_local", lambda path: str(events) not in path)
    assert resolve_input(t.EVENTS, str(events)) == (str(events), "parquet")
    wh2 = str(tmp_path / "wh2")
    got = ingest_files(spark, wh2, **{**paths, t.EVENTS: str(events)}, labels=None, run_date=RUN, echo=lambda _: None)
    assert got[t.EVENTS][ROWS_LOADED] == 2 and read_table(spark, wh2, t.EVENTS).count() == 2


def test_a_malformed_csv_line_beside_a_typed_extra_column_is_quarantined(spark, tmp_path):
    """A stray comma shifts text into a numeric extra column: that line is quarantined (Spark's ANSI cast of
    its text would have failed the whole load), the others load with the column typed."""
    paths = _small_inputs(tmp_path, pd.DataFrame([_account(1), _account(2)]))
    header = "account_id,created_at,country,verified,profile_completeness,signup_ip_hash,followers\n"
    accounts = tmp_path / "accounts.csv"
    accounts.write_text(header + "1,2021-01-01 00:00:00,US,true,0.5,ip1,10\n"
                        "2,2021-01-01 00:00:00,US,true,0.5,ip,x,20\n"
                        ",2021-01-01 00:00:00,US,true,0.5,ip3,00030\n")
    wh = str(tmp_path / "wh")
    got = ingest_files(spark, wh, **{**paths, t.ACCOUNTS: str(accounts)}, labels=None, run_date=RUN,
                       echo=lambda _: None)
    assert got[t.ACCOUNTS][ROWS_LOADED] == 1 and got[t.ACCOUNTS]["reasons"] == {MALFORMED_ROW: 1, NULL_KEY: 1}
    assert [tuple(r) for r in read_table(spark, wh, t.ACCOUNTS).select(t.ACCOUNT_ID, "followers").collect()] == [
        (1, 10.0)]
    # A quarantined row's JSON is its text: the column typed for the loaded rows, 00030 read as 30.0, is not.
    quarantined = read_table(spark, wh, t.QUARANTINE).where(F.col(t.REASON) == NULL_KEY).first()
    assert json.loads(quarantined[t.ROW_JSON]) == {
        t.ACCOUNT_ID: None, t.CREATED_AT: "2021-01-01 00:00:00", t.COUNTRY: "US", t.VERIFIED: "true",
        t.PROFILE_COMPLETENESS: "0.5", t.SIGNUP_IP_HASH: "ip3", "followers": "00030"}


def test_file_uris_with_a_space_and_an_excel_csv_with_a_byte_order_mark_load(spark, tmp_path):
    """``file:///data/my exports/...``: the path found is the path read (it was sent back %-encoded, which
    pyarrow and Spark then looked for literally). Excel's "CSV UTF-8" starts with a byte-order mark, which
    Spark skips: the header check must too, or it finds no ``account_id``."""
    folder = tmp_path / "my exports"
    folder.mkdir()
    paths = _small_inputs(folder, pd.DataFrame([_account(1), _account(2)]))
    accounts = folder / "accounts.csv"
    accounts.write_text("account_id,created_at,country,verified,profile_completeness,signup_ip_hash\n"
                        "1,2021-01-01 00:00:00,US,true,0.5,ip1\n2,2021-01-01 00:00:00,JP,false,0.25,ip2\n",
                        encoding="utf-8-sig")
    uris = {table: "file://" + path for table, path in {**paths, t.ACCOUNTS: str(accounts)}.items()}
    assert resolve_input(t.EVENTS, uris[t.EVENTS]) == (uris[t.EVENTS], "parquet")
    wh = str(tmp_path / "wh")
    got = ingest_files(spark, wh, **uris, labels=None, run_date=RUN, echo=lambda _: None)
    assert {table: c[ROWS_LOADED] for table, c in got.items()} == {t.ACCOUNTS: 2, t.EVENTS: 2, t.EDGES: 1}
    assert sorted(tuple(r) for r in read_table(spark, wh, t.ACCOUNTS).select(t.ACCOUNT_ID, t.COUNTRY).collect()) == [
        (1, "US"), (2, "JP")]


def test_ingest_into_a_simulated_warehouse_removes_its_truth(spark, tmp_path):
    """The simulated ground truth does not describe ingested inputs: left there, training gave the ingested
    accounts its families, and a later simulate of the same platform took the warehouse (models, partials,
    finished dates of the ingested data) for its own."""
    from botwatch.delta_io import commit_metadata, table_exists, write_table
    from botwatch.schemas import TRUTH_SCHEMA
    from botwatch.simulate.platform import WarehouseInUseError, _platform_meta, refuse_other_platform

    wh = str(tmp_path / "wh")
    meta = _platform_meta(7, 2, 3, RUN, {})
    with commit_metadata(spark, **meta):
        write_table(spark.createDataFrame([(1, "human"), (2, "botnet")], TRUTH_SCHEMA), wh, t.TRUTH)
    write_table(spark.createDataFrame([(RUN, "done")], "run_date date, status string"), wh, t.RUN_LOG)
    refuse_other_platform(spark, wh, meta)  # the same platform again: fine
    notes: list[str] = []
    ingest_files(spark, wh, **_small_inputs(tmp_path, pd.DataFrame([_account(1), _account(2)])), labels=None,
                 run_date=RUN, echo=notes.append)
    assert not table_exists(spark, wh, t.TRUTH) and any("removed truth" in n for n in notes), notes
    with pytest.raises(WarehouseInUseError, match="not simulated"):
        refuse_other_platform(spark, wh, meta)


def test_kept_columns_that_delta_cannot_name_are_renamed(spark, tmp_path):
    """Delta refuses spaces and ,;{}()= in column names: a platform's numeric ``Followers Count`` is kept as
    ``Followers_Count`` (never clashing with another column), said so, instead of failing the load."""
    accounts = pd.DataFrame([_account(1), _account(2)]).assign(
        **{"Followers Count": [5, 7], "karma(30d)": [0.5, 1.5], "a b": [1, 2], "a_b": [3, 4],
           "Follower count": [8, 9], "follower_count": [10, 11]})  # Spark's names are case-insensitive
    paths = _small_inputs(tmp_path, accounts)
    notes: list[str] = []
    wh = str(tmp_path / "wh")
    ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=notes.append)
    got = read_table(spark, wh, t.ACCOUNTS)
    assert {"Followers_Count", "karma_30d_", "a_b", "a_b_", "Follower_count_", "follower_count"} <= set(got.columns)
    rows = {r[t.ACCOUNT_ID]: (r["Followers_Count"], r["karma_30d_"], r["a_b_"], r["a_b"], r["Follower_count_"],
                              r["follower_count"]) for r in got.collect()}
    assert rows == {1: (5, 0.5, 1, 3, 8, 10), 2: (7, 1.5, 2, 4, 9, 11)}
    assert any("'Followers Count': 'Followers_Count'" in n and "'a b': 'a_b_'" in n for n in notes), notes


def test_a_csv_folder_whose_files_disagree_on_the_header_is_refused(spark, tmp_path):
    """Spark reads a folder of CSV files by the first file's header, by position: a file with its columns in
    another order would load IPs as devices. It is refused, naming the file, before anything is written."""
    accounts = pd.DataFrame([_account(1), _account(2)])
    paths = _small_inputs(tmp_path, accounts)
    folder = tmp_path / "events_csv"
    folder.mkdir()
    events = pd.read_parquet(paths[t.EVENTS])
    events.iloc[:1].to_csv(folder / "part-0.csv", index=False)
    swapped = [t.ACCOUNT_ID, t.EVENT_TS, t.EVENT_TYPE, t.DEVICE_ID, t.IP_HASH]
    events.iloc[1:][swapped].to_csv(folder / "part-1.csv", index=False)
    wh = tmp_path / "wh"
    with pytest.raises(IngestInputError, match=r"part-1.csv: its CSV header .* differs from .*part-0.csv"):
        ingest_files(spark, str(wh), **{**paths, t.EVENTS: str(folder)}, labels=None, run_date=RUN)
    assert not wh.exists()
    # The same order in every file loads.
    events.iloc[1:].to_csv(folder / "part-1.csv", index=False)
    result = ingest_files(spark, str(wh), **{**paths, t.EVENTS: str(folder)}, labels=None, run_date=RUN,
                          echo=lambda _: None)
    assert result[t.EVENTS]["rows_loaded"] == 2


def test_a_parquet_folder_whose_files_disagree_on_the_schema_is_refused(spark, tmp_path):
    """Spark reads a folder of Parquet files by one file's schema: a file of microsecond timestamps beside
    pandas' nanosecond ones was divided by 1000 again (its events quarantined as before 2000), and columns
    that only some files hold were dropped unsaid. Refused, naming the file and the columns, before anything
    is written; files that differ only in how pandas stores a string (category) load."""
    accounts = pd.DataFrame([_account(1), _account(2)])
    paths = _small_inputs(tmp_path, accounts)
    events = pd.read_parquet(paths[t.EVENTS])
    wh = tmp_path / "wh"
    cases = {
        "timestamps": (lambda f: events.iloc[:1].to_parquet(f / "part-0.parquet"),  # pandas' default: ns
                       lambda f: events.iloc[1:].to_parquet(f / "part-1.parquet", coerce_timestamps="us"),
                       r"part-1.parquet: its Parquet schema differs from .*part-0.parquet's \('event_ts' is "
                       r"timestamp\[us\] here, timestamp\[ns\] there\)"),
        "columns": (lambda f: events.iloc[:1].to_parquet(f / "part-0.parquet"),
                    lambda f: events.iloc[1:].assign(app_version="7").to_parquet(f / "part-1.parquet"),
                    r"part-1.parquet: its Parquet schema differs .*\(only here: \['app_version'\]\)"),
        "all-null column": (lambda f: events.iloc[:1].assign(**{t.IP_HASH: None}).to_parquet(f / "part-0.parquet"),
                            lambda f: events.iloc[1:].to_parquet(f / "part-1.parquet"),
                            r"'ip_hash' is string here, null there"),
    }
    for name, (first, second, message) in cases.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        first(folder)
        second(folder)
        with pytest.raises(IngestInputError, match=message):
            ingest_files(spark, str(wh), **{**paths, t.EVENTS: str(folder)}, labels=None, run_date=RUN)
        assert not wh.exists(), name
    # What Spark reads alike loads: a category beside a string, pandas' index in one file only (dropped anyway),
    # Hive's INT96 timestamps beside UTC microseconds, an empty file after the first.
    utc = events.assign(**{t.EVENT_TS: events[t.EVENT_TS].dt.tz_localize("UTC")})
    alike = {
        "category": (lambda f: events.iloc[:1].to_parquet(f / "part-0.parquet"),
                     lambda f: events.iloc[1:].astype({t.EVENT_TYPE: "category"}).to_parquet(f / "part-1.parquet")),
        "index": (lambda f: events.iloc[:1].to_parquet(f / "part-0.parquet"),
                  lambda f: events.iloc[1:].to_parquet(f / "part-1.parquet", index=True)),
        "int96": (lambda f: events.iloc[:1].to_parquet(f / "part-0.parquet", use_deprecated_int96_timestamps=True),
                  lambda f: utc.iloc[1:].to_parquet(f / "part-1.parquet", coerce_timestamps="us")),
        "empty": (lambda f: events.to_parquet(f / "part-0.parquet"),
                  lambda f: pd.DataFrame({c: [] for c in events.columns}).to_parquet(f / "part-1.parquet")),
    }
    for name, (first, second) in alike.items():
        folder = tmp_path / f"alike_{name}"
        folder.mkdir()
        first(folder)
        second(folder)
        loaded = tmp_path / f"wh_{name}"
        result = ingest_files(spark, str(loaded), **{**paths, t.EVENTS: str(folder)}, labels=None, run_date=RUN,
                              echo=lambda _: None)
        assert result[t.EVENTS]["rows_loaded"] == 2, name
        times = read_table(spark, str(loaded), t.EVENTS).select(t.EVENT_TS).collect()
        assert [r[0] for r in times] == [datetime(2024, 6, 29, 8)] * 2, name


def test_events_that_differ_only_in_a_dropped_extra_column_are_two_events(spark):
    """A bot likes three posts in the same second from one device: the export's target_id tells the likes
    apart. Ingest drops the column, but judges duplicates with it (as validate does with the columns it
    keeps), so only the true copy is quarantined."""
    ts = datetime(2024, 6, 29, 8)
    rows = [(1, ts, "like", "i", "d", 7), (1, ts, "like", "i", "d", 8), (1, ts, "like", "i", "d", 9),
            (1, ts, "like", "i", "d", 9), (1, ts, "like", "i", "d", None), (1, ts, "like", "i", "d", None)]
    df = spark.createDataFrame(rows, "account_id long, event_ts timestamp, event_type string, ip_hash string, "
                                     "device_id string, target_id long")
    good, bad = validate_table(df, t.EVENTS, RUN)
    assert good.count() == 4 and "target_id" not in good.columns
    q = bad.toPandas()
    assert list(q[t.REASON]) == [DUPLICATE_EVENT, DUPLICATE_EVENT]
    assert sorted(str(json.loads(j)["target_id"]) for j in q[t.ROW_JSON]) == ["9", "None"]



def test_ingested_events_told_apart_by_an_extra_column_stay_apart_through_validate(spark, tmp_path):
    """Three likes in one second told apart by target_id load as three events, and the next night's
    validate keeps them (it sees their ``source_extras_hash``; with contract columns alone they were
    identical rows, two moved out as duplicates). The input's event_date is not part of an event: the
    same like exported under two date partitions is one event."""
    from botwatch.validate import validate_inputs

    ts = datetime(2024, 6, 29, 8)
    paths = _small_inputs(tmp_path, pd.DataFrame([_account(1), _account(2)]))
    pd.DataFrame({t.ACCOUNT_ID: [1] * 4, t.EVENT_TS: [ts] * 4, t.EVENT_TYPE: ["like"] * 4,
                  t.IP_HASH: ["i"] * 4, t.DEVICE_ID: ["d"] * 4, "target_id": [7, 8, 9, 9],
                  t.EVENT_DATE: [ts.date()] * 3 + [ts.date() + timedelta(days=1)]}).to_parquet(paths[t.EVENTS])
    wh = str(tmp_path / "wh")
    notes: list[str] = []
    got = ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=notes.append)
    assert got[t.EVENTS][ROWS_LOADED] == 3 and got[t.EVENTS]["reasons"] == {DUPLICATE_EVENT: 1}
    assert any("source_extras_hash" in n and "target_id" in n for n in notes), notes
    events = read_table(spark, wh, t.EVENTS)
    assert "target_id" not in events.columns and events.select(t.SOURCE_EXTRAS_HASH).distinct().count() == 3
    assert any("['event_date']" in n and "derived from event_ts" in n for n in notes), notes
    checked = validate_inputs(spark, wh, ts.date())
    assert checked["quarantined"][t.EVENTS] == 0 and read_table(spark, wh, t.EVENTS).count() == 3
    # The upstream's daily append delivers the same likes again, without the extra column: copies, moved out.
    copies = read_table(spark, wh, t.EVENTS).drop(t.SOURCE_EXTRAS_HASH)
    spark.createDataFrame(copies.toPandas(), copies.schema).write.format("delta").mode("append").save(
        t.table_path(wh, t.EVENTS))
    assert read_table(spark, wh, t.EVENTS).count() == 6
    checked = validate_inputs(spark, wh, ts.date())
    assert checked["quarantined"][t.EVENTS] == 3
    assert read_table(spark, wh, t.EVENTS).where(F.col(t.SOURCE_EXTRAS_HASH).isNotNull()).count() == 3
    assert read_table(spark, wh, t.EVENTS).count() == 3
    # Without extra columns the table keeps the contract's columns only.
    pd.DataFrame({t.ACCOUNT_ID: [1], t.EVENT_TS: [ts], t.EVENT_TYPE: ["like"], t.IP_HASH: ["i"],
                  t.DEVICE_ID: ["d"]}).to_parquet(paths[t.EVENTS])
    ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=lambda _: None)
    assert t.SOURCE_EXTRAS_HASH not in read_table(spark, wh, t.EVENTS).columns


def test_only_pandas_index_columns_are_taken_for_an_index():
    """Parquet's __index_level_<n>__ anywhere; in a CSV the unnamed leading columns only (Spark's _c0, _c1..):
    a Hive export's unnamed expression (_c5 after five named columns) is data."""
    events = [t.ACCOUNT_ID, t.EVENT_TS, t.EVENT_TYPE, t.IP_HASH, t.DEVICE_ID]
    assert ingest.pandas_index_columns([*events, "_c5"], csv=False) == []
    assert ingest.pandas_index_columns([*events, "_c5"], csv=True) == []
    assert ingest.pandas_index_columns(["_c0", "_c1", *events, "_c7"], csv=True) == ["_c0", "_c1"]
    assert ingest.pandas_index_columns(["_c0", *events], csv=False) == []
    assert ingest.pandas_index_columns([*events, "__index_level_0__"], csv=False) == ["__index_level_0__"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_pandas_index_written_with_the_rows_is_not_an_attribute(spark, tmp_path, fmt):
    """A filtered or sorted frame's to_parquet writes ``__index_level_0__``; to_csv writes the index as an
    unnamed first column (Spark's ``_c0``). A row position, not a platform attribute: dropped, said so."""
    accounts = pd.DataFrame([_account(1), _account(2), _account(3)]).iloc[[2, 0, 1]]
    paths = _small_inputs(tmp_path, accounts)
    if fmt == "csv":
        paths[t.ACCOUNTS] = str(tmp_path / "accounts.csv")
        accounts.to_csv(paths[t.ACCOUNTS])
    else:
        accounts.to_parquet(paths[t.ACCOUNTS], index=True)
    notes: list[str] = []
    wh = str(tmp_path / "wh")
    got = ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=notes.append)
    columns = read_table(spark, wh, t.ACCOUNTS).columns
    assert got[t.ACCOUNTS][ROWS_LOADED] == 3 and "followers" in columns
    assert not {"__index_level_0__", "_c0"} & set(columns), columns
    assert any("pandas' index" in n for n in notes), notes


def test_an_empty_events_export_does_not_replace_the_events_history(spark, tmp_path):
    """An upstream query that returned nothing (a header-only file) would have replaced every event:
    nothing could be scored again. Refused like an empty accounts file, before any write."""
    paths = _small_inputs(tmp_path, pd.DataFrame([_account(1), _account(2)]))
    wh = str(tmp_path / "wh")
    ingest_files(spark, wh, **paths, labels=None, run_date=RUN, echo=lambda _: None)
    before = read_table(spark, wh, t.EVENTS).count()
    pd.read_parquet(paths[t.EVENTS]).iloc[:0].to_csv(tmp_path / "events.csv", index=False)
    with pytest.raises(MostlyBadInputError, match=r"events \(.*events.csv\) has no good rows"):
        ingest_files(spark, wh, **{**paths, t.EVENTS: str(tmp_path / "events.csv")}, labels=None, run_date=RUN,
                     echo=lambda _: None)
    assert before == 2 and read_table(spark, wh, t.EVENTS).count() == before


def test_first_reason_wins_and_bad_column_type_is_an_error(spark):
    schema = "account_id bigint, event_ts timestamp, event_type string, ip_hash string, device_id string"
    ts = datetime(2024, 6, 3, 12)
    events = spark.createDataFrame(
        [
            (1, ts, "post", None, "d"),  # good (ip_hash is nullable)
            (9, datetime(2031, 1, 1), "nope", "i", "d"),  # future, unknown account and type: future
            (9, ts, "nope", "i", "d"),  # unknown account and type: unknown_account
            (1, ts, "nope", "i", "d"),  # unknown_event_type
        ],
        schema,
    )
    known = spark.createDataFrame([(1,), (2,)], "account_id bigint")
    good, bad = validate_table(events, t.EVENTS, RUN, known_accounts=known)
    expected = spark.createDataFrame([(1, ts, "post", None, "d", date(2024, 6, 3))], INPUT_SCHEMAS[t.EVENTS])
    assert_df_equality(good, expected)  # schema too, NOT NULL flags included
    assert bad.schema == QUARANTINE_SCHEMA
    assert sorted(r[t.REASON] for r in bad.collect()) == sorted(
        [TIMESTAMP_IN_FUTURE, UNKNOWN_ACCOUNT, UNKNOWN_EVENT_TYPE]
    )
    # Without known_accounts no referential check runs.
    _, bad = validate_table(events, t.EVENTS, RUN)
    assert sorted(r[t.REASON] for r in bad.collect()) == sorted([TIMESTAMP_IN_FUTURE] + [UNKNOWN_EVENT_TYPE] * 2)

    with pytest.raises(IngestInputError, match=r"table 'events': missing required column\(s\) \['device_id'\]"):
        validate_table(events.drop(t.DEVICE_ID), t.EVENTS, RUN)
    # A float id from 2^53 on may have been rounded (pandas' float64 for an int64 column with gaps; 2^53 + 1
    # rounds to 2^53 itself): bad_type.
    assert float(2**53 + 1) == float(2**53) and float(2**53 - 1) != float(2**53 - 2)
    floats = spark.createDataFrame([(float(2**53 - 1), 2.0, None), (float(2**53), 2.0, None),
                                    (2.0**53 + 2, 2.0, None), (-(2.0**60), 2.0, None)],
                                   "src double, dst double, created_at timestamp")
    good, bad = validate_table(floats, t.EDGES, RUN)
    assert [r[t.SRC] for r in good.collect()] == [2**53 - 1]
    assert [r[t.REASON] for r in bad.collect()] == [BAD_TYPE] * 3
    # The same ids as CSV text: pandas writes such a float64 column as "1.8012345678901235e+18". Integer text
    # is exact at any size.
    texts = spark.createDataFrame([("9007199254740991.0", "2"), ("9007199254740992.0", "2"),
                                   ("9007199254740992", "2"), ("9007199254740994", "2"),
                                   ("9.007199254740994e15", "2"), ("1.8012345678901235e+18", "2"),
                                   ("-9007199254740994.0", "2")],
                                  "src string, dst string").withColumn(t.CREATED_AT, F.lit(None).cast("string"))
    good, bad = validate_table(texts, t.EDGES, RUN)
    assert sorted(r[t.SRC] for r in good.collect()) == [2**53 - 1, 2**53, 2**53 + 2]
    assert [r[t.REASON] for r in bad.collect()] == [BAD_TYPE] * 4
    singles = spark.createDataFrame([(float(2**24 - 1), 2.0, None), (float(2**24), 2.0, None),
                                     (2.0**24 + 2, 2.0, None)],
                                    "src float, dst float, created_at timestamp")  # float32: exact below 2^24
    good, bad = validate_table(singles, t.EDGES, RUN)
    assert [r[t.SRC] for r in good.collect()] == [2**24 - 1] and [r[t.REASON] for r in bad.collect()] == [BAD_TYPE] * 2
    weird = spark.createDataFrame([([1], datetime(2024, 1, 1))], "src array<int>, created_at timestamp")
    with pytest.raises(IngestInputError, match=r"column 'src' is array<int>"):
        validate_table(weird.withColumn(t.DST, F.lit(1)), t.EDGES, RUN)


def test_missing_file_or_column_raises_naming_it(spark, tmp_path):
    warehouse = str(tmp_path / "warehouse")
    paths = {table: write_input(tmp_path, table, "parquet") for table in (t.ACCOUNTS, t.EVENTS, t.EDGES)}
    missing = str(tmp_path / "nope" / "edges.parquet")
    with pytest.raises(IngestInputError, match="edges file not found: " + re.escape(missing)):
        ingest_files(spark, warehouse, **{**paths, t.EDGES: missing}, labels=None, run_date=RUN)
    no_type = tmp_path / "events_no_type.parquet"
    pd.read_parquet(paths[t.EVENTS]).drop(columns=[t.EVENT_TYPE]).to_parquet(no_type)
    with pytest.raises(IngestInputError, match=r"events_no_type.parquet: missing required column\(s\) \['event_type"):
        ingest_files(spark, warehouse, **{**paths, t.EVENTS: str(no_type)}, labels=None, run_date=RUN)
    empty = tmp_path / "events_dir"
    (empty / "_delta_log").mkdir(parents=True)
    (empty / "_SUCCESS").touch()
    with pytest.raises(IngestInputError, match=r"events folder .*events_dir holds no data files"):
        ingest_files(spark, warehouse, **{**paths, t.EVENTS: str(empty)}, labels=None, run_date=RUN)
    # Inputs are all checked before anything is written.
    assert not Path(warehouse).exists()


def test_cli_exits_2_naming_the_missing_file_or_column(tmp_path):
    """Both are found before a JVM starts (file system, CSV header), so these subprocesses are quick."""
    def cli(*args):
        cmd = [sys.executable, "-m", "botwatch", "ingest", *args, "--warehouse", str(tmp_path / "wh"),
               "--date", RUN.isoformat(), "--set", "spark.master=local[1]", "--set", "spark.driver_memory=1g"]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)

    accounts = write_input(tmp_path, t.ACCOUNTS, "csv")
    edges = write_input(tmp_path, t.EDGES, "csv")
    out = cli("--accounts", accounts, "--events", str(tmp_path / "missing.csv"), "--edges", edges)
    assert out.returncode == 2, out.stderr
    assert "events file not found" in out.stderr and "missing.csv" in out.stderr

    no_dst = tmp_path / "edges_no_dst.csv"
    pd.read_csv(edges, dtype=str).drop(columns=[t.DST]).to_csv(no_dst, index=False)
    events = write_input(tmp_path, t.EVENTS, "csv")
    out = cli("--accounts", accounts, "--events", events, "--edges", str(no_dst))
    assert out.returncode == 2, out.stderr
    assert "edges_no_dst.csv" in out.stderr and "missing required column(s) ['dst']" in out.stderr
    assert not (tmp_path / "wh").exists()


def _canonical(pdf: pd.DataFrame) -> pd.DataFrame:
    return pdf.sort_values(list(pdf.columns), key=lambda c: c.astype(str)).reset_index(drop=True)


def test_reingest_is_idempotent_and_keeps_other_quarantine_slices(mixed, spark):
    """Ingesting the same files again leaves every table's contents as they were: each table's new
    Delta version equals the previous one (read with deltalake). Runs last among the tests of the
    shared ingest, which it re-ingests."""
    warehouse = mixed["warehouse"]
    # A slice the re-ingest must not touch: another run date.
    other = spark.createDataFrame([(t.ACCOUNTS, NULL_KEY, date(2024, 6, 29), "{}", "ingest")], QUARANTINE_SCHEMA)
    other.write.format("delta").mode("append").save(f"{warehouse}/{t.QUARANTINE}")
    tables = (t.ACCOUNTS, t.EVENTS, t.EDGES, t.LABELS, t.QUARANTINE)
    versions = {table: DeltaTable(f"{warehouse}/{table}").version() for table in tables}

    again = ingest_files(spark, warehouse, **mixed["paths"], run_date=RUN, echo=lambda _: None)

    assert again == mixed["result"]
    for table in tables:
        path = f"{warehouse}/{table}"
        assert DeltaTable(path).version() == versions[table] + 1, table  # it did write
        before = _canonical(DeltaTable(path, version=versions[table]).to_pandas())
        after = _canonical(DeltaTable(path).to_pandas())
        assert len(after) == len(before), table
        pd.testing.assert_frame_equal(after, before, obj=table)
    q = delta_pdf(warehouse, t.QUARANTINE)
    assert (q[t.RUN_DATE] == date(2024, 6, 29)).sum() == 1
    assert len(q) == 1 + sum(c["rows_quarantined"] for c in again.values())
