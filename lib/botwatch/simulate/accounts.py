"""Accounts of the synthetic platform: who they are (family, country, sign-up) as Columns of the id.

Account ids follow sign-up time (as on real platforms): the oldest accounts have the smallest ids
and the last ``new_signup_share`` of the ids sign up during the simulated days. Botnets are blocks
of consecutive ids signed up within minutes. Because family, botnet group, sign-up time and
popularity are pure functions of the id, other generators (the graph) compute them for any id
without a join.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.simulate.plan import DAY_S, Permutation, Plan
from botwatch.simulate.rng import choose, lognormal_unit_mean, normal, token, uniform

# Columns of the internal per-account profile (not part of the contract).
BOTNET_GROUP = "botnet_group"
CREATED_S = "created_s"
ACTIVE_FROM_S = "active_from_s"
UTC_OFFSET = "utc_offset"
ACTIVITY = "activity"
ACTIVITY_Z = "activity_z"
DORMANT = "dormant"
IS_BOT = "is_bot"
N_IPS = "n_ips"
N_DEVICES = "n_devices"
DC_IP = "dc_ip"

HUMANLIKE = ("human", "cyborg")  # accounts run by a person (cyborgs part of the time)


def permute(perm: Permutation, x: Column) -> Column:
    return F.pmod(x * F.lit(perm.mul) + F.lit(perm.add), F.lit(perm.n))


def unpermute(perm: Permutation, y: Column) -> Column:
    return F.pmod(F.pmod(y - F.lit(perm.add), F.lit(perm.n)) * F.lit(perm.inv), F.lit(perm.n))


def botnet_members(plan: Plan, block: Column) -> Column:
    """Members of a botnet block: ids ``block * group_max`` .. ``+ members - 1`` (when it is a botnet)."""
    gmin, gmax = int(plan.p("botnet.group_min")), int(plan.p("botnet.group_max"))
    return (F.lit(gmin) + F.floor(uniform(plan.seed, "botnet_size", block) * F.lit(gmax - gmin + 1))).cast("long")


def _family_draw(plan: Plan, u: Column, new: bool) -> Column:
    expr = F.when(F.lit(False), F.lit("human"))
    cum = 0.0
    for family, prob in plan.other_family_probs(new):
        cum += prob
        expr = expr.when(u < F.lit(cum), F.lit(family))
    return expr.otherwise(F.lit("human"))


def _base_created_s(plan: Plan, account_id: Column, jitter: Column) -> Column:
    history = plan.f("history_years") * 365.25 * DAY_S
    r = (account_id.cast("double") + jitter) / F.lit(float(max(plan.n_old, 1)))
    old = F.lit(float(plan.start_s)) - F.lit(history) * F.pow(F.lit(1.0) - r, F.lit(plan.f("signup_growth")))
    new_pos = (account_id - F.lit(plan.n_old)).cast("double") + jitter
    new = F.lit(float(plan.start_s)) + new_pos / F.lit(float(max(plan.n_new, 1))) * F.lit(float(plan.days * DAY_S))
    return F.when(account_id >= F.lit(plan.n_old), new).otherwise(old)


def with_identity(plan: Plan, df: DataFrame, id_col: str, prefix: str = "", created: bool = True) -> DataFrame:
    """Add ``<prefix>family``, ``<prefix>botnet_group`` and ``<prefix>created_s`` for the ids in ``id_col``.

    All three are functions of the id alone (ids follow sign-up time; a botnet is a block of
    consecutive ids signed up within minutes), so any generator can compute them without a join.
    Each step is its own column so Spark evaluates every hash once.
    """
    gmax = int(plan.p("botnet.group_max"))
    aid = F.col(id_col)
    block, first, botnet = f"{prefix}_block", f"{prefix}_block_first", f"{prefix}_is_botnet"
    u_fam, jit, jit_first = f"{prefix}_u_family", f"{prefix}_jitter", f"{prefix}_jitter_first"
    df = df.withColumn(block, F.floor(aid / F.lit(gmax)).cast("long"))
    df = df.withColumn(first, F.col(block) * F.lit(gmax))
    prob = F.when(F.col(first) >= F.lit(plan.n_old), F.lit(plan.botnet_block_prob(True))).otherwise(
        F.lit(plan.botnet_block_prob(False))
    )
    df = df.withColumn(
        botnet,
        (uniform(plan.seed, "botnet_block", F.col(block)) < prob)
        & (aid - F.col(first) < botnet_members(plan, F.col(block))),
    )
    df = df.withColumn(u_fam, uniform(plan.seed, "family", aid))
    df = df.withColumn(
        prefix + t.FAMILY,
        F.when(F.col(botnet), F.lit("botnet"))
        .when(aid >= F.lit(plan.n_old), _family_draw(plan, F.col(u_fam), True))
        .otherwise(_family_draw(plan, F.col(u_fam), False)),
    )
    df = df.withColumn(prefix + BOTNET_GROUP, F.when(F.col(botnet), F.col(block)).otherwise(F.lit(None).cast("long")))
    if not created:
        return df.drop(block, first, botnet, u_fam)
    df = df.withColumn(jit, uniform(plan.seed, "signup_jitter", aid))
    df = df.withColumn(jit_first, uniform(plan.seed, "signup_jitter", F.col(first)))
    step = plan.f("botnet.signup_window_min") * 60.0 / gmax
    bulk = _base_created_s(plan, F.col(first), F.col(jit_first)) + (
        (aid - F.col(first)).cast("double") + uniform(plan.seed, "botnet_signup", aid)
    ) * F.lit(step)
    df = df.withColumn(
        prefix + CREATED_S,
        F.least(
            F.when(F.col(botnet), bulk).otherwise(_base_created_s(plan, aid, F.col(jit))),
            F.lit(float(plan.end_s - 1)),
        ),
    )
    return df.drop(block, first, botnet, u_fam, jit, jit_first)


def active_from_s(plan: Plan, family: Column, created: Column) -> Column:
    """When the account starts acting: sign-up, or the switch-on day for the drift's new family."""
    if plan.new_family is None or plan.switch_s is None:
        return created
    return F.when(family == F.lit(plan.new_family), F.greatest(created, F.lit(float(plan.switch_s)))).otherwise(
        created
    )


