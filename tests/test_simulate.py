"""The synthetic platform (`botwatch simulate`): statistical checks of the generated tables against
the generator's parameters, computed independently with numpy/scipy/networkx/pandas from the raw
rows (read back from Delta without a JVM); determinism under another partitioning; the CLI and job.

One platform (2,000 accounts x 8 days, bots boosted to 12 % and label rates raised so that the
counts are testable) is generated once for the module.
"""
from __future__ import annotations

import datetime as dt
import importlib.util
import math

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T
from scipy.stats import entropy
from typer.testing import CliRunner

from botwatch import schemas
from botwatch import tables as t
from botwatch.cli import app
from botwatch.config import PROJECT_ROOT
from botwatch.simulate import SimulationParamsError, check_params, simulate_platform, write_platform
from botwatch.simulate.attributes import ATTRIBUTE_FIELDS, PHOTOS

ACCOUNTS, DAYS, SEED = 2000, 8, 11
START = dt.date(2026, 1, 5)  # a Monday
START_TS = pd.Timestamp(START, tz="UTC")
END_TS = START_TS + pd.Timedelta(days=DAYS)
OVERRIDES = {
    "prevalence": 0.12,
    "follow_spam.out_follows": 150.0,  # 1500 on a 2k-account platform would follow most of it
    "labels.investigator_per_week_per_100k": 6000.0,
    "labels.investigator_error": 0.1,
    "labels.user_report_human_rate": 0.05,
    "labels.user_report_bot_rate": 0.4,
    "labels.appeal_rate": 0.5,
    # The module's platform keeps the metronome mimics (their fingerprints are checked below); its
    # botnets are scripted, so the determinism tests cover the script's window code. Scripted mimics
    # get their own platform (test_scripted_*).
    "mimic.scripted_share": 0.0,
    "botnet.scripted_share": 1.0,
}
Z = 4.0  # tolerance of the binomial checks, in standard deviations


@pytest.fixture(scope="module")
def params(conf):
    return conf.with_overrides([f"simulate.{k}={v}" for k, v in OVERRIDES.items()]).section("simulate")


@pytest.fixture(scope="module")
def sim(spark, params, tmp_path_factory):
    warehouse = str(tmp_path_factory.mktemp("simulated"))
    counts = write_platform(spark, warehouse, accounts=ACCOUNTS, days=DAYS, seed=SEED, start_date=START, params=params)
    frames = {name: DeltaTable(f"{warehouse}/{name}").to_pandas() for name in counts}
    fam = frames[t.TRUTH].set_index(t.ACCOUNT_ID)[t.FAMILY]
    acc = frames[t.ACCOUNTS].set_index(t.ACCOUNT_ID).join(fam)
    offsets = acc[t.COUNTRY].map(t.COUNTRY_UTC_OFFSET)
    ev = frames[t.EVENTS]
    ev[t.FAMILY] = ev[t.ACCOUNT_ID].map(fam)
    ev["local"] = ev[t.EVENT_TS] + pd.to_timedelta(ev[t.ACCOUNT_ID].map(offsets), unit="h")
    return {"warehouse": warehouse, "counts": counts, "family": fam, "acc": acc, "ev": ev, **frames}


def _within_binomial(k: int, n: int, p: float) -> bool:
    sd = math.sqrt(max(n * p * (1 - p), 1e-9))
    return abs(k - n * p) <= Z * sd + 1


# ---------------------------------------------------------------- tables and contract


def test_tables_follow_the_contract(sim):
    w = sim["warehouse"]
    for name, schema in [(t.ACCOUNTS, schemas.ACCOUNTS_SCHEMA), (t.EVENTS, schemas.EVENTS_SCHEMA),
                         (t.EDGES, schemas.EDGES_SCHEMA), (t.LABELS, schemas.LABELS_SCHEMA),
                         (t.TRUTH, schemas.TRUTH_SCHEMA)]:
        table = DeltaTable(f"{w}/{name}")
        # accounts: the contract's columns first, then the platform's own attributes (simulate.attributes)
        extra = [f.name for f in ATTRIBUTE_FIELDS] if name == t.ACCOUNTS else []
        assert [f.name for f in table.schema().fields] == schema.fieldNames() + extra, name
        assert len(sim[name]) == sim["counts"][name], name
    assert DeltaTable(f"{w}/{t.EVENTS}").metadata().partition_columns == [t.EVENT_DATE]
    assert DeltaTable(f"{w}/{t.ACCOUNTS}").metadata().partition_columns == []
    assert sim["counts"][t.ACCOUNTS] == ACCOUNTS
    assert sorted(sim[t.ACCOUNTS][t.ACCOUNT_ID]) == list(range(ACCOUNTS))
    assert set(sim[t.TRUTH][t.FAMILY]) == set(t.FAMILIES)
    ev = sim["ev"]
    assert set(ev[t.EVENT_TYPE]) <= set(t.EVENT_TYPES)
    assert ev[t.EVENT_TS].min() >= START_TS and ev[t.EVENT_TS].max() < END_TS
    assert (ev[t.EVENT_TS].dt.date == pd.to_datetime(ev[t.EVENT_DATE]).dt.date).all()
    assert not ev.duplicated([t.ACCOUNT_ID, t.EVENT_TS, t.EVENT_TYPE, t.IP_HASH, t.DEVICE_ID]).any()
    acc = sim["acc"]
    assert set(acc[t.COUNTRY]) <= set(t.COUNTRY_UTC_OFFSET)
    assert acc[t.PROFILE_COMPLETENESS].between(0, 1).all()
    assert acc[[t.SIGNUP_IP_HASH, t.SIGNUP_DEVICE_ID, t.CREATED_AT]].notna().all().all()


def test_no_activity_before_signup_and_ids_follow_signup_time(sim, params):
    acc, ev = sim["acc"], sim["ev"]
    created = ev[t.ACCOUNT_ID].map(acc[t.CREATED_AT])
    assert (ev[t.EVENT_TS] >= created.dt.floor("s")).all()
    in_period = acc[t.CREATED_AT] >= START_TS
    n_new = round(ACCOUNTS * params["new_signup_share"])
    # The last ids sign up during the window (a botnet block straddling the boundary may shift a few).
    assert abs(int(in_period.sum()) - n_new) <= params["botnet"]["group_max"]
    humans = acc[acc[t.FAMILY] == "human"].sort_index()
    assert humans[t.CREATED_AT].is_monotonic_increasing
    assert acc[t.CREATED_AT].min() >= START_TS - pd.Timedelta(days=365.25 * params["history_years"] + 1)
    assert (acc.loc[in_period, t.CREATED_AT] < END_TS).all()


