"""Activity features: formulas against numpy/scipy column by column, window features against a
pandas computation from the raw events, incremental (daily partials) == from scratch, missing
windows as nulls, and idempotent ``activity_daily`` writes."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from chispa import (
    assert_approx_column_equality,
    assert_approx_df_equality,
    assert_column_equality,
    assert_df_equality,
)
from pyspark.sql import functions as F
from pyspark.sql import types as T
from scipy.stats import entropy
from tests.helpers import canonical_rows

from botwatch import tables as t
from botwatch.delta_io import read_table, write_table
from botwatch.features import activity as A
from botwatch.schemas import ACCOUNTS_SCHEMA, EVENTS_SCHEMA, SchemaMismatchError

RUN = dt.date(2024, 3, 12)
WINDOWS = (1, 7, 28)
GAP = A.SESSION_GAP_SECONDS


# ---------------------------------------------------------------------------------------------
# formulas, column by column
# ---------------------------------------------------------------------------------------------


def _h(n: int, rng) -> list[int]:
    return [int(x) for x in rng.integers(0, 6, n) * rng.integers(0, 2, n)]


def test_formula_helpers_match_numpy(spark):
    rng = np.random.default_rng(3)
    hists = [_h(24, rng) for _ in range(12)] + [[0] * 24, [5] + [0] * 23, [1] * 24, [0] * 23 + [7]]
    rows = []
    for h in hists:
        c = np.array(h, dtype=float)
        tot = c.sum()
        rows.append(
            (
                h,
                float(entropy(c, base=2)) if tot else None,
                float(abs(np.fft.fft(c / tot)[1])) if tot else None,
                float(c[:6].sum() / tot) if tot else None,
            )
        )
    schema = "h array<bigint>, want_entropy double, want_amp double, want_night double"
    df = spark.createDataFrame(rows, schema).select(
        "*",
        A.entropy_bits(F.col("h"), 24).alias("entropy"),
        A.harmonic_amplitude(F.col("h"), 24).alias("amp"),
        A.bins_share(F.col("h"), 24, range(6)).alias("night"),
    )
    assert_approx_column_equality(df, "entropy", "want_entropy", 1e-9)
    assert_approx_column_equality(df, "amp", "want_amp", 1e-9)
    assert_approx_column_equality(df, "night", "want_night", 1e-9)


def test_burstiness_log2_bins_and_rotation_match_numpy(spark):
    rng = np.random.default_rng(5)
    samples = [list(rng.exponential(60, n)) for n in (2, 3, 10, 50)] + [[5.0, 5.0, 5.0], [0.0, 0.0], [7.0]]
    rows = []
    for s in samples:
        x = np.array(s)
        mu, sigma = x.mean(), x.std()
        want = float((sigma - mu) / (sigma + mu)) if len(x) >= 2 and sigma + mu > 0 else None
        rows.append((len(x), float(x.sum()), float((x * x).sum()), want))
    df = spark.createDataFrame(rows, "n bigint, s double, ss double, want double").select(
        "*", A.burstiness(F.col("n"), F.col("s"), F.col("ss")).alias("got")
    )
    assert_approx_column_equality(df, "got", "want", 1e-9)

    secs = [0.0, 0.5, 1.0, 2.0, 3.0, 6.999, 7.0, 1023.0, 1e6, 2.0**40, 2.0**31 - 1.0, 2.0**31 - 2.0]
    bins = spark.createDataFrame([(s, min(int(np.floor(np.log2(s + 1))), 31)) for s in secs], "s double, want int")
    bins = bins.select("*", A.log2_bin(F.col("s")).alias("got"))
    assert_column_equality(bins, "got", "want")
    assert spark.range(1).select(A.log2_bin(F.lit(None).cast("double")).alias("b")).first()["b"] is None

    hist = list(range(24))
    rot = spark.createDataFrame(
        [(hist, off, [int(v) for v in np.roll(hist, off)] if off is not None else None) for off in (-5, 0, 1, 9, None)],
        "h array<bigint>, off int, want array<bigint>",
    ).select("*", A.rotate_hours(F.col("h"), F.col("off")).alias("got"))
    assert_column_equality(rot, "got", "want")


def test_packed_bins_sum_like_the_bins(spark):
    """The window state packs two bins per long. Summing packed rows, days leaving a window
    (negative rows) included, then unpacking gives numpy's bin sums, up to 2^31 - 1 per bin."""
    rng = np.random.default_rng(11)
    size = 7  # odd: the last packed column holds one bin
    top = 2**31 - 1
    groups = []
    for g in range(20):
        totals = rng.integers(0, 1000, size)
        totals[rng.integers(0, size)] = top if g % 3 == 0 else totals[0]
        parts = [rng.integers(0, 50, size) for _ in range(3)]
        leaving = [rng.integers(0, 50, size)]
        carried = totals - sum(parts) + sum(leaving)  # carried + parts - leaving == totals
        rows = [(g, 1, [int(v) for v in r]) for r in [carried, *parts]] + [(g, -1, [int(v) for v in leaving[0]])]
        groups.append((totals, rows))
    df = spark.createDataFrame([r for _, rows in groups for r in rows], "g int, sign int, bins array<bigint>")
    packed = A.pack_bins([F.get(F.col("bins"), i) for i in range(size)])
    assert len(packed) == 4
    signed = df.select("g", *[(p * F.col("sign")).alias(f"p{j}") for j, p in enumerate(packed)])
    sums = signed.groupBy("g").agg(*[F.sum(f"p{j}").alias(f"p{j}") for j in range(len(packed))])
    got = sums.select("g", F.array(*A.unpack_bins([F.col(f"p{j}") for j in range(len(packed))], size)).alias("b"))
    got_by_group = {r["g"]: r["b"] for r in got.collect()}
    for g, (totals, _) in enumerate(groups):
        assert got_by_group[g] == [int(v) for v in totals]