def popularity_rank(plan: Plan, account_id: Column) -> Column:
    """0 = the most followed account (global Zipf target choice ranks accounts by this)."""
    return permute(plan.popularity, account_id)


def is_hub(plan: Plan, account_id: Column) -> Column:
    return popularity_rank(plan, account_id) < F.lit(max(1, int(plan.f("hub_share") * plan.accounts)))


def human_ip(plan: Plan, account_id: Column, index: Column | int) -> Column:
    return token(plan.seed, "ip", account_id, index)


def account_device(plan: Plan, account_id: Column, index: Column | int) -> Column:
    return F.concat(F.lit("dev-"), token(plan.seed, "device", account_id, index))


def datacenter_ip(plan: Plan, index: Column) -> Column:
    return token(plan.seed, "dc_ip", index)


def proxy_ip(plan: Plan, index: Column) -> Column:
    return token(plan.seed, "proxy_ip", index)


def botnet_ip(plan: Plan, group: Column, index: Column) -> Column:
    return token(plan.seed, "botnet_ip", group, index)


def botnet_device(plan: Plan, group: Column, index: Column) -> Column:
    return F.concat(F.lit("dev-"), token(plan.seed, "botnet_device", group, index))


def profile(spark: SparkSession, plan: Plan) -> DataFrame:
    """One row per account with everything the generators need (internal, wider than ``accounts``)."""
    sid = plan.seed
    n_parts = plan.partitions(spark.sparkContext.defaultParallelism)
    df = spark.range(0, plan.accounts, 1, n_parts).withColumnRenamed("id", t.ACCOUNT_ID)
    aid = F.col(t.ACCOUNT_ID)
    fam = F.col(t.FAMILY)
    df = with_identity(plan, df, t.ACCOUNT_ID)
    df = df.withColumn(IS_BOT, fam != F.lit("human"))
    df = df.withColumn(ACTIVE_FROM_S, active_from_s(plan, fam, F.col(CREATED_S)))

    # Botnet members claim their group's country; everyone else draws their own.
    country_key = F.when(fam == F.lit("botnet"), -F.col(BOTNET_GROUP) - F.lit(1)).otherwise(aid)
    countries = [(c, float(w)) for c, w in sorted(plan.p("country_weights").items())]
    df = df.withColumn("_u_country", uniform(sid, "country", country_key))
    df = df.withColumn(t.COUNTRY, choose(F.col("_u_country"), countries)).drop("_u_country")
    offsets = F.create_map(*[x for c, _ in countries for x in (F.lit(c), F.lit(t.COUNTRY_UTC_OFFSET[c]))])
    df = df.withColumn(UTC_OFFSET, offsets[F.col(t.COUNTRY)].cast("int"))

    humanlike = fam.isin(*HUMANLIKE)
    u_verified = uniform(sid, "verified", aid)
    df = df.withColumn(
        t.VERIFIED,
        is_hub(plan, aid) & humanlike
        | (u_verified < F.when(humanlike, F.lit(plan.f("verified_rate"))).otherwise(
            F.lit(plan.f("bot_verified_rate")))),
    )
    means = {f: plan.f(f"profile_completeness.{f}") for f in t.FAMILIES}
    mean = F.lit(means["human"])
    for family in t.BOT_FAMILIES:
        mean = F.when(fam == F.lit(family), F.lit(means[family])).otherwise(mean)
    sd = F.when(humanlike | (fam == F.lit("mimic")), F.lit(0.2)).otherwise(F.lit(0.12))
    df = df.withColumn(
        t.PROFILE_COMPLETENESS,
        F.round(F.least(F.lit(1.0), F.greatest(F.lit(0.0), mean + sd * normal(sid, "profile", aid))), 3),
    )

    # Activity of the person behind human-like accounts: heavy-tailed, some dormant.
    dormant_share = plan.f("humans.dormant_share")
    dormant_rate = plan.f("humans.dormant_events_per_day")
    active_mean = max(
        1e-6, (plan.f("humans.events_per_day") - dormant_share * dormant_rate) / max(1e-9, 1 - dormant_share)
    )
    df = df.withColumn(ACTIVITY_Z, normal(sid, "activity", aid))
    df = df.withColumn(DORMANT, humanlike & (uniform(sid, "dormant", aid) < F.lit(dormant_share)))
    rate = F.when(F.col(DORMANT), F.lit(dormant_rate)).otherwise(
        F.lit(active_mean) * lognormal_unit_mean(F.col(ACTIVITY_Z), plan.f("humans.activity_sigma"))
    )
    df = df.withColumn(
        ACTIVITY,
        F.when(fam == F.lit("cyborg"), rate * F.lit(plan.f("cyborg.human_activity_factor"))).otherwise(rate),
    )
    df = df.withColumn(
        N_IPS, (F.lit(1) + F.floor(uniform(sid, "n_ips", aid) * F.lit(int(plan.p("humans.max_ips"))))).cast("long")
    )
    df = df.withColumn(
        N_DEVICES,
        (F.lit(1) + F.floor(uniform(sid, "n_devices", aid) * F.lit(int(plan.p("humans.max_devices"))))).cast("long"),
    )
    df = df.withColumn(
        DC_IP, datacenter_ip(plan, F.floor(uniform(sid, "dc", aid) * F.lit(int(plan.p("datacenter_ips"))))))

    group = F.col(BOTNET_GROUP)
    n_group_ips = F.lit(int(plan.p("botnet.ips_per_group")))
    df = df.withColumn(
        t.SIGNUP_IP_HASH,
        F.when(humanlike, human_ip(plan, aid, 0))
        .when(fam == F.lit("botnet"),
              botnet_ip(plan, group, F.floor(uniform(sid, "signup_ip", aid) * n_group_ips)))
        .when(fam == F.lit("mimic"),
              proxy_ip(plan, F.floor(uniform(sid, "signup_ip", aid) * F.lit(int(plan.p("mimic.proxy_pool"))))))
        .otherwise(F.col(DC_IP)),
    )
    df = df.withColumn(
        t.SIGNUP_DEVICE_ID,
        F.when(fam == F.lit("botnet"),
               botnet_device(plan, group,
                             F.floor(uniform(sid, "signup_dev", aid) * F.lit(int(plan.p("botnet.devices_per_group"))))))
        .otherwise(account_device(plan, aid, 0)),
    )
    return df


def accounts_table(profile_df: DataFrame) -> DataFrame:
    """The ``accounts`` input table from the profile."""
    return profile_df.select(
        t.ACCOUNT_ID,
        F.timestamp_seconds(F.floor(F.col(CREATED_S)).cast("long")).alias(t.CREATED_AT),
        t.COUNTRY,
        t.VERIFIED,
        t.PROFILE_COMPLETENESS,
        t.SIGNUP_IP_HASH,
        t.SIGNUP_DEVICE_ID,
    )


def truth_table(profile_df: DataFrame) -> DataFrame:
    """The hidden ``truth`` table (family per account), for evaluation only."""
    return profile_df.select(t.ACCOUNT_ID, t.FAMILY)
