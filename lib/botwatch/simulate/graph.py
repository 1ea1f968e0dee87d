"""The follow graph of the synthetic platform (``edges``: ``src`` follows ``dst``).

Each account explodes into its out-degree's worth of follows. A follow goes inside the account's
community (Zipf over the community's members: local celebrities) or to the whole platform (Zipf
over the popularity ranking: a few hubs gather followers orders of magnitude above the median).
Humans follow back humans; hubs hardly follow back; ``follow_spam`` follows thousands at random
and is rarely followed back; botnet members follow each other densely. Communities and the
popularity ranking are seeded permutations of the ids, so a target's id comes from a formula,
not a join; the one shuffle is the final de-duplication of (src, dst).
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.simulate import accounts as acc
from botwatch.simulate.events import explode_range
from botwatch.simulate.plan import DAY_S, Plan
from botwatch.simulate.rng import lognormal_unit_mean, normal, stochastic_round, uniform, zipf_rank

T_S = "t_s"
_I = "i"
_DST_ACTIVE_FROM = "dst_active_from_s"


def _global_target(plan: Plan, u: Column) -> Column:
    rank = zipf_rank(u, plan.accounts, plan.f("graph.global_zipf"))
    return acc.unpermute(plan.popularity, rank)


def _community_target(plan: Plan, src: Column, u: Column) -> Column:
    size = int(plan.p("graph.community_size"))
    first = F.floor(acc.permute(plan.community, src) / F.lit(size)).cast("long") * F.lit(size)
    members = F.least(F.lit(size), F.lit(plan.accounts) - first)
    rank = zipf_rank(u, members, plan.f("graph.community_zipf"))
    return acc.unpermute(plan.community, first + rank)


def _created_between(plan: Plan, src_created: Column, dst_created: Column, in_period_share: Column, u: Column,
                     u2: Column, src_active_from: Column) -> Column:
    """A follow's creation time: after both accounts exist; mostly before the window, some inside it."""
    lo = F.greatest(src_created, dst_created) + F.lit(60.0)
    period_lo = F.greatest(lo, F.lit(float(plan.start_s)), src_active_from)
    start = F.lit(float(plan.start_s))
    in_period = (u < in_period_share) | (lo >= start) | (src_active_from > start)
    return F.when(in_period, period_lo + u2 * (F.lit(float(plan.end_s)) - period_lo)).otherwise(
        lo + u2 * (F.lit(float(plan.start_s)) - lo)
    )


def _followback_prob(plan: Plan, src_family: Column, dst: Column, dst_family: Column) -> Column:
    return (
        F.when(~dst_family.isin(*acc.HUMANLIKE), F.lit(0.0))
        .when(acc.is_hub(plan, dst), F.lit(plan.f("graph.hub_followback")))
        .when(src_family.isin(*acc.HUMANLIKE), F.lit(plan.f("graph.human_followback")))
        .when(src_family == F.lit("mimic"), F.lit(plan.f("graph.mimic_followback")))
        .when(src_family == F.lit("follow_spam"), F.lit(plan.f("follow_spam.followback")))
        .otherwise(F.lit(plan.f("graph.bot_followback")))
    )


def ordinary_follows(plan: Plan, profile_df: DataFrame) -> DataFrame:
    """Every account's own follows (community, global, spam) as (src, dst, t_s, src/dst family)."""
    sid = plan.seed
    aid, fam, i = F.col(t.ACCOUNT_ID), F.col(t.FAMILY), F.col(_I)
    humanlike_or_mimic = fam.isin("human", "cyborg", "mimic")
    df = profile_df.select(t.ACCOUNT_ID, t.FAMILY, acc.DORMANT, acc.ACTIVE_FROM_S, acc.CREATED_S)
    df = df.withColumn("_u_deg", uniform(sid, "deg", aid)).withColumn("_u_round", uniform(sid, "deg_round", aid))
    u_deg, u_round = F.col("_u_deg"), F.col("_u_round")
    spread = lognormal_unit_mean(normal(sid, "out_degree", aid), plan.f("graph.degree_sigma"))
    dormant = F.when(F.col(acc.DORMANT), F.lit(0.3)).otherwise(F.lit(1.0))
    expected = (
        F.when(humanlike_or_mimic, F.lit(plan.f("graph.follows_per_account")) * spread * dormant)
        .when(fam == F.lit("scheduled"), F.lit(2.0 * plan.f("scheduled.follows")) * u_deg)
        .when(fam == F.lit("botnet"), F.lit(2.0 * plan.f("botnet.external_follows")) * u_deg)
        .otherwise(F.lit(plan.f("follow_spam.out_follows")) * (F.lit(0.5) + u_deg))
    )
    df = df.withColumn("degree", stochastic_round(expected, u_round))
    df = df.select("*", explode_range(F.col("degree"), _I))
    df = df.withColumn("_u_target", uniform(sid, "target", aid, i))
    u_target = F.col("_u_target")
    community = humanlike_or_mimic & (uniform(sid, "in_community", aid, i) < F.lit(plan.f("graph.community_share")))
    target = (
        F.when(fam == F.lit("follow_spam"), F.floor(u_target * F.lit(plan.accounts)).cast("long"))
        .when(community, _community_target(plan, aid, u_target))
        .otherwise(_global_target(plan, u_target))
    )
    df = df.withColumn("_target", target)
    # People rarely follow obvious bots: most such picks go to a popular account instead.
    df = acc.with_identity(plan, df, "_target", "_t_", created=False)
    avoid = (
        humanlike_or_mimic
        & F.col("_t_" + t.FAMILY).isin("scheduled", "botnet", "follow_spam")
        & (uniform(sid, "avoid_bot", aid, i) < F.lit(plan.f("graph.bot_avoidance")))
    )
    df = df.withColumn("_target", F.when(avoid, _global_target(plan, uniform(sid, "retarget", aid, i))).otherwise(
        F.col("_target")))
    # Nobody follows themselves: step to the next id (a filter here would evaluate `target` twice).
    df = df.withColumn(
        t.DST, F.when(F.col("_target") == aid, F.pmod(aid + F.lit(1), F.lit(plan.accounts))).otherwise(F.col("_target"))
    )
    df = acc.with_identity(plan, df, t.DST, "dst_")
    share = F.when(fam == F.lit("follow_spam"), F.lit(plan.f("graph.spam_in_period_share"))).otherwise(
        F.lit(plan.f("graph.in_period_share"))
    )
    t_s = _created_between(plan, F.col(acc.CREATED_S), F.col("dst_" + acc.CREATED_S), share,
                           uniform(sid, "edge_period", aid, i), uniform(sid, "edge_time", aid, i),
                           F.col(acc.ACTIVE_FROM_S))
    return df.select(aid.alias(t.SRC), t.DST, t_s.alias(T_S), fam.alias("src_family"),
                     F.col("dst_" + t.FAMILY).alias("dst_family"),
                     acc.active_from_s(plan, F.col("dst_" + t.FAMILY), F.col("dst_" + acc.CREATED_S)).alias(
                         _DST_ACTIVE_FROM))


