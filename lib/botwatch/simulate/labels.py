"""Label observations of the synthetic platform, each source with its own scarcity and noise.

* ``investigator``: a few hundred verdicts a week per 100k accounts, mostly right
  (``investigator_error``), aimed at borderline accounts (mimics and cyborgs among bots, very
  active humans); on the drift's detection-wave day a share of the bot verdicts lands at once.
* ``user_report``: plentiful and noisy: a share of bots is reported (the rest are missed) and a
  share of humans is falsely reported; label 1, sometimes several reports per account.
* ``appeal``: humans restricted in error (falsely reported or wrongly judged) who win an appeal:
  precise negatives, label 0.
* ``propagated``: weak positives for accounts in mutual follows with several investigator-confirmed
  bots (botnet mates above all, but also people who follow back bots).

All ``labeled_at`` fall inside the simulated window and after the account became active.
"""
from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.simulate import accounts as acc
from botwatch.simulate.plan import DAY_S, Plan
from botwatch.simulate.rng import exponential, stochastic_round, uniform

_LO = "label_lo"
_P_TAIL = 0.5 * math.erfc(1.0 / math.sqrt(2.0))  # P(z > 1) for a standard normal
_VERY_ACTIVE_WEIGHT = 3.0
_DORMANT_WEIGHT = 0.2


def _expected_humans_and_bots(plan: Plan) -> tuple[float, float]:
    bots = plan.n_old * plan.prevalence(False) + plan.n_new * plan.prevalence(True)
    return plan.accounts - bots, bots


def investigator_probability(plan: Plan, family: Column, is_bot: Column, dormant: Column,
                             activity_z: Column) -> Column:
    """Per-account chance of an investigator verdict in the window (expected total as configured)."""
    n_labels = plan.f("labels.investigator_per_week_per_100k") * plan.accounts / 1e5 * plan.days / 7.0
    bot_share = plan.f("labels.investigator_bot_share")
    humans, bots = _expected_humans_and_bots(plan)
    weights = {f: plan.f(f"labels.investigator_weights.{f}") for f in t.BOT_FAMILIES}
    shares = plan.family_shares()
    bot_weight_sum = bots * sum(shares[f] * weights[f] for f in shares)
    ds = plan.f("humans.dormant_share")
    human_weight_sum = humans * (
        (1 - ds) * (_P_TAIL * _VERY_ACTIVE_WEIGHT + (1 - _P_TAIL)) + ds * _DORMANT_WEIGHT
    )
    bot_w = F.lit(1.0)
    for f in shares:
        bot_w = F.when(family == F.lit(f), F.lit(weights[f])).otherwise(bot_w)
    human_w = (
        F.when(dormant, F.lit(_DORMANT_WEIGHT))
        .when(activity_z > F.lit(1.0), F.lit(_VERY_ACTIVE_WEIGHT))
        .otherwise(F.lit(1.0))
    )
    p_bot = F.lit(n_labels * bot_share / max(bot_weight_sum, 1e-9)) * bot_w
    p_human = F.lit(n_labels * (1 - bot_share) / max(human_weight_sum, 1e-9)) * human_w
    return F.least(F.lit(1.0), F.when(is_bot, p_bot).otherwise(p_human))


def _label_rows(df: DataFrame, label: Column, source: str, at: Column) -> DataFrame:
    return df.select(
        t.ACCOUNT_ID,
        label.cast("int").alias(t.LABEL),
        F.lit(source).alias(t.SOURCE),
        at.alias("at_s"),
    )