def test_the_features_step_checks_its_windows_before_it_reads_or_writes(spark, tmp_path):
    from botwatch import steps
    from botwatch.features.build import build_features

    for windows in ([], [0, 7], 28):
        with pytest.raises(A.WindowSpecError, match="features.windows"):
            build_features(spark, str(tmp_path), dt.date(2024, 5, 28), {"windows": windows})
    assert list(tmp_path.iterdir()) == []
    assert issubclass(A.WindowSpecError, steps.EXPECTED_ERRORS)  # the CLI prints the message, no traceback


def test_bad_windows_and_inputs_are_named(spark):
    with pytest.raises(A.WindowSpecError, match="features.windows"):
        A.feature_columns([])
    with pytest.raises(A.WindowSpecError):
        A.feature_columns([7, 0])
    with pytest.raises(A.WindowSpecError):
        A.feature_columns([7.5])
    events = spark.createDataFrame([(1, "post")], "account_id bigint, event_type string")
    accounts = spark.createDataFrame([], ACCOUNTS_SCHEMA)
    with pytest.raises(SchemaMismatchError, match="event_ts"):
        A.daily_partials(events, accounts, RUN)
    with pytest.raises(SchemaMismatchError, match="activity_daily"):
        A.window_features(events, RUN)


# ---------------------------------------------------------------------------------------------
# random events with the awkward cases, and a pandas reference computed from them
# ---------------------------------------------------------------------------------------------

# Account 9 has events but no account row; 5 and 6 have no known offset.
COUNTRIES = {1: "US", 2: "DE", 3: "JP", 4: "IN", 5: "XX", 6: None, 7: "GB", 8: "BR"}
COUNTRIES.update(dict.fromkeys((10, 11, 12, 13, 14), "GB"))


def _midnight(day: dt.date) -> pd.Timestamp:
    return pd.Timestamp(day)