def botnet_follows(plan: Plan, profile_df: DataFrame) -> DataFrame:
    """Members of a botnet group follow each other densely, soon after the bulk sign-up."""
    sid = plan.seed
    gmax = int(plan.p("botnet.group_max"))
    aid, grp = F.col(t.ACCOUNT_ID), F.col(acc.BOTNET_GROUP)
    df = profile_df.filter(F.col(t.FAMILY) == F.lit("botnet")).select(
        t.ACCOUNT_ID, acc.BOTNET_GROUP, acc.ACTIVE_FROM_S, acc.CREATED_S
    )
    df = df.select("*", explode_range(acc.botnet_members(plan, grp), _I))
    df = df.withColumn(t.DST, grp * F.lit(gmax) + F.col(_I))
    df = df.filter(
        (F.col(t.DST) != aid)
        & (F.col(t.DST) < F.lit(plan.accounts))
        & (uniform(sid, "botnet_follow", aid, F.col(t.DST)) < F.lit(plan.f("botnet.follow_density")))
    )
    df = acc.with_identity(plan, df, t.DST, "dst_")
    lo = F.greatest(F.col(acc.CREATED_S), F.col("dst_" + acc.CREATED_S), F.col(acc.ACTIVE_FROM_S))
    t_s = lo + F.lit(60.0) + uniform(sid, "botnet_follow_t", aid, F.col(t.DST)) * F.lit(2.0 * DAY_S)
    return df.select(aid.alias(t.SRC), t.DST, t_s.alias(T_S))


def edges_table(plan: Plan, profile_df: DataFrame) -> DataFrame:
    """The ``edges`` input table: follows, follow-backs and botnet meshes, one row per (src, dst)."""
    sid = plan.seed
    follows = ordinary_follows(plan, profile_df)
    src, dst = F.col(t.SRC), F.col(t.DST)
    back = uniform(sid, "followback", src, dst) < _followback_prob(plan, F.col("src_family"), dst, F.col("dst_family"))
    forward_row = F.struct(src.alias(t.SRC), dst.alias(t.DST), F.col(T_S).alias(T_S))
    # Followed back once the followed account acts: the drift's new family is followed before it switches on.
    back_row = F.struct(
        dst.alias(t.SRC), src.alias(t.DST),
        (F.greatest(F.col(T_S), F.col(_DST_ACTIVE_FROM)) + F.lit(600.0) + exponential_days(sid, src, dst)).alias(T_S),
    )
    # A follow and its follow-back come out of one row: the follows are generated once.
    both = follows.select(
        F.explode(F.when(back, F.array(forward_row, back_row)).otherwise(F.array(forward_row))).alias("e")
    ).select("e.*")
    allf = both.unionByName(botnet_follows(plan, profile_df))
    allf = allf.filter((src != dst) & (F.col(T_S) < F.lit(float(plan.end_s))))
    first = allf.groupBy(t.SRC, t.DST).agg(F.min(T_S).alias(T_S))
    return first.select(t.SRC, t.DST, F.timestamp_seconds(F.floor(F.col(T_S)).cast("long")).alias(t.CREATED_AT))


def exponential_days(seed: int, src: Column, dst: Column) -> Column:
    """Delay of a follow-back: exponential, mean one day (seconds)."""
    return -F.log(F.lit(1.0) - uniform(seed, "followback_delay", src, dst)) * F.lit(float(DAY_S))
