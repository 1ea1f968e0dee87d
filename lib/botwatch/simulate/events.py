"""Events of the synthetic platform, generated per account-day by exploding index sequences.

Three generators, each a chain of ``explode(sequence(...))`` whose every draw is a hash of the
row's keys (account, day, session, index), so no row depends on any other:

* sessions (humans, cyborgs' human part, ``mimic``, ``follow_spam``): sessions per LOCAL day, a
  start time, a length and within-session gaps, each family with its own fingerprint; scripted
  mimics (``mimic.scripted_share``) time their sessions like humans and differ only in the ORDER
  of their event types (``botwatch.simulate.script``);
* slots (``scheduled``, cyborgs' automated phases): one event per fixed interval, around the clock;
* bursts (``botnet``): a group's members act together in the same minutes; scripted groups
  (``botnet.scripted_share``) walk their kit's cycle of event types instead of one type per burst.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.simulate import accounts as acc
from botwatch.simulate.plan import DAY_S, Plan
from botwatch.simulate.rng import (
    choose,
    choose_index,
    exponential,
    lognormal_unit_mean,
    normal,
    pareto_unit_mean,
    stochastic_round,
    token,
    uniform,
)
from botwatch.simulate.script import (
    SCRIPT_KIT,
    SCRIPT_PHASE,
    human_event_types,
    kit_column,
    phase_column,
    with_script_types,
)

TS_S = "ts_s"  # event time in epoch seconds (double), before it becomes event_ts
_D = "d"
_S = "session"
_K = "k"
MAX_SESSION_EVENTS = 500


def explode_range(n: Column, name: str) -> Column:
    """``explode(0..n-1)``: no rows when ``n <= 0``.

    Used instead of filtering ``n > 0`` first: Spark would push such a filter below the
    projections and evaluate the whole expression behind ``n`` twice.
    """
    seq = F.sequence(F.lit(0).cast("long"), n.cast("long") - F.lit(1))
    return F.explode(F.when(n > F.lit(0), seq).otherwise(F.array().cast("array<bigint>"))).alias(name)


def _after_wave(plan: Plan, day: Column) -> Column:
    return F.lit(False) if plan.wave_day is None else day > F.lit(plan.wave_day)


def _wave_factor(plan: Plan, day: Column, knob: str) -> Column:
    """The multiplier ``simulate.<knob>`` on days after the detection wave, 1 before it."""
    return F.when(_after_wave(plan, day), F.lit(plan.f(knob))).otherwise(F.lit(1.0))


def filter_computed(df: DataFrame, condition: Column) -> DataFrame:
    """``df.filter(condition)`` where the condition reads expensive computed columns.

    A plain filter is pushed below the projection that computes its columns and inlines their
    expressions (every hash evaluated again per row, once per reference). An explode of a 0- or
    1-element array is a barrier the optimizer does not cross, so the columns are computed once.
    """
    keep = F.when(condition, F.array(F.lit(True))).otherwise(F.array().cast("array<boolean>"))
    return df.select("*", F.explode(keep).alias("_keep")).drop("_keep")


def _day_end(plan: Plan, day: Column) -> Column:
    """End of UTC day ``day`` of the window (epoch seconds)."""
    return F.lit(float(plan.start_s)) + (day + F.lit(1)) * F.lit(DAY_S)


def session_events(plan: Plan, profile_df: DataFrame) -> DataFrame:
    """Humans, cyborgs' human part, ``mimic`` and ``follow_spam``: sessions on each local day."""
    sid = plan.seed
    p = plan.p
    aid, fam, d, s, k = F.col(t.ACCOUNT_ID), F.col(t.FAMILY), F.col(_D), F.col(_S), F.col(_K)
    # Scripted mimics take every timing and IP draw of the human branch; the rest are metronomes.
    scripted = (fam == F.lit("mimic")) & (uniform(sid, "mimic_scripted", aid) < F.lit(plan.f("mimic.scripted_share")))
    humanlike = fam.isin(*acc.HUMANLIKE) | scripted
    mimic = (fam == F.lit("mimic")) & ~scripted

    df = profile_df.filter(fam.isin("human", "cyborg", "mimic", "follow_spam")).select(
        t.ACCOUNT_ID, t.FAMILY, acc.UTC_OFFSET, acc.ACTIVE_FROM_S, acc.ACTIVITY, acc.N_IPS, acc.N_DEVICES,
        acc.DC_IP, t.SIGNUP_IP_HASH,
    )
    # Local days -1..days cover the whole UTC window for every time zone; the surplus is cut at the end.
    # Day -1 stays even where it ends by the window's start (UTC+0, +1): its late sessions run past midnight.
    df = df.select("*", F.explode(F.sequence(F.lit(-1).cast("long"), F.lit(plan.days).cast("long"))).alias(_D))
    day_start = F.lit(float(plan.start_s)) + d * F.lit(DAY_S) - F.col(acc.UTC_OFFSET) * F.lit(3600)
    df = df.withColumn("day_start", day_start).filter(
        (F.col("day_start") + F.lit(DAY_S) > F.col(acc.ACTIVE_FROM_S))
        & (F.col("day_start") < F.lit(plan.end_s))
    )
    df = df.withColumn("_weekend", F.pmod(F.lit(plan.start_date.weekday()) + d, F.lit(7)) >= F.lit(5))
    weekend = F.col("_weekend")

    # Sessions per day.
    wf = plan.f("humans.weekend_factor")
    weekday_mult = 7.0 / (5.0 + 2.0 * wf)  # the week's mean stays the configured rate
    eps = plan.f("humans.events_per_session")
    human_x = (
        F.col(acc.ACTIVITY)
        * F.when(weekend, F.lit(wf * weekday_mult)).otherwise(F.lit(weekday_mult))
        * lognormal_unit_mean(normal(sid, "day_noise", aid, d), plan.f("humans.day_sigma"))
        * _wave_factor(plan, d, "drift.human_activity_after_wave")
        / F.lit(eps)
    )
    smin, smax = int(p("mimic.sessions_min")), int(p("mimic.sessions_max"))
    mimic_n = F.lit(smin) + F.floor(uniform(sid, "mimic_sessions", aid) * F.lit(smax - smin + 1))
    spam_x = F.lit(plan.f("follow_spam.sessions_per_day")) * (F.lit(0.5) + uniform(sid, "spam_day", aid, d))
    df = df.withColumn("_u_n", uniform(sid, "n_sessions", aid, d))
    u_n = F.col("_u_n")
    n_sessions = (
        F.when(humanlike, stochastic_round(human_x, u_n))
        .when(mimic, mimic_n.cast("long"))
        .otherwise(stochastic_round(spam_x, u_n))
    )
    df = df.withColumn("n_sessions", n_sessions)
    df = df.select("*", explode_range(F.col("n_sessions"), _S))
    df = df.filter(~mimic | (uniform(sid, "mimic_skip", aid, d, s) >= F.lit(plan.f("mimic.skip_rate"))))

    # Session start, seconds after local midnight.
    weekday_w = [float(w) for w in p("humans.hour_weights_weekday")]
    weekend_w = [float(w) for w in p("humans.hour_weights_weekend")]
    df = df.withColumn("_u_hour", uniform(sid, "hour", aid, d, s))
    df = df.withColumn("_u_slot", uniform(sid, "mimic_slot", aid, s))
    u_hour = F.col("_u_hour")
    human_hour = F.when(weekend, choose_index(u_hour, weekend_w)).otherwise(choose_index(u_hour, weekday_w))
    human_start = human_hour * F.lit(3600.0) + uniform(sid, "hour_frac", aid, d, s) * F.lit(3600.0)
    jitter_mult = _wave_factor(plan, d, "drift.mimic_jitter_after_wave")
    # A mimic's session times are fixed per bot (drawn from the human curve), the same every day of the week.
    mimic_start = (
        choose_index(F.col("_u_slot"), weekday_w) * F.lit(3600.0)
        + uniform(sid, "mimic_slot_frac", aid, s) * F.lit(3600.0)
        + normal(sid, "mimic_start", aid, d, s) * F.lit(plan.f("mimic.start_jitter_min") * 60.0) * jitter_mult
    )
    spam_start = uniform(sid, "spam_start", aid, d, s) * F.lit(float(DAY_S))
    df = df.withColumn(
        "start", F.when(humanlike, human_start).when(mimic, mimic_start).otherwise(spam_start)
    )

    # Session length (events) and the gap scale.
    human_len = F.least(
        F.lit(MAX_SESSION_EVENTS),
        F.greatest(F.lit(1), F.round(F.lit(eps) * pareto_unit_mean(
            uniform(sid, "session_len", aid, d, s), plan.f("humans.session_tail_alpha")))),
    )
    emin, emax = int(p("mimic.session_events_min")), int(p("mimic.session_events_max"))
    mimic_len = F.lit(emin) + F.floor(uniform(sid, "mimic_len", aid) * F.lit(emax - emin + 1))
    spam_mean = F.lit(plan.f("follow_spam.follows_per_session"))
    spam_len = F.greatest(F.lit(1), F.round(spam_mean * (F.lit(0.5) + uniform(sid, "spam_len", aid, d, s))))
    df = df.withColumn(
        "n_events", F.when(humanlike, human_len).when(mimic, mimic_len).otherwise(spam_len).cast("long")
    )
    human_gap = F.lit(plan.f("humans.gap_median_s")) * F.exp(
        F.lit(plan.f("humans.gap_sigma")) * normal(sid, "gap", aid, d, s)
    )
    mimic_gap = F.lit(plan.f("mimic.gap_s")) * (F.lit(0.7) + F.lit(0.6) * uniform(sid, "mimic_gap", aid))
    df = df.withColumn(
        "gap",
        F.when(humanlike, human_gap).when(mimic, mimic_gap).otherwise(F.lit(plan.f("follow_spam.gap_s"))),
    )
    df = df.withColumn(
        "gap_jitter",
        F.when(mimic, F.lit(plan.f("mimic.gap_jitter")) * jitter_mult).otherwise(F.lit(0.3)),
    )

    # One IP and device per session.
    human_ip_index = F.when(uniform(sid, "ip_pick", aid, d, s) < F.lit(0.6), F.lit(0)).otherwise(
        F.floor(uniform(sid, "ip_other", aid, d, s) * F.col(acc.N_IPS))
    )
    proxy = acc.proxy_ip(plan, F.floor(uniform(sid, "proxy", aid, d, s) * F.lit(int(p("mimic.proxy_pool")))))
    via_proxy = uniform(sid, "scripted_proxy", aid, d, s) < F.lit(plan.f("mimic.scripted_proxy_share"))
    df = df.withColumn(
        t.IP_HASH,
        F.when(scripted & via_proxy, proxy)
        .when(humanlike, acc.human_ip(plan, aid, human_ip_index))
        .when(mimic, proxy)
        .otherwise(F.col(t.SIGNUP_IP_HASH)),
    )
    df = df.withColumn(
        t.DEVICE_ID,
        F.when(humanlike,
               acc.account_device(plan, aid, F.floor(uniform(sid, "dev_pick", aid, d, s) * F.col(acc.N_DEVICES))))
        .otherwise(acc.account_device(plan, aid, 0)),
    )

    df = df.select("*", explode_range(F.col("n_events"), _K))
    # Humans: events scattered uniformly over the session (exponential gaps whose scale varies by
    # session: heavy-tailed overall). Bots: a metronome with a little jitter per event.
    human_offset = F.when(k == F.lit(0), F.lit(0.0)).otherwise(
        F.col("n_events") * F.col("gap") * uniform(sid, "offset", aid, d, s, k)
    )
    # (No clamping at 0 for k >= 1: two events clamped to the same instant would be exact duplicates.)
    jitter = F.col("gap_jitter") * F.col("gap") * normal(sid, "offset_jitter", aid, d, s, k)
    bot_offset = F.when(k == F.lit(0), F.abs(jitter)).otherwise(k * F.col("gap") + jitter)
    ts = F.col("day_start") + F.col("start") + F.when(humanlike, human_offset).otherwise(bot_offset)
    df = df.withColumn("_u_type", uniform(sid, "event_type", aid, d, s, k))
    u_type = F.col("_u_type")
    spam_type = F.when(u_type < F.lit(plan.f("follow_spam.follow_share")), F.lit("follow")).otherwise(F.lit("like"))
    event_type = F.when(fam == F.lit("follow_spam"), spam_type).otherwise(choose(u_type, human_event_types(plan)))
    # Scripted mimics' types are set later, from their place in time order (with_script_types).
    kit = F.when(scripted, kit_column(plan, "mimic_kit", aid))
    return df.select(t.ACCOUNT_ID, ts.alias(TS_S), event_type.alias(t.EVENT_TYPE), t.IP_HASH, t.DEVICE_ID,
                     acc.ACTIVE_FROM_S, kit.alias(SCRIPT_KIT), phase_column(plan, aid).alias(SCRIPT_PHASE))