def _make_events() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    rows: list[tuple[int, pd.Timestamp]] = []
    # Random sessions on random days for accounts 1..9, over the 14 days before RUN (inclusive).
    for acc in range(1, 10):
        for back in range(14):
            if rng.random() < 0.45:
                continue
            day = RUN - dt.timedelta(days=back)
            for _ in range(rng.integers(1, 4)):
                ts = _midnight(day) + pd.Timedelta(seconds=float(rng.uniform(0, 86400)))
                for _ in range(rng.integers(1, 9)):
                    rows.append((acc, ts))
                    # mostly short gaps, some same-second bursts, some long ones
                    ts = ts + pd.Timedelta(seconds=float(rng.choice([0, rng.exponential(90), rng.exponential(2500)])))
    day_before = _midnight(RUN - dt.timedelta(days=1))
    run_midnight = _midnight(RUN)
    # a session across midnight into RUN (gaps 10 min, 2 s, 14 min), and one broken by midnight (31 min)
    for s in (-1200.0, -601.5, -1.0, 1.0, 841.0):
        rows.append((1, run_midnight + pd.Timedelta(seconds=s)))
    for s in (-1000.0, 860.0):
        rows.append((2, day_before + pd.Timedelta(seconds=s)))
    # account 10: only 9 days before RUN (outside 1d and 7d), with a gap of several days before
    for back, s in ((9, 3600.0), (9, 3610.0), (9, 7300.25), (12, 50.0)):
        rows.append((10, _midnight(RUN - dt.timedelta(days=back)) + pd.Timedelta(seconds=s)))
    # account 11: every event at one instant (burstiness null); account 12: a single event
    rows += [(11, run_midnight + pd.Timedelta(hours=5))] * 4
    rows.append((12, run_midnight + pd.Timedelta(hours=23, minutes=59, seconds=59.5)))
    # account 13: one burst of 7 events in one minute, 3 in the next
    rows += [(13, run_midnight + pd.Timedelta(seconds=120 + i)) for i in range(7)]
    rows += [(13, run_midnight + pd.Timedelta(seconds=185 + i)) for i in range(3)]
    # account 14: only 40 days before RUN: outside every window (no output row)
    rows.append((14, _midnight(RUN - dt.timedelta(days=40)) + pd.Timedelta(hours=3)))
    ev = pd.DataFrame(rows, columns=[t.ACCOUNT_ID, t.EVENT_TS])
    ev[t.EVENT_TS] = ev[t.EVENT_TS].dt.floor("us")  # Spark keeps microseconds
    ev = ev[ev[t.EVENT_TS] < _midnight(RUN + dt.timedelta(days=1))].reset_index(drop=True)
    n = len(ev)
    # "share" is not in EVENT_TYPES: it counts in n_events and in no event-type bin.
    ev[t.EVENT_TYPE] = rng.choice(np.array([*t.EVENT_TYPES, "share"]), n)
    ips = np.array([f"ip{i}" for i in range(6)] + [None], dtype=object)
    ev[t.IP_HASH] = rng.choice(ips, n)
    ev[t.DEVICE_ID] = rng.choice(np.array(["d0", "d1", "d2", None], dtype=object), n)
    ev[t.EVENT_DATE] = ev[t.EVENT_TS].dt.date
    return ev


def _reference(ev: pd.DataFrame, run_date: dt.date, windows) -> pd.DataFrame:
    """The features straight from raw events, in pandas/numpy/scipy (the independent reference)."""
    out: dict[int, dict] = {}
    for acc, g in ev.groupby(t.ACCOUNT_ID):
        offset = t.COUNTRY_UTC_OFFSET.get(COUNTRIES.get(acc))
        row: dict = {}
        for w in windows:
            start = run_date - dt.timedelta(days=w - 1)
            x = g[(g[t.EVENT_DATE] >= start) & (g[t.EVENT_DATE] <= run_date)].sort_values(t.EVENT_TS)
            has = len(x) > 0
            row[A.windowed(A.HAS_ACTIVITY, w)] = has
            f: dict = dict.fromkeys(A.FEATURE_NAMES, np.nan)
            if has:
                ts = x[t.EVENT_TS]
                iet = ts.diff().dt.total_seconds().to_numpy()[1:]
                hours = ts.dt.hour.to_numpy()
                f[A.N_EVENTS] = len(x)
                f[A.HOUR_ENTROPY] = entropy(np.bincount(hours, minlength=24), base=2)
                if len(iet):
                    bins = np.minimum(np.floor(np.log2(iet + 1)).astype(int), 31)
                    f[A.IET_ENTROPY] = entropy(np.bincount(bins, minlength=32), base=2)
                mu, sigma = (iet.mean(), iet.std()) if len(iet) else (0.0, 0.0)
                if len(iet) >= 2 and sigma + mu > 0:
                    f[A.BURSTINESS] = (sigma - mu) / (sigma + mu)
                f[A.MAX_EVENTS_PER_MINUTE] = ts.dt.floor("min").value_counts().max()
                f[A.MAX_EVENTS_PER_HOUR] = ts.dt.floor("h").value_counts().max()
                if offset is not None:
                    local = np.bincount((hours + offset) % 24, minlength=24)
                    p = local / local.sum()
                    f[A.CIRCADIAN_AMPLITUDE] = abs(np.fft.fft(p)[1])
                    f[A.NIGHT_SHARE] = local[:6].sum() / local.sum()
                dows = np.array([d.weekday() for d in x[t.EVENT_DATE]])
                f[A.DOW_ENTROPY] = entropy(np.bincount(dows, minlength=7), base=2)
                types = x[t.EVENT_TYPE].value_counts().reindex(list(t.EVENT_TYPES), fill_value=0)
                f[A.EVENT_TYPE_ENTROPY] = entropy(types.to_numpy(), base=2)
                f[A.DISTINCT_IPS] = x[t.IP_HASH].nunique() or np.nan  # none known: missing, not 0
                f[A.DISTINCT_DEVICES] = x[t.DEVICE_ID].nunique() or np.nan
                # sessions: explicit session ids, each session's length = last - first
                sid = np.concatenate([[0], np.cumsum(iet > GAP)])
                # seconds from the first event: epoch seconds as floats lose ~1e-7 s
                secs = (ts - ts.iloc[0]).dt.total_seconds().to_numpy()
                lengths = pd.Series(secs).groupby(sid).agg(lambda s: s.max() - s.min())
                f[A.SESSION_COUNT] = len(lengths)
                f[A.MEAN_SESSION_SECONDS] = lengths.mean()
            row.update({A.windowed(k, w): v for k, v in f.items()})
        if any(row[A.windowed(A.HAS_ACTIVITY, w)] for w in windows):
            out[acc] = row
    ref = pd.DataFrame.from_dict(out, orient="index")
    ref.index.name = t.ACCOUNT_ID
    return ref.reset_index()[[t.ACCOUNT_ID, *A.feature_columns(windows)]]


