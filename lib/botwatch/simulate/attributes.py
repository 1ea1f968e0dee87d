"""Extra ``accounts`` columns of the synthetic platform: a platform's own attributes, as users bring
them (``botwatch.features.attributes`` turns them into ``attr_*`` and ``nbr_*`` features).

- ``photos`` (double, a count): lognormal, humans ~20 and bots ~8 on average; unknown (null)
  for a ``missing_rate`` share of accounts. A plain attribute with a little signal of its own.
- ``has_phone`` (boolean): humans ``phone_rate.human``, bots ``phone_rate.bot``.
- ``linked_apps_score`` (double): standard normal, shifted by ``linked_apps_shift`` for humans who
  follow at least one bot (a bot's audience: accounts that run follow-for-follow apps). Bots draw
  the shift with the same probability as humans have it, so the column's distribution is the
  same for bots and humans; only bots' NEIGHBOURS (their followers) carry it differently.

Every draw is a hash of (seed, purpose, account id) and the shift share is an exact count, so the
columns are the same at any partitioning. ``attributes.enabled: false`` leaves only the contract's
columns.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from botwatch import tables as t
from botwatch.simulate import accounts as acc
from botwatch.simulate.plan import Plan
from botwatch.simulate.rng import lognormal_unit_mean, normal, uniform

PHOTOS = "photos"
HAS_PHONE = "has_phone"
LINKED_APPS_SCORE = "linked_apps_score"
ATTRIBUTE_FIELDS = (
    T.StructField(PHOTOS, T.DoubleType(), True),
    T.StructField(HAS_PHONE, T.BooleanType(), True),
    T.StructField(LINKED_APPS_SCORE, T.DoubleType(), True),
)


def enabled(plan: Plan) -> bool:
    return bool(plan.p("attributes.enabled"))


def accounts_schema(plan: Plan, contract: T.StructType) -> T.StructType:
    """The contract's accounts schema, plus the attribute columns when they are on."""
    return T.StructType([*contract.fields, *ATTRIBUTE_FIELDS]) if enabled(plan) else contract


def with_attributes(plan: Plan, profile_df: DataFrame, accounts: DataFrame, edges: DataFrame) -> DataFrame:
    """``accounts`` (one row per ``account_id``) with the attribute columns added (when enabled).

    ``edges`` is the platform's edge table: whom each human follows decides the shift."""
    if not enabled(plan):
        return accounts
    sid = plan.seed
    # Humans who follow a bot; a bot's family is a function of its id (no join with the profile).
    targets = acc.with_identity(plan, edges.select(t.SRC, t.DST), t.DST, "_d_", created=False)
    follows_bot = targets.where(F.col("_d_" + t.FAMILY) != F.lit("human")).select(
        F.col(t.SRC).alias(t.ACCOUNT_ID)).distinct().withColumn("_follows_bot", F.lit(True))
    prof = profile_df.select(t.ACCOUNT_ID, acc.IS_BOT).join(follows_bot, t.ACCOUNT_ID, "left")
    human_shifted = ~F.col(acc.IS_BOT) & F.coalesce(F.col("_follows_bot"), F.lit(False))
    # The share of humans with the shift, as a one-row frame (exact count, so deterministic).
    share = prof.agg(
        (F.sum(human_shifted.cast("long")) / F.greatest(F.sum((~F.col(acc.IS_BOT)).cast("long")), F.lit(1)))
        .alias("_q")
    )
    aid = F.col(t.ACCOUNT_ID)
    is_bot = F.col(acc.IS_BOT)
    shifted = F.when(is_bot, uniform(sid, "linked_apps_bot", aid) < F.col("_q")).otherwise(human_shifted)
    photos_mean = F.when(is_bot, F.lit(8.0)).otherwise(F.lit(20.0))
    photos = F.floor(photos_mean * lognormal_unit_mean(normal(sid, "photos", aid), 1.0))
    phone_rate = F.when(is_bot, F.lit(plan.f("attributes.phone_rate.bot"))).otherwise(
        F.lit(plan.f("attributes.phone_rate.human")))
    attrs = prof.crossJoin(F.broadcast(share)).select(
        t.ACCOUNT_ID,
        F.when(uniform(sid, "photos_missing", aid) >= F.lit(plan.f("attributes.missing_rate")), photos)
        .cast("double").alias(PHOTOS),
        (uniform(sid, "has_phone", aid) < phone_rate).alias(HAS_PHONE),
        F.round(normal(sid, "linked_apps", aid) + F.when(shifted, F.lit(plan.f("attributes.linked_apps_shift")))
                .otherwise(F.lit(0.0)), 3).alias(LINKED_APPS_SCORE),
    )
    return accounts.join(attrs, t.ACCOUNT_ID, "left")