def slot_events(plan: Plan, profile_df: DataFrame) -> DataFrame:
    """``scheduled`` bots (fixed or jittered intervals all day) and cyborgs' automated phases."""
    sid = plan.seed
    p = plan.p
    aid, fam, d, k = F.col(t.ACCOUNT_ID), F.col(t.FAMILY), F.col(_D), F.col(_K)
    scheduled = fam == F.lit("scheduled")

    df = profile_df.filter(fam.isin("scheduled", "cyborg")).select(
        t.ACCOUNT_ID, t.FAMILY, acc.DC_IP, t.SIGNUP_IP_HASH, acc.ACTIVE_FROM_S
    )
    # Cyborgs from day -1: a phase that starts late the evening before spills into day 0, as on every other day.
    first_day = F.when(F.col(t.FAMILY) == F.lit("cyborg"), F.lit(-1)).otherwise(F.lit(0)).cast("long")
    df = df.select("*", F.explode(F.sequence(first_day, F.lit(plan.days - 1).cast("long"))).alias(_D))
    df = df.filter(_day_end(plan, d) > F.col(acc.ACTIVE_FROM_S))
    df = df.filter(scheduled | (uniform(sid, "auto_day", aid, d) < F.lit(plan.f("cyborg.auto_day_share"))))

    periods = [int(m) * 60 for m in p("scheduled.periods_min")]
    df = df.withColumn("_u_period", uniform(sid, "period", aid))
    period = F.when(scheduled, choose(F.col("_u_period"), [(x, 1.0) for x in periods])).otherwise(
        F.lit(int(p("cyborg.auto_period_min")) * 60)
    )
    df = df.withColumn("period", period.cast("long"))
    auto_s = int(p("cyborg.auto_hours")) * 3600
    df = df.withColumn(
        "n_slots",
        F.when(scheduled, F.lit(DAY_S) / F.col("period")).otherwise(F.lit(auto_s) / F.col("period")).cast("long"),
    )
    window_start = F.when(scheduled, uniform(sid, "phase", aid) * F.col("period")).otherwise(
        F.floor(uniform(sid, "auto_start", aid) * F.lit(24)) * F.lit(3600.0)
        + uniform(sid, "auto_phase", aid) * F.col("period")
    )
    df = df.withColumn("t0", F.lit(float(plan.start_s)) + d * F.lit(DAY_S) + window_start)
    fixed = uniform(sid, "fixed", aid) < F.lit(plan.f("scheduled.fixed_share"))
    jitter_sd = (
        F.when(~scheduled, F.lit(5.0))
        .when(~fixed, F.lit(plan.f("scheduled.jitter_s")))
        .when(_after_wave(plan, d), F.lit(plan.f("drift.scheduled_jitter_after_wave_s")))
        .otherwise(F.lit(0.0))
    )
    df = df.withColumn("jitter_sd", jitter_sd)
    df = df.select("*", explode_range(F.col("n_slots"), _K))
    df = df.filter(~scheduled | (uniform(sid, "miss", aid, d, k) >= F.lit(plan.f("scheduled.miss_rate"))))
    ts = F.col("t0") + k * F.col("period") + F.col("jitter_sd") * normal(sid, "slot_jitter", aid, d, k)

    df = df.withColumn("_u_dominant", uniform(sid, "dominant", aid)).withColumn(
        "_u_other", uniform(sid, "other_type", aid, d, k)
    )
    dominant = choose(F.col("_u_dominant"), [("post", 0.6), ("like", 0.25), ("comment", 0.15)])
    # Any type but the dominant one, so dominant_share is the dominant type's share.
    types = F.array(*[F.lit(e) for e in t.EVENT_TYPES])
    pick = F.floor(F.col("_u_other") * F.lit(len(t.EVENT_TYPES) - 1)).cast("int") + F.lit(1)
    other = F.element_at(types, pick + (pick >= F.array_position(types, dominant)).cast("int"))
    sched_type = F.when(uniform(sid, "is_dominant", aid, d, k) < F.lit(plan.f("scheduled.dominant_share")), dominant)
    event_type = F.when(scheduled, sched_type.otherwise(other)).otherwise(F.lit("post"))
    ip = F.when(scheduled, F.col(t.SIGNUP_IP_HASH)).otherwise(F.col(acc.DC_IP))
    device = F.when(scheduled, acc.account_device(plan, aid, 0)).otherwise(
        F.concat(F.lit("api-"), token(sid, "api_device", aid))
    )
    return df.select(t.ACCOUNT_ID, ts.alias(TS_S), event_type.alias(t.EVENT_TYPE), ip.alias(t.IP_HASH),
                     device.alias(t.DEVICE_ID), acc.ACTIVE_FROM_S, F.lit(None).cast("int").alias(SCRIPT_KIT),
                     F.lit(0).cast("long").alias(SCRIPT_PHASE))