@pytest.fixture(scope="module")
def raw(spark):
    ev = _make_events()
    events = spark.createDataFrame(ev[list(EVENTS_SCHEMA.fieldNames())], EVENTS_SCHEMA)
    accounts = spark.createDataFrame(
        [(a, None, c, None, None, None, None) for a, c in COUNTRIES.items()], ACCOUNTS_SCHEMA
    )
    return ev, events.cache(), accounts.cache()


@pytest.fixture(scope="module")
def partials(raw):
    _, events, accounts = raw
    first = RUN - dt.timedelta(days=max(WINDOWS) - 1)
    return A.daily_partials_range(events, accounts, first, RUN).cache()


@pytest.fixture(scope="module")
def incremental(partials):
    return A.window_features(partials, RUN, WINDOWS).cache()


def test_window_features_match_pandas_reference(raw, incremental):
    ev, _, _ = raw
    want = _reference(ev, RUN, WINDOWS)
    got = incremental.toPandas().sort_values(t.ACCOUNT_ID).reset_index(drop=True)
    assert list(got.columns) == [t.ACCOUNT_ID, *A.feature_columns(WINDOWS)]
    assert got[t.ACCOUNT_ID].tolist() == want[t.ACCOUNT_ID].tolist()  # 14 is outside every window
    pd.testing.assert_frame_equal(
        got.astype("float64"), want.astype("float64"), check_exact=False, rtol=1e-9, atol=1e-9
    )


def test_specific_cases(incremental):
    got = {r[t.ACCOUNT_ID]: r for r in incremental.collect()}
    # account 10: active 9 and 12 days ago only -> 1d and 7d are null with has_activity false
    a10 = got[10]
    assert a10["has_activity_1d"] is False and a10["has_activity_7d"] is False and a10["has_activity_28d"] is True
    assert all(a10[A.windowed(n, w)] is None for n in A.FEATURE_NAMES for w in (1, 7))
    assert a10["n_events_28d"] == 4 and a10["session_count_28d"] == 3
    # account 11: four events at one instant; account 12: one event; account 13: 7 in a minute
    assert got[11]["burstiness_1d"] is None and got[11]["session_count_1d"] == 1
    assert got[12]["iet_entropy_1d"] is None and got[12]["mean_session_seconds_1d"] == 0.0
    assert got[13]["max_events_per_minute_1d"] == 7 and got[13]["max_events_per_hour_1d"] == 10
    # accounts 5 (unknown country), 6 (no country) and 9 (no account row): no local-time features
    for acc in (5, 6, 9):
        assert got[acc]["circadian_amplitude_28d"] is None and got[acc]["night_share_28d"] is None
    assert 14 not in got


def test_incremental_equals_from_scratch(raw, incremental):
    _, events, accounts = raw
    scratch = A.activity_features_from_scratch(events, accounts, RUN, WINDOWS)
    assert_approx_df_equality(
        incremental, scratch, 1e-9, ignore_nullable=True, ignore_row_order=True, allow_nan_equality=True
    )