def direct_labels(plan: Plan, profile_df: DataFrame) -> DataFrame:
    """Investigator verdicts, user reports and appeals (no graph needed); ``at_s`` in epoch seconds."""
    sid = plan.seed
    aid, is_bot = F.col(t.ACCOUNT_ID), F.col(acc.IS_BOT)
    end = F.lit(float(plan.end_s))
    df = profile_df.select(
        t.ACCOUNT_ID, t.FAMILY, acc.IS_BOT, acc.DORMANT, acc.ACTIVITY_Z,
        F.greatest(F.lit(float(plan.start_s)), F.col(acc.ACTIVE_FROM_S)).alias(_LO),
    ).filter(F.col(_LO) < end)
    lo = F.col(_LO)

    # Investigators.
    p_inv = investigator_probability(plan, F.col(t.FAMILY), is_bot, F.col(acc.DORMANT), F.col(acc.ACTIVITY_Z))
    inv = df.filter(uniform(sid, "investigated", aid) < p_inv)
    wrong = uniform(sid, "investigator_error", aid) < F.lit(plan.f("labels.investigator_error"))
    inv_label = F.when(wrong, ~is_bot).otherwise(is_bot)
    inv_at = lo + uniform(sid, "investigated_at", aid) * (end - lo)
    if plan.wave_s is not None:
        wave = F.lit(float(plan.wave_s))
        in_wave = is_bot & (uniform(sid, "wave", aid) < F.lit(plan.f("drift.wave_label_share"))) & (wave >= lo)
        inv_at = F.when(in_wave, wave + uniform(sid, "wave_at", aid) * F.lit(float(DAY_S))).otherwise(inv_at)
    inv = inv.withColumn("inv_label", inv_label).withColumn("inv_at", inv_at)
    investigator = _label_rows(inv, F.col("inv_label"), "investigator", F.col("inv_at"))

    # User reports: label 1 always; wrong when the account is human.
    report_rate = F.when(is_bot, F.lit(plan.f("labels.user_report_bot_rate"))).otherwise(
        F.lit(plan.f("labels.user_report_human_rate"))
    )
    rep = df.filter(uniform(sid, "reported", aid) < report_rate)
    rep = rep.withColumn("first_at", lo + uniform(sid, "first_report", aid) * (end - lo))
    extra = stochastic_round(
        F.lit(plan.f("labels.user_report_extra_mean")) * exponential(sid, "extra_reports", aid),
        uniform(sid, "extra_reports_round", aid),
    )
    rep = rep.withColumn("n_reports", F.lit(1) + extra)
    reports = rep.select("*", F.explode(F.sequence(F.lit(0).cast("long"), F.col("n_reports") - F.lit(1))).alias("r"))
    report_at = F.when(F.col("r") == F.lit(0), F.col("first_at")).otherwise(
        F.col("first_at") + uniform(sid, "report_at", aid, F.col("r")) * (end - F.col("first_at"))
    )
    user_report = _label_rows(reports, F.lit(1), "user_report", report_at)

    # Appeals: humans restricted in error (a false report or a wrong verdict) who win.
    delay = exponential(sid, "appeal_delay", aid) * F.lit(plan.f("labels.appeal_delay_days") * DAY_S)
    won = uniform(sid, "appeal", aid) < F.lit(plan.f("labels.appeal_rate"))
    appeal_reported = _label_rows(rep.filter(~is_bot & won), F.lit(0), "appeal", F.col("first_at") + delay)
    appeal_verdict = _label_rows(inv.filter(~is_bot & wrong & won), F.lit(0), "appeal", F.col("inv_at") + delay)
    # One appeal per wrong restriction: a won appeal of the report does not overturn a later wrong verdict.
    appeals = appeal_reported.unionByName(appeal_verdict).dropDuplicates([t.ACCOUNT_ID, "at_s"])
    return investigator.unionByName(user_report).unionByName(appeals).filter(F.col("at_s") < end)


def propagated_labels(plan: Plan, direct: DataFrame, edges_df: DataFrame) -> DataFrame:
    """Weak positives for accounts in mutual follows with several investigator-confirmed bots.

    ``propagated_min_links`` counts distinct confirmed bots whose mutual follow with the account
    existed at their verdict; ``propagated_rate`` of the qualifying accounts get a label a day or
    so after the last of those verdicts. Botnet members qualify once a few mates are confirmed;
    people who follow back bots (and are followed back by them) do too, hence "weak".
    """
    sid = plan.seed
    seeds = direct.filter((F.col(t.SOURCE) == F.lit("investigator")) & (F.col(t.LABEL) == F.lit(1))).select(
        F.col(t.ACCOUNT_ID).alias("seed"), F.col("at_s").alias("seed_at")
    )
    edge_s = F.unix_seconds(F.col(t.CREATED_AT)).cast("double")
    e = edges_df.select(t.SRC, t.DST, edge_s.alias("edge_s"))
    followed = e.join(F.broadcast(seeds), F.col(t.SRC) == F.col("seed")).select(
        F.col(t.DST).alias(t.ACCOUNT_ID), "seed", "seed_at", F.col("edge_s").alias("out_s")
    )
    following = e.join(F.broadcast(seeds), F.col(t.DST) == F.col("seed")).select(
        F.col(t.SRC).alias(t.ACCOUNT_ID), "seed", F.col("edge_s").alias("in_s")
    )
    mutual = followed.join(following, [t.ACCOUNT_ID, "seed"]).filter(
        F.greatest(F.col("out_s"), F.col("in_s")) <= F.col("seed_at")
    )
    nb = mutual.groupBy(t.ACCOUNT_ID).agg(
        F.countDistinct("seed").alias("n_links"), F.max("seed_at").alias("last_seed_at")
    )
    nb = nb.join(F.broadcast(seeds), F.col(t.ACCOUNT_ID) == F.col("seed"), "left_anti")
    aid = F.col(t.ACCOUNT_ID)
    nb = nb.filter(
        (F.col("n_links") >= F.lit(int(plan.p("labels.propagated_min_links"))))
        & (uniform(sid, "propagated", aid) < F.lit(plan.f("labels.propagated_rate")))
    )
    at = F.col("last_seed_at") + (F.lit(0.5) + uniform(sid, "propagated_at", aid)) * F.lit(float(DAY_S))
    return _label_rows(nb, F.lit(1), "propagated", at).filter(F.col("at_s") < F.lit(float(plan.end_s)))


def labels_table(plan: Plan, profile_df: DataFrame, edges_df: DataFrame) -> DataFrame:
    """The ``labels`` input table; ``edges_df`` is the platform's ``edges`` table (generated or read back)."""
    direct = direct_labels(plan, profile_df)
    both = direct.unionByName(propagated_labels(plan, direct, edges_df))
    return both.select(
        t.ACCOUNT_ID,
        t.LABEL,
        t.SOURCE,
        F.timestamp_seconds(F.floor(F.col("at_s")).cast("long")).alias(t.LABELED_AT),
    )