def burst_events(plan: Plan, profile_df: DataFrame) -> DataFrame:
    """``botnet`` members: group bursts at the same minutes, from the group's shared IPs and devices.

    Bursts start at any UTC hour, or, for a ``botnet.human_hours_share`` of groups, at local hours
    drawn from the humans' session-start curve.
    """
    sid = plan.seed
    p = plan.p
    aid, grp, d, b, j = F.col(t.ACCOUNT_ID), F.col(acc.BOTNET_GROUP), F.col(_D), F.col("burst"), F.col(_K)
    df = profile_df.filter(F.col(t.FAMILY) == F.lit("botnet")).select(
        t.ACCOUNT_ID, acc.BOTNET_GROUP, acc.ACTIVE_FROM_S, acc.UTC_OFFSET
    )
    human_share = plan.f("botnet.human_hours_share")
    # Human-timed groups burst on local days, which reach one day past each end of the UTC window
    # (bursts outside it are cut in events_table); uniform ones on UTC days 0..days-1 alone.
    first, last = (-1, plan.days) if human_share > 0 else (0, plan.days - 1)
    df = df.select("*", F.explode(F.sequence(F.lit(first).cast("long"), F.lit(last).cast("long"))).alias(_D))
    df = df.filter(_day_end(plan, d) > F.col(acc.ACTIVE_FROM_S))
    n_bursts = stochastic_round(
        F.lit(plan.f("botnet.bursts_per_day")) * (F.lit(0.5) + uniform(sid, "bursts", grp, d)),
        uniform(sid, "bursts_round", grp, d),
    )
    df = df.withColumn("n_bursts", n_bursts)
    df = df.select("*", explode_range(F.col("n_bursts"), "burst"))
    df = df.filter(uniform(sid, "participate", aid, d, b) < F.lit(plan.f("botnet.participation")))
    burst_t = F.lit(float(plan.start_s)) + d * F.lit(DAY_S) + uniform(sid, "burst_t", grp, d, b) * F.lit(float(DAY_S))
    if human_share > 0:
        # A human-timed group starts its bursts on the humans' session-start curve of its local hour
        # (weekday or weekend), so its members' circadian features look human.
        weekend = F.pmod(F.lit(plan.start_date.weekday()) + d, F.lit(7)) >= F.lit(5)
        u_hour = uniform(sid, "burst_hour", grp, d, b)
        hour = F.when(weekend, choose_index(u_hour, [float(w) for w in p("humans.hour_weights_weekend")])).otherwise(
            choose_index(u_hour, [float(w) for w in p("humans.hour_weights_weekday")]))
        local_t = (F.lit(float(plan.start_s)) + d * F.lit(DAY_S) - F.col(acc.UTC_OFFSET) * F.lit(3600)
                   + (hour + uniform(sid, "burst_hour_frac", grp, d, b)) * F.lit(3600.0))
        human_group = uniform(sid, "botnet_human_hours", grp) < F.lit(human_share)
        burst_t = F.when(human_group, local_t).otherwise(burst_t)
    df = df.withColumn(
        "t0", burst_t + uniform(sid, "burst_delay", aid, d, b) * F.lit(plan.f("botnet.burst_spread_s"))
    )
    epb = plan.f("botnet.events_per_burst")
    n_ev = F.lit(1) + stochastic_round(
        uniform(sid, "burst_n", aid, d, b) * F.lit(max(0.0, 2 * epb - 2)), uniform(sid, "burst_n_round", aid, d, b)
    )
    df = df.withColumn("n_events", n_ev)
    df = df.withColumn("gap", F.lit(plan.f("botnet.burst_gap_s")) * (F.lit(0.5) + uniform(sid, "burst_gap", aid, d, b)))
    # The whole group amplifies the same way in a burst.
    df = df.withColumn("_u_type", uniform(sid, "burst_type", grp, d, b))
    df = df.withColumn(
        t.EVENT_TYPE, choose(F.col("_u_type"), [("like", 0.5), ("post", 0.2), ("follow", 0.2), ("comment", 0.1)])
    )
    df = df.withColumn(
        t.IP_HASH,
        acc.botnet_ip(plan, grp, F.floor(uniform(sid, "burst_ip", aid, d, b) * F.lit(int(p("botnet.ips_per_group"))))),
    )
    df = df.withColumn(
        t.DEVICE_ID,
        acc.botnet_device(
            plan, grp, F.floor(uniform(sid, "burst_dev", aid, d) * F.lit(int(p("botnet.devices_per_group"))))
        ),
    )
    df = df.select("*", explode_range(F.col("n_events"), _K))
    ts = F.col("t0") + j * F.col("gap") + exponential(sid, "burst_jitter", aid, d, b, j)
    # A scripted group's members all run the group's kit (each from its own phase).
    scripted = uniform(sid, "botnet_scripted", grp) < F.lit(plan.f("botnet.scripted_share"))
    kit = F.when(scripted, kit_column(plan, "botnet_kit", grp))
    return df.select(t.ACCOUNT_ID, ts.alias(TS_S), t.EVENT_TYPE, t.IP_HASH, t.DEVICE_ID, acc.ACTIVE_FROM_S,
                     kit.alias(SCRIPT_KIT), phase_column(plan, aid).alias(SCRIPT_PHASE))


def events_table(plan: Plan, profile_df: DataFrame) -> DataFrame:
    """The ``events`` input table: every generator, cut to the simulated window and each account's active time."""
    raw = with_script_types(
        plan,
        session_events(plan, profile_df)
        .unionByName(slot_events(plan, profile_df))
        .unionByName(burst_events(plan, profile_df)),
        TS_S,
    )
    ts = F.col(TS_S)
    kept = filter_computed(
        raw, (ts >= F.greatest(F.lit(float(plan.start_s)), F.col(acc.ACTIVE_FROM_S))) & (ts < F.lit(float(plan.end_s)))
    )
    day_index = F.floor((ts - F.lit(float(plan.start_s))) / F.lit(float(DAY_S))).cast("int")
    return kept.select(
        t.ACCOUNT_ID,
        # Microseconds: two events of an account at the same instant (an exact duplicate) stay vanishingly rare.
        F.timestamp_micros(F.floor(ts * F.lit(1e6)).cast("long")).alias(t.EVENT_TS),
        t.EVENT_TYPE,
        t.IP_HASH,
        t.DEVICE_ID,
        F.date_add(F.lit(plan.start_date), day_index).alias(t.EVENT_DATE),
    )