def test_single_day_partial_equals_backfill_rows(raw, partials):
    _, events, accounts = raw
    day = RUN - dt.timedelta(days=1)
    one = A.daily_partials(events, accounts, day)
    from_range = partials.where(F.col(t.DAY) == F.lit(day))
    # sketches compare by their estimates (binary layout may differ between aggregation orders)
    est = [F.hll_sketch_estimate(A.IP_SKETCH).alias("ips"), F.hll_sketch_estimate(A.DEVICE_SKETCH).alias("devs")]
    cols = [c for c in A.PARTIAL_COLUMNS if c not in (A.IP_SKETCH, A.DEVICE_SKETCH)]
    assert_approx_df_equality(
        one.select(*cols, *est), from_range.select(*cols, *est), 1e-9, ignore_nullable=True, ignore_row_order=True
    )
    assert one.count() > 0 and set(one.schema.fieldNames()) == set(A.PARTIAL_COLUMNS)
    assert dict(one.dtypes)[A.HOUR_HIST_UTC] == "array<bigint>"


def test_activity_daily_rerun_is_idempotent(spark, warehouse, raw):
    _, events, accounts = raw
    write_table(events, warehouse, t.EVENTS, partition_by=[t.EVENT_DATE])
    write_table(accounts, warehouse, t.ACCOUNTS)
    day = RUN - dt.timedelta(days=1)
    A.build_activity_daily(spark, warehouse, day - dt.timedelta(days=1), day)
    first = read_table(spark, warehouse, t.ACTIVITY_DAILY)
    counts = {r[0]: r[1] for r in first.groupBy(t.DAY).count().collect()}
    # Every value but the HLL sketches (their bytes may depend on the order rows were added).
    plain = [c for c, kind in first.dtypes if kind != "binary"]
    _, digest = canonical_rows(first.select(*plain))
    A.build_activity_daily(spark, warehouse, day)  # rerun one of the two days
    again = read_table(spark, warehouse, t.ACTIVITY_DAILY)
    assert {r[0]: r[1] for r in again.groupBy(t.DAY).count().collect()} == counts
    assert canonical_rows(again.select(*plain))[1] == digest
    assert again.select(t.ACCOUNT_ID, t.DAY).distinct().count() == again.count()
    assert again.schema[t.DAY].dataType == T.DateType()
    feats = A.activity_features(spark, warehouse, day, [1])
    assert feats.count() == counts[day]


def test_rolled_window_state_equals_partials_and_reference(spark, warehouse, raw):
    """The nightly path rolls ``activity_window`` forward a day at a time (adding the new day,
    removing the day leaving each window and the stitched gaps that go with it). Short windows, so
    days and midnight-crossing gaps leave them inside the 14 days of events."""
    ev, events, accounts = raw
    windows = (1, 3, 7)
    write_table(events, warehouse, t.EVENTS, partition_by=[t.EVENT_DATE])
    write_table(accounts, warehouse, t.ACCOUNTS)
    A.build_activity_daily(spark, warehouse, RUN - dt.timedelta(days=13), RUN)
    spec = A.window_spec(windows, GAP)
    # A state of the day before in the old layout (histograms as arrays) is not rolled; it is replaced.
    old_layout = spark.createDataFrame(
        [(1, 7, 3, [1] * 24, spec, RUN - dt.timedelta(days=5))],
        f"{t.ACCOUNT_ID} long, {A.WINDOW_DAYS} int, {A.N_EVENTS} long, {A.HOUR_HIST_UTC} array<long>, "
        f"{A.WINDOW_SPEC} string, {t.RUN_DATE} date",
    )
    write_table(old_layout, warehouse, t.ACTIVITY_WINDOW, partition_by=[t.RUN_DATE])
    for back in (4, 3, 2, 1, 0):
        day = RUN - dt.timedelta(days=back)
        rolled = A.read_window_state(spark, warehouse, day - dt.timedelta(days=1), spec) is not None
        assert rolled == (back < 4)  # the first date sums partials, the others roll
        got = A.activity_features(spark, warehouse, day, windows).toPandas()
        got = got.sort_values(t.ACCOUNT_ID).reset_index(drop=True)
        want = _reference(ev, day, windows)
        assert got[t.ACCOUNT_ID].tolist() == want[t.ACCOUNT_ID].tolist()
        pd.testing.assert_frame_equal(
            got.astype("float64"), want.astype("float64"), check_exact=False, rtol=1e-9, atol=1e-9
        )
    state = A.read_window_state(spark, warehouse, RUN, spec)
    summed = A.window_sums(read_table(spark, warehouse, t.ACTIVITY_DAILY), RUN, windows)
    keys = [t.ACCOUNT_ID, "_window"]
    # Every state column exactly (the inter-event-time and session-length sums are fixed point).
    assert sorted(map(tuple, state.select(*keys, *A.state_columns(windows)).collect())) == sorted(
        map(tuple, summed.select(*keys, *A.state_columns(windows)).collect())
    )
    # Only the last few days of state are kept (the old layout's day is gone).
    days_kept = read_table(spark, warehouse, t.ACTIVITY_WINDOW).select(t.RUN_DATE).distinct().count()
    assert days_kept == 5