# ---------------------------------------------------------------- prevalence and families


def test_prevalence_and_family_shares(sim, params):
    fam = sim["family"]
    prev, mult = params["prevalence"], params["drift"]["new_signup_bot_multiplier"]
    n_new = round(ACCOUNTS * params["new_signup_share"])
    n_old = ACCOUNTS - n_new
    shares = pd.Series(params["family_shares"], dtype=float)
    shares /= shares.sum()
    expected_bots = n_old * prev + n_new * min(0.9, prev * mult)
    # Botnet members come in blocks: variance per block of group_max ids.
    gmin, gmax = params["botnet"]["group_min"], params["botnet"]["group_max"]
    sizes = np.arange(gmin, gmax + 1)
    p_block = prev * shares["botnet"] * gmax / sizes.mean()
    var_botnet = (ACCOUNTS / gmax) * (p_block * (sizes**2).mean() - (p_block * sizes.mean()) ** 2)
    var_other = ACCOUNTS * (prev * (1 - shares["botnet"])) * (1 - prev)
    bots = int((fam != "human").sum())
    assert abs(bots - expected_bots) <= Z * math.sqrt(var_botnet + var_other)
    assert 0.08 < bots / ACCOUNTS < 0.17
    old = fam[fam.index < n_old]
    not_botnet = old[old != "botnet"]
    for family in ("scheduled", "mimic", "cyborg", "follow_spam"):
        p = prev * shares[family] / (1 - prev * shares["botnet"])
        assert _within_binomial(int((not_botnet == family).sum()), len(not_botnet), p), family


def test_botnets_are_bulk_signups_sharing_ips_and_devices(sim, params):
    acc, ev = sim["acc"], sim["ev"]
    gmax = params["botnet"]["group_max"]
    members = acc[acc[t.FAMILY] == "botnet"].copy()
    members["group"] = members.index // gmax
    assert members["group"].nunique() >= 2
    for _, grp in members.groupby("group"):
        ids = np.sort(grp.index.to_numpy())
        assert (np.diff(ids) == 1).all()  # consecutive ids
        assert params["botnet"]["group_min"] <= len(ids) <= gmax
        span = grp[t.CREATED_AT].max() - grp[t.CREATED_AT].min()
        assert span <= pd.Timedelta(minutes=params["botnet"]["signup_window_min"])
        assert grp[t.SIGNUP_IP_HASH].nunique() <= params["botnet"]["ips_per_group"]
        gev = ev[ev[t.ACCOUNT_ID].isin(grp.index)]
        assert gev[t.IP_HASH].nunique() <= params["botnet"]["ips_per_group"]
        assert gev[t.DEVICE_ID].nunique() <= params["botnet"]["devices_per_group"]
    # Humans: each has own IPs, almost never shared with another account.
    humans = ev[ev[t.FAMILY] == "human"]
    per_ip = humans.groupby(t.IP_HASH)[t.ACCOUNT_ID].nunique()
    assert (per_ip == 1).mean() > 0.99
    assert humans.groupby(t.ACCOUNT_ID)[t.IP_HASH].nunique().max() <= params["humans"]["max_ips"]


def test_botnet_bursts_are_synchronised(sim):
    ev, acc = sim["ev"], sim["acc"]
    gmax = 40
    minute = ev[t.EVENT_TS].dt.floor("min")

    def shared_minute_share(frame: pd.DataFrame, groups: pd.Series) -> float:
        f = frame.assign(group=groups.reindex(frame[t.ACCOUNT_ID]).to_numpy(), minute=minute[frame.index])
        active = f.groupby(["group", "minute"])[t.ACCOUNT_ID].nunique()
        f = f.join(active.rename("members"), on=["group", "minute"])
        return float((f["members"] >= 3).mean())

    botnet = ev[ev[t.FAMILY] == "botnet"]
    groups = pd.Series(acc.index // gmax, index=acc.index)
    assert shared_minute_share(botnet, groups) > 0.8
    # Humans put in pseudo-groups of the same size share minutes far less.
    humans = ev[ev[t.FAMILY] == "human"]
    assert shared_minute_share(humans, groups) < 0.2


# ---------------------------------------------------------------- circadian and weekly rhythm


def _local_hour_shares(ev: pd.DataFrame) -> np.ndarray:
    counts = np.bincount(ev["local"].dt.hour.to_numpy(), minlength=24).astype(float)
    return counts / counts.sum()


def test_humans_sleep_in_their_local_night_scheduled_bots_do_not(sim, params):
    ev = sim["ev"]
    night = slice(1, 6)  # 01:00-05:59 local
    humans = _local_hour_shares(ev[ev[t.FAMILY] == "human"])
    scheduled = _local_hour_shares(ev[ev[t.FAMILY] == "scheduled"])
    uniform_night = 5 / 24
    assert humans[night].sum() < 0.3 * uniform_night
    assert abs(scheduled[night].sum() - uniform_night) < 0.15 * uniform_night
    # Scheduled bots: flat around the clock (chi-square against uniform hours, effect size small).
    assert scheduled.max() / scheduled.min() < 1.5
    # Humans: the local-hour profile follows the configured session-start weights (an evening peak).
    weights = np.array(params["humans"]["hour_weights_weekday"], dtype=float)
    assert np.corrcoef(humans, weights / weights.sum())[0, 1] > 0.9
    assert 18 <= int(np.argmax(humans)) <= 22


def _per_local_day(ev: pd.DataFrame) -> pd.Series:
    # Only local days fully inside the window for every time zone.
    day = ev["local"].dt.date
    full = [START + dt.timedelta(days=d) for d in range(1, DAYS - 1)]
    return day[day.isin(full)].value_counts().reindex(full, fill_value=0)


def test_weekly_rhythm_humans_have_it_mimics_do_not(sim, params):
    ev = sim["ev"]

    def weekend_ratio(family: str) -> float:
        daily = _per_local_day(ev[ev[t.FAMILY] == family])
        weekend = np.array([d.weekday() >= 5 for d in daily.index])
        assert weekend.any() and (~weekend).any()
        return daily[weekend].mean() / daily[~weekend].mean()

    wf = params["humans"]["weekend_factor"]
    assert abs(weekend_ratio("human") - wf) < 0.15
    assert abs(weekend_ratio("mimic") - 1.0) < 0.1


def test_human_event_mix_and_heavy_tailed_activity(sim, params):
    ev, fam = sim["ev"], sim["family"]
    humans = ev[ev[t.FAMILY] == "human"]
    want = pd.Series(params["humans"]["event_type_weights"], dtype=float)
    want /= want.sum()
    got = humans[t.EVENT_TYPE].value_counts(normalize=True).reindex(want.index, fill_value=0)
    assert (got - want).abs().max() < 0.02
    # Mean events per human account-day as configured; heavy-tailed across accounts.
    n_humans = int((fam == "human").sum())
    per_day = len(humans) / (n_humans * DAYS)
    assert abs(per_day - params["humans"]["events_per_day"]) < 0.15 * params["humans"]["events_per_day"]
    per_account = humans.groupby(t.ACCOUNT_ID).size().reindex(fam[fam == "human"].index, fill_value=0)
    assert per_account.quantile(0.99) > 8 * per_account.median()  # some very active
    assert (per_account == 0).mean() > 0.5 * params["humans"]["dormant_share"]  # some dormant
    # A scheduled bot's events are mostly one type.
    sched = ev[ev[t.FAMILY] == "scheduled"]
    top_share = sched.groupby(t.ACCOUNT_ID)[t.EVENT_TYPE].agg(lambda s: s.value_counts(normalize=True).iloc[0])
    assert top_share.median() > params["scheduled"]["dominant_share"] - 0.05


def _gaps(frame: pd.DataFrame) -> pd.DataFrame:
    f = frame.sort_values([t.ACCOUNT_ID, t.EVENT_TS])
    gap = f.groupby(t.ACCOUNT_ID)[t.EVENT_TS].diff().dt.total_seconds()
    return f.assign(gap=gap).dropna(subset=["gap"])


def test_inter_event_times_humans_heavy_tailed_mimic_narrow_scheduled_on_period(sim, params):
    ev = sim["ev"]
    human = _gaps(ev[ev[t.FAMILY] == "human"])["gap"]
    # Heavy tail: seconds inside sessions, hours between them.
    assert human.quantile(0.5) < 120 and human.quantile(0.95) > 3600
    assert human.max() / human.median() > 1000
    mimic = _gaps(ev[ev[t.FAMILY] == "mimic"])
    in_session = lambda g: g[g < 600]  # noqa: E731
    mimic_cv = mimic.groupby(t.ACCOUNT_ID)["gap"].agg(lambda g: in_session(g).std() / in_session(g).mean())
    human_in = _gaps(ev[ev[t.FAMILY] == "human"])
    human_cv = human_in.groupby(t.ACCOUNT_ID)["gap"].agg(lambda g: in_session(g).std() / in_session(g).mean())
    assert mimic_cv.median() < 0.5 * human_cv.median()
    # Scheduled bots: the typical gap is one of the configured periods.
    sched = _gaps(ev[ev[t.FAMILY] == "scheduled"])
    typical = sched.groupby(t.ACCOUNT_ID)["gap"].median() / 60
    periods = np.array(params["scheduled"]["periods_min"], dtype=float)
    nearest = np.abs(typical.to_numpy()[:, None] - periods[None, :]).min(axis=1)
    assert (nearest < 0.02 * typical.to_numpy()).mean() > 0.9


def test_drift_mimics_widen_jitter_after_the_wave_and_a_family_switches_on(sim, params):
    ev = sim["ev"]
    wave_day = math.floor(DAYS * params["drift"]["detection_wave_fraction"])
    mimic = _gaps(ev[ev[t.FAMILY] == "mimic"])
    mimic = mimic[mimic["gap"] < 600]
    day = (mimic[t.EVENT_TS] - START_TS).dt.days
    before = mimic[day < wave_day].groupby(t.ACCOUNT_ID)["gap"].std()
    after = mimic[day > wave_day + 1].groupby(t.ACCOUNT_ID)["gap"].std()
    assert after.median() > 1.8 * before.median()
    new_family = params["drift"]["new_family"]
    switch = START_TS + pd.Timedelta(days=math.floor(DAYS * params["drift"]["new_family_fraction"]))
    newf = ev[ev[t.FAMILY] == new_family]
    assert len(newf) > 0 and newf[t.EVENT_TS].min() >= switch
    assert (sim[t.EDGES].merge(sim[t.TRUTH], left_on=t.SRC, right_on=t.ACCOUNT_ID)
            .query(f"{t.FAMILY} == @new_family")[t.CREATED_AT] >= switch).all()


def test_a_new_family_that_is_followed_back_follows_nobody_before_it_switches_on(spark, params):
    """Humans follow cyborgs back (the one human-like bot family): a cyborg of the drift's new family,
    followed before it switches on, must not follow back before then either (its graph would show
    reciprocal follows and no activity)."""
    from botwatch.simulate import accounts as acc
    from botwatch.simulate.graph import edges_table
    from botwatch.simulate.plan import make_plan

    drift = {**params["drift"], "new_family": "cyborg", "new_family_fraction": 0.5}
    plan = make_plan(400, 6, SEED, START, {**params, "drift": drift})
    profile = acc.profile(spark, plan)
    edges = edges_table(plan, profile).join(
        profile.select(F.col(t.ACCOUNT_ID).alias(t.SRC), t.FAMILY, acc.ACTIVE_FROM_S), t.SRC).toPandas()
    newf = edges[edges[t.FAMILY] == "cyborg"]
    switch = pd.Timestamp(START) + pd.Timedelta(days=3)
    assert len(newf) > 0 and (newf[acc.ACTIVE_FROM_S] >= switch.timestamp()).any()
    early = newf[newf[t.CREATED_AT] < pd.to_datetime(newf[acc.ACTIVE_FROM_S], unit="s").dt.floor("s")]
    assert early.empty, early


# ---------------------------------------------------------------- graph


def test_edges_are_clean_and_mostly_older_than_the_window(sim, params):
    ed, acc = sim[t.EDGES], sim["acc"]
    assert not (ed[t.SRC] == ed[t.DST]).any()
    assert not ed.duplicated([t.SRC, t.DST]).any()
    later = np.maximum(ed[t.SRC].map(acc[t.CREATED_AT]), ed[t.DST].map(acc[t.CREATED_AT]))
    assert (ed[t.CREATED_AT] >= later.dt.floor("s")).all()
    assert (ed[t.CREATED_AT] < END_TS).all()
    in_window = (ed[t.CREATED_AT] >= START_TS).mean()
    assert 0.01 < in_window < 0.3
    per_account = len(ed) / ACCOUNTS
    assert 10 <= per_account <= 100  # tens of follows per account


def test_in_degrees_are_heavy_tailed_with_hubs(sim):
    ed, acc = sim[t.EDGES], sim["acc"]
    indeg = ed.groupby(t.DST).size().reindex(acc.index, fill_value=0)
    top = np.quantile(indeg, 0.999)
    assert top > 10 * indeg.median()
    assert indeg.max() > 25 * indeg.median()
    people = indeg[acc[t.FAMILY] == "human"]
    hubs = people.sort_values(ascending=False).index[:3]
    assert acc.loc[hubs, t.VERIFIED].all()  # the most followed people are verified
    # Hubs rarely follow back: their out-degree is a small fraction of their in-degree.
    outdeg = ed.groupby(t.SRC).size().reindex(acc.index, fill_value=0)
    assert (outdeg[hubs] < 0.2 * indeg[hubs]).all()


def test_reciprocity_humans_follow_back_follow_spam_is_not(sim, params):
    ed, fam = sim[t.EDGES], sim["family"]
    g = nx.DiGraph()
    g.add_edges_from(zip(ed[t.SRC], ed[t.DST], strict=True))
    src_fam = ed[t.SRC].map(fam)
    dst_fam = ed[t.DST].map(fam)

    def reciprocated(mask: pd.Series) -> float:
        sub = ed[mask]
        return float(np.mean([g.has_edge(d, s) for s, d in zip(sub[t.SRC], sub[t.DST], strict=True)]))

    human_pairs = (src_fam == "human") & (dst_fam == "human")
    assert reciprocated(human_pairs) > 0.8 * params["graph"]["human_followback"]
    spam = (src_fam == "follow_spam") & (dst_fam == "human")
    assert reciprocated(spam) < 3 * params["follow_spam"]["followback"] + 0.01
    out = ed[src_fam == "follow_spam"].groupby(t.SRC).size()
    assert out.median() > 0.3 * params["follow_spam"]["out_follows"]


def test_botnet_members_cluster_far_more_than_humans(sim):
    ed, fam = sim[t.EDGES], sim["family"]
    g = nx.Graph()
    g.add_nodes_from(fam.index)
    g.add_edges_from(zip(ed[t.SRC], ed[t.DST], strict=True))
    clustering = pd.Series(nx.clustering(g))
    botnet = clustering[fam[fam == "botnet"].index].mean()
    humans = clustering[fam[fam == "human"].index].mean()
    assert botnet > 0.4
    assert botnet > 2.5 * humans


# ---------------------------------------------------------------- labels


def test_labels_inside_window_with_valid_values(sim):
    lab = sim[t.LABELS]
    assert set(lab[t.SOURCE]) == set(t.LABEL_SOURCES)
    assert set(lab[t.LABEL]) <= {0, 1}
    assert lab[t.LABELED_AT].min() >= START_TS and lab[t.LABELED_AT].max() < END_TS
    created = lab[t.ACCOUNT_ID].map(sim["acc"][t.CREATED_AT])
    assert (lab[t.LABELED_AT] >= created.dt.floor("s")).all()


def test_investigator_volume_and_error_rate(sim, params):
    lab, fam = sim[t.LABELS], sim["family"]
    inv = lab[lab[t.SOURCE] == "investigator"]
    assert not inv[t.ACCOUNT_ID].duplicated().any()
    expected = params["labels"]["investigator_per_week_per_100k"] * ACCOUNTS / 1e5 * DAYS / 7
    assert abs(len(inv) - expected) < Z * math.sqrt(expected) + 0.1 * expected
    truth = (inv[t.ACCOUNT_ID].map(fam) != "human").astype(int)
    wrong = int((inv[t.LABEL] != truth).sum())
    assert _within_binomial(wrong, len(inv), params["labels"]["investigator_error"])
    bot_share = truth.mean()
    assert abs(bot_share - params["labels"]["investigator_bot_share"]) < 0.15
    # Biased toward borderline bots: mimics and cyborgs are investigated more often than scheduled bots.
    investigated = fam.index.isin(inv[t.ACCOUNT_ID])
    rate = pd.Series(investigated, index=fam.index).groupby(fam).mean()
    assert rate[["mimic", "cyborg"]].mean() > rate["scheduled"]


def test_user_reports_are_noisy_as_configured(sim, params):
    lab, fam = sim[t.LABELS], sim["family"]
    rep = lab[lab[t.SOURCE] == "user_report"]
    assert (rep[t.LABEL] == 1).all()
    reported = set(rep[t.ACCOUNT_ID])
    humans = fam[fam == "human"].index
    new_family = params["drift"]["new_family"]
    bots = fam[(fam != "human")].index
    k_h = sum(a in reported for a in humans)
    k_b = sum(a in reported for a in bots)
    assert _within_binomial(k_h, len(humans), params["labels"]["user_report_human_rate"])
    assert _within_binomial(k_b, len(bots), params["labels"]["user_report_bot_rate"])
    assert len(rep) > len(reported)  # some accounts are reported more than once
    assert new_family in set(fam[list(reported)])


def test_appeals_are_precise_negatives_after_a_restriction(sim, params):
    lab, fam = sim[t.LABELS], sim["family"]
    app_ = lab[lab[t.SOURCE] == "appeal"]
    assert len(app_) > 0
    assert (app_[t.LABEL] == 0).all()
    assert (app_[t.ACCOUNT_ID].map(fam) == "human").all()
    restricted = lab[(lab[t.SOURCE].isin(["user_report", "investigator"])) & (lab[t.LABEL] == 1)]
    first = restricted.groupby(t.ACCOUNT_ID)[t.LABELED_AT].min()
    assert (app_[t.LABELED_AT].to_numpy() > app_[t.ACCOUNT_ID].map(first).to_numpy()).all()
    wrongly = set(restricted[restricted[t.ACCOUNT_ID].map(fam) == "human"][t.ACCOUNT_ID])
    n_appealing = app_[t.ACCOUNT_ID].nunique()
    assert n_appealing <= params["labels"]["appeal_rate"] * len(wrongly) + Z * math.sqrt(len(wrongly))
    # Each wrong verdict of an appealing human is appealed after it, so training's resolution (the later
    # of investigator and appeal) never keeps it.
    verdicts = lab[(lab[t.SOURCE] == "investigator") & (lab[t.LABEL] == 1) & lab[t.ACCOUNT_ID].isin(app_[t.ACCOUNT_ID])]
    last_appeal = app_.groupby(t.ACCOUNT_ID)[t.LABELED_AT].max()
    assert (verdicts[t.LABELED_AT].to_numpy() < verdicts[t.ACCOUNT_ID].map(last_appeal).to_numpy()).all()


def test_a_reported_human_wrongly_judged_later_appeals_the_verdict_too(spark, params):
    from botwatch.simulate import accounts as acc
    from botwatch.simulate.labels import direct_labels
    from botwatch.simulate.plan import make_plan

    # Every human is reported, investigated (wrongly) and wins its appeals.
    knobs = {"investigator_error": 1.0, "user_report_human_rate": 1.0, "appeal_rate": 1.0,
             "investigator_per_week_per_100k": 1e7}
    plan = make_plan(100, DAYS, SEED, START, {**params, "labels": {**params["labels"], **knobs}})
    humans = spark.createDataFrame(
        [(i, "human", False, False, 0.0, float(plan.start_s)) for i in range(100)],
        f"{t.ACCOUNT_ID} long, {t.FAMILY} string, {acc.IS_BOT} boolean, {acc.DORMANT} boolean, "
        f"{acc.ACTIVITY_Z} double, {acc.ACTIVE_FROM_S} double",
    )
    lab = direct_labels(plan, humans).toPandas()
    by_source = {src: rows.groupby(t.ACCOUNT_ID)["at_s"] for src, rows in lab.groupby(t.SOURCE)}
    first_report, verdict = by_source["user_report"].min(), by_source["investigator"].min()
    appeals = by_source["appeal"].apply(set)
    # Both restrictions are appealed after the same delay, so the first appeal dates it.
    restricted = pd.concat([first_report, verdict], axis=1).min(axis=1)
    delay = by_source["appeal"].min() - restricted[appeals.index]
    due = [a for a in appeals.index if verdict.get(a, math.inf) + delay[a] < plan.end_s]
    assert len(due) > 20
    # A verdict after the report still gets its own appeal when it falls inside the window.
    assert all(any(abs(verdict[a] + delay[a] - at) < 1e-3 for at in appeals[a]) for a in due)
    assert sum(verdict[a] > first_report[a] for a in due) > 5


def test_propagated_labels_are_weak_positives_from_botnet_neighbours(sim):
    lab, fam = sim[t.LABELS], sim["family"]
    prop = lab[lab[t.SOURCE] == "propagated"]
    inv = lab[lab[t.SOURCE] == "investigator"]
    assert len(prop) > 0 and (prop[t.LABEL] == 1).all()
    prop_precision = (prop[t.ACCOUNT_ID].map(fam) != "human").mean()
    inv_precision = (inv[inv[t.LABEL] == 1][t.ACCOUNT_ID].map(fam) != "human").mean()
    assert prop_precision > 0.5
    assert prop[t.ACCOUNT_ID].map(fam).value_counts().idxmax() == "botnet"
    assert not set(prop[t.ACCOUNT_ID]) & set(inv[inv[t.LABEL] == 1][t.ACCOUNT_ID])
    assert inv_precision > 0.8


# ---------------------------------------------------------------- determinism, CLI and job


TABLES = (t.ACCOUNTS, t.TRUTH, t.EVENTS, t.EDGES, t.LABELS)
KEYS = {t.ACCOUNTS: [t.ACCOUNT_ID], t.TRUTH: [t.ACCOUNT_ID], t.EDGES: [t.SRC, t.DST],
        t.EVENTS: [t.ACCOUNT_ID, t.EVENT_TS, t.EVENT_TYPE, t.IP_HASH, t.DEVICE_ID],
        t.LABELS: [t.ACCOUNT_ID, t.SOURCE, t.LABELED_AT, t.LABEL]}


def _sorted(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    cols = [f for f in schemas.INPUT_SCHEMAS.get(name, schemas.TRUTH_SCHEMA).fieldNames()]
    out = frame[cols].sort_values(KEYS[name]).reset_index(drop=True)
    if t.EVENT_DATE in out:
        out[t.EVENT_DATE] = pd.to_datetime(out[t.EVENT_DATE]).dt.date
    return out


def test_cli_rerun_with_another_partitioning_writes_identical_tables(spark, params, sim, tmp_path):
    """`botwatch simulate` with the module's arguments, 9 generator partitions instead of 2 and 7 shuffle
    partitions instead of 4, rewrites exactly the module's tables."""
    warehouse = str(tmp_path / "rerun")
    sets = [f"simulate.{k}={v}" for k, v in OVERRIDES.items()]
    sets += ["simulate.accounts_per_partition=223", "spark.shuffle_partitions=7", "spark.master=local[2]",
             "spark.log_level=ERROR"]
    args = ["simulate", "--accounts", str(ACCOUNTS), "--days", str(DAYS), "--seed", str(SEED),
            "--start-date", START.isoformat(), "--warehouse", warehouse]
    for item in sets:
        args += ["--set", item]
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        result = CliRunner().invoke(app, args)  # reuses this session (getOrCreate)
        assert spark.conf.get("spark.sql.shuffle.partitions") == "7"
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
    assert result.exit_code == 0, result.output
    for name in TABLES:
        again = DeltaTable(f"{warehouse}/{name}").to_pandas()
        assert f"{name}: {len(again)} rows" in result.output
        pd.testing.assert_frame_equal(_sorted(again, name), _sorted(sim[name], name), obj=name)
    assert DeltaTable(f"{warehouse}/{t.EVENTS}").metadata().partition_columns == [t.EVENT_DATE]

    # Once nightly runs have derived tables from it, only the same platform may be simulated there again:
    # another one would be scored by the old one's models, on its activity partials and finished dates.
    from botwatch.delta_io import delete_path, write_table
    from botwatch.simulate.platform import WarehouseInUseError, _platform_meta, refuse_other_platform

    write_table(spark.createDataFrame([(1,)], "x int"), warehouse, t.RUN_LOG)
    same = {**params, "accounts_per_partition": 223}  # a speed knob: the same platform
    refuse_other_platform(spark, warehouse, _platform_meta(SEED, ACCOUNTS, DAYS, START, same))
    # The same start date given through the conf rather than --start-date: the same platform.
    same = {**params, "start_date": (START + dt.timedelta(days=3)).isoformat()}
    refuse_other_platform(spark, warehouse, _platform_meta(SEED, ACCOUNTS, DAYS, START, same))
    versions = {n: DeltaTable(f"{warehouse}/{n}").version() for n in TABLES}
    try:
        refused = CliRunner().invoke(app, [*args[:6], str(SEED + 1), *args[7:]])
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
    assert refused.exit_code == 2, refused.output
    assert f"holds run_log built from the platform simulated with seed {SEED}" in refused.output
    assert f"delete {warehouse} first" in refused.output
    other_conf = _platform_meta(SEED, ACCOUNTS, DAYS, START, {**params, "prevalence": 0.2})
    with pytest.raises(WarehouseInUseError, match="with another simulate conf"):
        refuse_other_platform(spark, warehouse, other_conf)
    assert {n: DeltaTable(f"{warehouse}/{n}").version() for n in TABLES} == versions  # nothing written
    delete_path(spark, f"{warehouse}/{t.TRUTH}")  # inputs that were not simulated (ingested)
    with pytest.raises(WarehouseInUseError, match="not simulated"):
        refuse_other_platform(spark, warehouse, _platform_meta(SEED, ACCOUNTS, DAYS, START, params))


def test_lazy_tables_equal_written_ones_and_another_seed_differs(spark, params, sim):
    same = simulate_platform(spark, accounts=ACCOUNTS, days=DAYS, seed=SEED, start_date=START, params=params)
    other = simulate_platform(spark, accounts=ACCOUNTS, days=DAYS, seed=SEED + 1, start_date=START, params=params)
    schema = T.StructType([*schemas.ACCOUNTS_SCHEMA.fields, *ATTRIBUTE_FIELDS])
    pdf = sim[t.ACCOUNTS][schema.fieldNames()].copy()
    pdf[PHOTOS] = pdf[PHOTOS].astype(object).where(pdf[PHOTOS].notna(), None)  # NaN would not equal null
    written = spark.createDataFrame(pdf, schema)
    assert_df_equality(same[t.ACCOUNTS], written, ignore_row_order=True, ignore_nullable=True)
    # The other tables too (write_platform builds labels from the edges it wrote, the lazy tables their own way).
    for name in (t.TRUTH, t.EVENTS, t.EDGES, t.LABELS):
        stored = spark.read.format("delta").load(f"{sim['warehouse']}/{name}")
        assert_df_equality(same[name].select(*stored.columns), stored, ignore_row_order=True, ignore_nullable=True)
    assert other[t.ACCOUNTS].exceptAll(same[t.ACCOUNTS]).count() > 0.9 * ACCOUNTS
    assert other[t.TRUTH].exceptAll(same[t.TRUTH]).count() > 0


# ---------------------------------------------------------------- parameters


def test_bad_parameters_raise_named_errors(params):
    with pytest.raises(SimulationParamsError, match="accounts"):
        check_params(accounts=3, days=5, seed=1, start_date=START, params=params)
    with pytest.raises(SimulationParamsError, match="at most 3,000,000,000"):
        check_params(accounts=3_100_000_000, days=5, seed=1, start_date=START, params=params)
    broken = {**params, "prevalence": 0.9}
    with pytest.raises(SimulationParamsError, match="prevalence"):
        check_params(accounts=100, days=5, seed=1, start_date=START, params=broken)
    missing = {k: v for k, v in params.items() if k != "humans"}
    with pytest.raises(SimulationParamsError, match="humans"):
        check_params(accounts=100, days=5, seed=1, start_date=START, params=missing)
    bad_periods = {**params, "scheduled": {**params["scheduled"], "periods_min": [7]}}
    with pytest.raises(SimulationParamsError, match="periods_min"):
        check_params(accounts=100, days=5, seed=1, start_date=START, params=bad_periods)
    # The attributes knobs are checked before any table is written too.
    no_attributes = {k: v for k, v in params.items() if k != "attributes"}
    with pytest.raises(SimulationParamsError, match="attributes.enabled"):
        check_params(accounts=100, days=5, seed=1, start_date=START, params=no_attributes)
    bad_rate = {**params, "attributes": {**params["attributes"], "missing_rate": 1.5}}
    with pytest.raises(SimulationParamsError, match="attributes.missing_rate"):
        check_params(accounts=100, days=5, seed=1, start_date=START, params=bad_rate)

    def nested(section, **knobs):
        return {**params, section: {**params[section], **knobs}}

    # Values that used to crash mid-check (ZeroDivisionError, int('x')) or silently give other data.
    for changed, named in ((nested("cyborg", auto_period_min=0), "auto_period_min"),
                           (nested("cyborg", auto_period_min=-10), "auto_period_min"),
                           (nested("cyborg", auto_hours=30), "auto_hours"),
                           (nested("cyborg", auto_period_min=480), r"auto_period_min.*\(480\).*auto_hours"),
                           (nested("cyborg", auto_period_min=240), r"auto_period_min.*\(240\).*auto_hours"),
                           (nested("scheduled", periods_min=[15, "x"]), "wrong kind"),
                           (nested("humans", weekend_factor=-2.5), "weekend_factor"),
                           (nested("labels", user_report_extra_mean=-1.0), "user_report_extra_mean"),
                           (nested("labels", appeal_delay_days=-3.0), "appeal_delay_days"),
                           ({**params, "signup_growth": 0.0}, "signup_growth"),
                           # sums of 1, but a negative weight lowers every later cut-off of the draw
                           ({**params, "country_weights": {"US": 1.0, "GB": -0.5, "JP": 0.5}}, "country_weights"),
                           (nested("humans", event_type_weights={**params["humans"]["event_type_weights"],
                                                                 "like": -0.1}), "event_type_weights"),
                           (nested("labels", investigator_weights={**params["labels"]["investigator_weights"],
                                                                   "mimic": -1.0}), "investigator_weights"),
                           ({**params, "prevalence": 0.5, "family_shares": {f: float(f == "botnet") for f in
                                                                           params["family_shares"]}}, "botnet"),
                           # no bot among new sign-ups, no botnet burst, empty sessions: other data, silently
                           (nested("drift", new_signup_bot_multiplier=-1.0), "new_signup_bot_multiplier"),
                           (nested("botnet", bursts_per_day=-4.0), "bursts_per_day"),
                           (nested("follow_spam", follows_per_session=-1.0), "follows_per_session"),
                           (nested("mimic", session_events_min=0), "session_events_min"),
                           # a notebook's params of the wrong kind: named, not a bare ValueError/AttributeError
                           (nested("drift", detection_wave_fraction="half"), "wrong kind"),
                           ({**params, "new_signup_share": "some"}, "wrong kind"),
                           ({**params, "country_weights": [1.0, 2.0]}, "country_weights")):
        with pytest.raises(SimulationParamsError, match=named):
            check_params(accounts=100, days=5, seed=1, start_date=START, params=changed)
    # A datetime is refused: its day would depend on the process's time zone.
    with pytest.raises(SimulationParamsError, match="datetime.date"):
        check_params(accounts=100, days=5, seed=1, start_date=dt.datetime(2026, 1, 5), params=params)


def test_cli_bad_arguments_exit_2_before_spark(warehouse):
    args = ["simulate", "--accounts", "5", "--days", "2", "--seed", "3", "--warehouse", warehouse]
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2 and "accounts" in bad.output
    bad = CliRunner().invoke(app, ["simulate", "--accounts", "50", "--days", "2", "--seed", "3",
                                   "--start-date", "2026-13-01", "--warehouse", warehouse])
    assert bad.exit_code == 2 and "--start-date" in bad.output
    bad = CliRunner().invoke(app, ["simulate", "--accounts", "50", "--days", "2", "--seed", "3", "--warehouse",
                                   warehouse, "--set", "simulate.cyborg.auto_period_min=0"])
    assert bad.exit_code == 2 and "auto_period_min" in bad.output


def test_job_is_import_safe_and_rejects_bad_arguments(capsys):
    spec = importlib.util.spec_from_file_location("simulate_job", PROJECT_ROOT / "jobs" / "simulate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing runs nothing
    assert module.main(["--accounts", "5", "--days", "1", "--seed", "1"]) == 2
    assert "accounts" in capsys.readouterr().err


def test_job_takes_a_relative_warehouse_from_the_current_directory(spark, tmp_path, monkeypatch):
    import botwatch.simulate as simulate

    spec = importlib.util.spec_from_file_location("simulate_job", PROJECT_ROOT / "jobs" / "simulate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = []
    monkeypatch.setattr(simulate, "write_platform", lambda _spark, warehouse, **_: written.append(warehouse) or {})
    monkeypatch.chdir(tmp_path)
    assert module.main(["--accounts", "20", "--days", "1", "--seed", "1", "--warehouse", "wh"]) == 0
    assert written == [str(tmp_path / "wh")]  # as every other entry point reads it


# ---------------------------------------------------------------- scripted bots (sequence-only fingerprint)

SCRIPTED_OVERRIDES = {
    "prevalence": 0.3,
    "family_shares.scheduled": 0.0, "family_shares.mimic": 0.5, "family_shares.botnet": 0.5,
    "family_shares.cyborg": 0.0, "family_shares.follow_spam": 0.0, "drift.new_family": "null",
    "mimic.scripted_share": 1.0, "botnet.scripted_share": 1.0, "botnet.human_hours_share": 1.0,
}


@pytest.fixture(scope="module")
def scripted(spark, conf):
    params = conf.with_overrides([f"simulate.{k}={v}" for k, v in SCRIPTED_OVERRIDES.items()]).section("simulate")
    tables = simulate_platform(spark, accounts=1200, days=6, seed=5, start_date=START, params=params)
    fam = tables[t.TRUTH].toPandas().set_index(t.ACCOUNT_ID)[t.FAMILY]
    ev = tables[t.EVENTS].toPandas().sort_values([t.ACCOUNT_ID, t.EVENT_TS], kind="stable")
    ev[t.FAMILY] = ev[t.ACCOUNT_ID].map(fam)
    offsets = tables[t.ACCOUNTS].toPandas().set_index(t.ACCOUNT_ID)[t.COUNTRY].map(t.COUNTRY_UTC_OFFSET)
    ev["local"] = ev[t.EVENT_TS] + pd.to_timedelta(ev[t.ACCOUNT_ID].map(offsets), unit="h")
    return {"params": params, "family": fam, "ev": ev}


def _type_sequences(ev: pd.DataFrame, family: str, min_len: int) -> list[np.ndarray]:
    frame = ev[ev[t.FAMILY] == family]
    seqs = [g[t.EVENT_TYPE].to_numpy() for _, g in frame.groupby(t.ACCOUNT_ID, sort=True)]
    return [s for s in seqs if len(s) >= min_len]


def _lag_match(seqs: list[np.ndarray], lag: int) -> float:
    hits = sum(int((s[lag:] == s[:-lag]).sum()) for s in seqs)
    return hits / sum(len(s) - lag for s in seqs)


def _quantile_mix(weights: dict[str, float], length: int) -> pd.Series:
    """Reference: type counts of a cycle that takes the human mix at quantiles (q + 0.5) / length."""
    names = list(weights)
    cum = np.cumsum([weights[n] for n in names]) / sum(weights.values())
    picks = [names[int(np.searchsorted(cum, (q + 0.5) / length, side="right"))] for q in range(length)]
    return pd.Series(picks).value_counts().reindex(names, fill_value=0) / length


def test_scripted_bots_repeat_a_kit_cycle_in_time_order(scripted):
    params, ev = scripted["params"], scripted["ev"]
    length, kits = params["script"]["length"], params["script"]["kits"]
    humans = _type_sequences(ev, "human", 2 * length)
    assert len(humans) > 50
    # Humans draw each type independently: the lag-`length` match rate is sum(p^2) (~0.33), not 1.
    w = pd.Series(params["humans"]["event_type_weights"], dtype=float)
    p2 = float(((w / w.sum()) ** 2).sum())
    assert abs(_lag_match(humans, length) - p2) < 0.05
    for family in ("mimic", "botnet"):
        seqs = _type_sequences(ev, family, 2 * length)
        assert len(seqs) >= 20, family
        # Every account's type sequence, in time order, is periodic with the script length ...
        assert _lag_match(seqs, length) == 1.0, family
        # ... and with no shorter period (the cycle's counts have gcd 1), for every account.
        for lag in range(1, length):
            if length % lag == 0:
                assert all((s[lag:] != s[:-lag]).any() for s in seqs), (family, lag)
        # The cycles (up to rotation) come from at most `kits` automation kits.
        def canonical(s: np.ndarray) -> tuple:
            cycle = list(s[:length])
            return min(tuple(cycle[i:] + cycle[:i]) for i in range(length))
        assert len({canonical(s) for s in seqs}) <= kits, family


def test_scripted_bots_match_the_human_event_mix(scripted):
    params, ev = scripted["params"], scripted["ev"]
    weights = {k: float(v) for k, v in params["humans"]["event_type_weights"].items()}
    want = pd.Series(weights) / sum(weights.values())
    assert (_quantile_mix(weights, params["script"]["length"]) - want).abs().max() <= 0.025
    for family in ("mimic", "botnet", "human"):
        got = ev[ev[t.FAMILY] == family][t.EVENT_TYPE].value_counts(normalize=True).reindex(want.index, fill_value=0)
        assert (got - want).abs().max() < 0.035, (family, got.round(3).to_dict())

    # Per-account event-type entropy (what the tabular features see) does not separate mimics from
    # humans of the same activity: medians within 0.15 bits among accounts with 40-200 events.
    def entropies(family: str) -> np.ndarray:
        frame = ev[ev[t.FAMILY] == family]
        counts = frame.groupby(t.ACCOUNT_ID)[t.EVENT_TYPE].value_counts().unstack(fill_value=0)
        counts = counts[(counts.sum(axis=1) >= 40) & (counts.sum(axis=1) <= 200)]
        return np.array([entropy(row, base=2) for row in counts.to_numpy()])

    mimic, human = entropies("mimic"), entropies("human")
    assert len(mimic) >= 20 and len(human) >= 50
    assert abs(np.median(mimic) - np.median(human)) < 0.15


def test_scripted_mimics_time_their_sessions_like_humans(scripted):
    ev = scripted["ev"]

    def in_session_cv(family: str) -> pd.Series:
        g = _gaps(ev[ev[t.FAMILY] == family])
        g = g[g["gap"] < 600]
        return g.groupby(t.ACCOUNT_ID)["gap"].agg(lambda x: x.std() / x.mean() if len(x) >= 5 else np.nan).dropna()

    mimic, human = in_session_cv("mimic"), in_session_cv("human")
    # Unlike the metronome mimics (CV < half the humans'), gaps are as irregular as humans'.
    assert abs(mimic.median() - human.median()) < 0.25 * human.median()
    # Residential proxies are only a small share of their sessions: few distinct IPs.
    ips = ev[ev[t.FAMILY] == "mimic"].groupby(t.ACCOUNT_ID)[t.IP_HASH].nunique()
    assert ips.median() <= scripted["params"]["humans"]["max_ips"] + 1


def test_human_timed_botnets_burst_in_the_human_day_the_others_around_the_clock(sim, scripted):
    night, evening = slice(1, 6), slice(17, 23)  # 01:00-05:59 and 17:00-22:59 local
    around = _local_hour_shares(sim["ev"][sim["ev"][t.FAMILY] == "botnet"])  # botnet.human_hours_share 0
    human_timed = _local_hour_shares(scripted["ev"][scripted["ev"][t.FAMILY] == "botnet"])  # share 1
    humans = _local_hour_shares(scripted["ev"][scripted["ev"][t.FAMILY] == "human"])
    assert around[night].sum() > 0.5 * 5 / 24
    assert human_timed[night].sum() < 0.3 * 5 / 24
    assert human_timed[evening].sum() > 1.5 * 6 / 24
    assert np.corrcoef(human_timed, humans)[0, 1] > 0.6  # ~170 group bursts: a noisy histogram
    # Still synchronised: a group's members burst in the same minutes.
    bots = scripted["ev"][scripted["ev"][t.FAMILY] == "botnet"]
    per_minute = bots.groupby(bots[t.EVENT_TS].dt.floor("min"))[t.ACCOUNT_ID].nunique()
    assert per_minute.max() >= 5


def test_human_sessions_of_the_evening_before_spill_into_the_first_day(spark, params):
    """UTC+0 accounts whose sessions all start at 23:xx local: every event in UTC hour 0 is a session of the
    evening before, on the first day as on the next."""
    late = [0.0] * 23 + [1.0]
    humans = {**params, "prevalence": 0.0, "country_weights": {"GB": 1.0},
              "humans": {**params["humans"], "hour_weights_weekday": late, "hour_weights_weekend": late}}
    events = simulate_platform(spark, accounts=1000, days=2, seed=1, start_date=START, params=humans)[t.EVENTS]
    ts = events.select(t.EVENT_TS).toPandas()[t.EVENT_TS]
    day = (ts - pd.Timestamp(START)).dt.days
    per_day = [int(((ts.dt.hour == 0) & (day == d)).sum()) for d in range(2)]
    assert per_day[1] > 100
    assert per_day[0] > 0.5 * per_day[1], per_day


def test_a_scheduled_bots_dominant_type_has_the_configured_share(spark, params):
    shares = {f: float(f == "scheduled") for f in params["family_shares"]}
    for dominant_share in (0.5, 0.9):
        sched = {**params, "prevalence": 0.3, "family_shares": shares,
                 "scheduled": {**params["scheduled"], "dominant_share": dominant_share, "periods_min": [15]}}
        tables = simulate_platform(spark, accounts=200, days=3, seed=2, start_date=START, params=sched)
        scheduled = tables[t.TRUTH].where(F.col(t.FAMILY) == "scheduled").select(t.ACCOUNT_ID)
        pdf = tables[t.EVENTS].join(scheduled, t.ACCOUNT_ID, "left_semi").select(t.ACCOUNT_ID, t.EVENT_TYPE).toPandas()
        bots = pdf.groupby(t.ACCOUNT_ID)[t.EVENT_TYPE].agg(lambda s: s.value_counts(normalize=True).iloc[0])
        assert len(bots) > 30
        assert abs(bots.mean() - dominant_share) < 0.03, (dominant_share, bots.mean())


def test_cyborg_phases_that_start_the_evening_before_spill_into_the_first_day(spark, params):
    """Every cyborg automates every day here, so the early hours of each UTC day hold the same phases'
    ends: the first day's must not lack those started the evening before it."""
    shares = {f: float(f == "cyborg") for f in params["family_shares"]}
    cyborgs = {**params, "prevalence": 0.3, "family_shares": shares,
               "cyborg": {**params["cyborg"], "auto_day_share": 1.0}}
    events = simulate_platform(spark, accounts=400, days=3, seed=3, start_date=START, params=cyborgs)[t.EVENTS]
    api = events.where(F.col(t.DEVICE_ID).startswith("api-")).select(t.ACCOUNT_ID, t.EVENT_TS).toPandas()
    ts = api[t.EVENT_TS]  # naive UTC: the session's time zone
    day = (ts - pd.Timestamp(START)).dt.days
    early = ts.dt.hour < 5  # phases run 6 h from their start hour: those from 19:00 on end in these hours
    per_day = [int((early & (day == d)).sum()) for d in range(3)]
    assert per_day[1] > 100
    assert abs(per_day[0] - per_day[1]) <= 0.05 * per_day[1], per_day