def test_a_long_gap_leaving_the_window_leaves_no_residue_in_the_rolled_sums(spark, warehouse):
    """A burst of millisecond gaps a week after an account's previous event: while the 6-day gap is in
    the 7d window its square (2.7e11 s^2) dwarfs theirs (1.4e-5 s^2); when its day leaves, the rolled
    sums must hold exactly the burst's (as doubles they held the gap's rounding residue instead)."""
    before = _midnight(RUN - dt.timedelta(days=7)) + pd.Timedelta(hours=12)
    burst = _midnight(RUN - dt.timedelta(days=1)) + pd.Timedelta(hours=11, minutes=59, seconds=59.5)
    rows = [(21, before)] + [(21, burst + pd.Timedelta(seconds=s)) for s in (0, 0.001, 0.003, 0.006)]
    rows += [(22, _midnight(RUN - dt.timedelta(days=b)) + pd.Timedelta(hours=9)) for b in range(8)]
    ev = pd.DataFrame(rows, columns=[t.ACCOUNT_ID, t.EVENT_TS])
    ev[t.EVENT_TYPE], ev[t.IP_HASH], ev[t.DEVICE_ID] = "post", "ip0", "d0"
    ev[t.EVENT_DATE] = ev[t.EVENT_TS].dt.date
    write_table(spark.createDataFrame(ev[list(EVENTS_SCHEMA.fieldNames())], EVENTS_SCHEMA), warehouse, t.EVENTS,
                partition_by=[t.EVENT_DATE])
    write_table(spark.createDataFrame([(a, None, None, None, None, None, None) for a in (21, 22)], ACCOUNTS_SCHEMA),
                warehouse, t.ACCOUNTS)
    windows = (1, 7)
    A.build_activity_daily(spark, warehouse, RUN - dt.timedelta(days=7), RUN)
    A.activity_features(spark, warehouse, RUN - dt.timedelta(days=1), windows)  # holds the gap
    spec = A.window_spec(windows, GAP)
    assert A.read_window_state(spark, warehouse, RUN - dt.timedelta(days=1), spec) is not None  # so D rolls
    got = A.activity_features(spark, warehouse, RUN, windows).toPandas().sort_values(t.ACCOUNT_ID)
    want = _reference(ev, RUN, windows)
    iets = np.array([0.001, 0.002, 0.003])
    assert want[A.windowed(A.BURSTINESS, 7)].iloc[0] == pytest.approx(
        (iets.std() - iets.mean()) / (iets.std() + iets.mean()), rel=1e-6)  # about -0.42
    pd.testing.assert_frame_equal(got.reset_index(drop=True).astype("float64"), want.astype("float64"),
                                  check_exact=False, rtol=1e-9, atol=1e-9)


def test_short_sessions_leaving_the_window_leave_no_session_seconds(spark, warehouse):
    """Sessions of 0.1 s (day D-8) and 0.2 s (D-7) in the 7d window of D-2, then single events on D-1
    and D: once both days have left, the window's sessions last 0 s. Rolled as doubles, 0.1 + 0.2 - 0.1
    - 0.2 left 2.8e-17 s (mean_session_seconds_7d not 0, and it can go negative)."""
    noon = {b: _midnight(RUN - dt.timedelta(days=b)) + pd.Timedelta(hours=12) for b in range(9)}
    rows = [(23, noon[8]), (23, noon[8] + pd.Timedelta(seconds=0.1)), (23, noon[7]),
            (23, noon[7] + pd.Timedelta(seconds=0.2)), (23, noon[1]), (23, noon[0])]
    ev = pd.DataFrame(rows, columns=[t.ACCOUNT_ID, t.EVENT_TS])
    ev[t.EVENT_TYPE], ev[t.IP_HASH], ev[t.DEVICE_ID] = "post", "ip0", "d0"
    ev[t.EVENT_DATE] = ev[t.EVENT_TS].dt.date
    write_table(spark.createDataFrame(ev[list(EVENTS_SCHEMA.fieldNames())], EVENTS_SCHEMA), warehouse, t.EVENTS,
                partition_by=[t.EVENT_DATE])
    write_table(spark.createDataFrame([(23, None, None, None, None, None, None)], ACCOUNTS_SCHEMA),
                warehouse, t.ACCOUNTS)
    windows = (1, 7)
    A.build_activity_daily(spark, warehouse, RUN - dt.timedelta(days=8), RUN)
    for back in (2, 1):  # D-2 sums both sessions from the partials; D-1 and D roll them out one by one
        A.activity_features(spark, warehouse, RUN - dt.timedelta(days=back), windows).count()
    assert A.read_window_state(spark, warehouse, RUN - dt.timedelta(days=1), A.window_spec(windows, GAP)) is not None
    got = A.activity_features(spark, warehouse, RUN, windows).toPandas()
    want = _reference(ev, RUN, windows)
    assert want[A.windowed(A.MEAN_SESSION_SECONDS, 7)].tolist() == [0.0]
    assert got[A.windowed(A.SESSION_COUNT, 7)].tolist() == [2]
    assert got[A.windowed(A.MEAN_SESSION_SECONDS, 7)].tolist() == [0.0]  # exactly


def test_a_window_whose_events_all_lack_an_ip_has_no_distinct_ip_count(spark):
    """Unknown is null, never a silent 0: account 31's events carry no IP and no device."""
    noon = dt.datetime(RUN.year, RUN.month, RUN.day, 12)
    rows = [(31, noon, "post", None, None, RUN), (31, noon + dt.timedelta(minutes=1), "like", None, None, RUN),
            (32, noon, "post", "ip1", None, RUN), (32, noon, "like", "ip2", "d1", RUN)]
    events = spark.createDataFrame(rows, EVENTS_SCHEMA)
    accounts = spark.createDataFrame([(a, None, None, None, None, None, None) for a in (31, 32)], ACCOUNTS_SCHEMA)
    got = A.window_features(A.daily_partials_range(events, accounts, RUN, RUN), RUN, (1,))
    want = spark.createDataFrame(
        [(31, True, None, None), (32, True, 2, 1)],
        "account_id long, has_activity_1d boolean, distinct_ips_1d long, distinct_devices_1d long",
    )
    assert_df_equality(got.select(*want.columns), want, ignore_row_order=True, ignore_nullable=True)


def test_the_accounts_table_is_not_forced_into_a_broadcast(spark, raw):
    """A full account table (hundreds of millions of rows) must not be hinted into a broadcast: the
    driver would collect it whole. With broadcasts off, neither activity path plans one."""
    from botwatch.spark import session_conf

    _, events, accounts = raw
    with session_conf(spark, {"spark.sql.autoBroadcastJoinThreshold": "-1"}):
        for df in (A.daily_partials_range(events, accounts, RUN, RUN),
                   A.activity_features_from_scratch(events, accounts, RUN, (1, 7))):
            plan = df._jdf.queryExecution().executedPlan().toString()
            assert "Broadcast" not in plan, plan


def test_a_day_built_late_drops_the_states_that_lack_it(spark, warehouse, raw):
    """Day X's events land after its run (a failed upstream load), so the state of the day before D was
    summed without X. Building X's partial deletes the states of X and later: night D sums its window
    from the partials instead of rolling a state that never held X (its windows would lack X's events,
    and go wrong for good once X leaves a window and its partial is subtracted)."""
    ev, events, accounts = raw
    windows = (1, 3, 7)
    late = RUN - dt.timedelta(days=2)
    write_table(events.where(F.col(t.EVENT_DATE) != F.lit(late)), warehouse, t.EVENTS, partition_by=[t.EVENT_DATE])
    write_table(accounts, warehouse, t.ACCOUNTS)
    A.build_activity_daily(spark, warehouse, RUN - dt.timedelta(days=8), RUN - dt.timedelta(days=1))
    A.activity_features(spark, warehouse, RUN - dt.timedelta(days=1), windows).count()  # its state lacks X
    spec = A.window_spec(windows, GAP)
    assert A.read_window_state(spark, warehouse, RUN - dt.timedelta(days=1), spec) is not None
    write_table(events, warehouse, t.EVENTS, partition_by=[t.EVENT_DATE])  # X's events land
    A.build_activity_daily(spark, warehouse, late)  # as the features step fills a gap in its window
    A.build_activity_daily(spark, warehouse, RUN)
    got = A.activity_features(spark, warehouse, RUN, windows).toPandas().sort_values(t.ACCOUNT_ID)
    want = _reference(ev, RUN, windows)
    assert (pd.to_datetime(ev[t.EVENT_TS]).dt.date == late).sum() > 10  # X holds events the state lacked
    assert (want[A.windowed(A.N_EVENTS, 3)] > 0).any()
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True).astype("float64"), want.astype("float64"), check_exact=False, rtol=1e-9, atol=1e-9
    )
    # The state that lacked X is gone (D's was summed from the partials, then written).
    assert A.read_window_state(spark, warehouse, RUN - dt.timedelta(days=1), spec) is None
    assert A.read_window_state(spark, warehouse, RUN, spec) is not None


def test_events_that_land_after_their_day_was_built_rebuild_its_partial(spark, warehouse, raw):
    """Half of day X's events land after X's partial was built (and the next nights' states rolled
    without them); a later export rewrites every file of the events table. The next features step
    rebuilds X's partial (its day has more events than it was built from), and only X's: D's windows
    equal the reference from all the raw events. Before, X's partial stayed stale for 28 nights."""
    from botwatch.features.build import build_partials, partial_days_to_build

    ev, events, accounts = raw
    windows = (1, 3, 7)
    late = RUN - dt.timedelta(days=2)
    held_back = (F.col(t.EVENT_DATE) == F.lit(late)) & (F.xxhash64(t.ACCOUNT_ID, t.EVENT_TS) % 2 == 0)
    write_table(events.where(~held_back), warehouse, t.EVENTS, partition_by=[t.EVENT_DATE])
    write_table(accounts, warehouse, t.ACCOUNTS)
    assert build_partials(spark, warehouse, RUN - dt.timedelta(days=1), windows) == [
        RUN - dt.timedelta(days=k) for k in range(7, 0, -1)]
    A.activity_features(spark, warehouse, RUN - dt.timedelta(days=1), windows).count()  # its state lacks them
    assert partial_days_to_build(spark, warehouse, RUN - dt.timedelta(days=1), windows) == []
    on_late_day = F.col(t.EVENT_DATE) == F.lit(late)
    assert events.where(held_back).count() > 5 and events.where(~held_back & on_late_day).count() > 5
    write_table(events.repartition(3), warehouse, t.EVENTS, partition_by=[t.EVENT_DATE])  # the held-back events land
    assert partial_days_to_build(spark, warehouse, RUN, windows) == [late, RUN]
    assert build_partials(spark, warehouse, RUN, windows) == [late, RUN]
    got = A.activity_features(spark, warehouse, RUN, windows).toPandas().sort_values(t.ACCOUNT_ID)
    want = _reference(ev, RUN, windows)
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True).astype("float64"), want.astype("float64"), check_exact=False, rtol=1e-9, atol=1e-9
    )
    assert partial_days_to_build(spark, warehouse, RUN, windows) == []


@pytest.mark.parametrize("days", [1, 7, 28, 400, 50_000])
def test_window_state_keeps_every_iet_bin_its_windows_can_fill(spark, days):
    """The state drops IET bins no IET inside the window can reach; the longest possible IET (just
    under the window's length) falls in the last bin kept, and the cap of 32 bins still holds."""
    longest = days * 86_400 - 1e-3
    want = min(int(np.floor(np.log2(longest + 1))) + 1, A.IET_BINS)
    assert A.state_iet_bins([1, days]) == want
    got = spark.range(1).select(A.log2_bin(F.lit(longest)).alias("b")).first()["b"]
    assert got == want - 1
    assert len([c for c in A.state_columns([days]) if c.startswith(A.IET_HIST + "_")]) == (want + 1) // 2


def test_a_wider_or_narrower_window_set_replaces_the_state_table(spark, warehouse, raw):
    """Adding a 28-day window adds a packed IET column the 7-day state table lacks; dropping it
    again removes one. Either change of conf rewrites ``activity_window`` instead of failing the
    night on a schema mismatch, and the features still match the reference."""
    ev, events, accounts = raw
    write_table(events, warehouse, t.EVENTS, partition_by=[t.EVENT_DATE])
    write_table(accounts, warehouse, t.ACCOUNTS)
    A.build_activity_daily(spark, warehouse, RUN - dt.timedelta(days=13), RUN)
    narrow, wide = (1, 3, 7), (1, 7, 28)
    assert set(A.state_columns(wide)) > set(A.state_columns(narrow))
    for day, windows in ((RUN - dt.timedelta(days=1), narrow), (RUN, wide), (RUN, narrow)):
        got = A.activity_features(spark, warehouse, day, windows).toPandas()
        want = _reference(ev, day, windows)
        pd.testing.assert_frame_equal(
            got.sort_values(t.ACCOUNT_ID).reset_index(drop=True).astype("float64"), want.astype("float64"),
            check_exact=False, rtol=1e-9, atol=1e-9,
        )
        state = read_table(spark, warehouse, t.ACTIVITY_WINDOW)
        assert set(A.state_columns(windows)) <= set(state.columns)
        assert A.read_window_state(spark, warehouse, day, A.window_spec(windows, GAP)) is not None
