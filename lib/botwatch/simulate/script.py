"""Scripted event-type order: the sophisticated bots' fingerprint that only the sequence shows.

A scripted bot copies humans' aggregate statistics but its automation replays a fixed cycle of
``simulate.script.length`` event types. The cycle's positions take the event types at evenly
spaced quantiles of the human mix (``humans.event_type_weights``), so every script has the same
type counts as humans up to rounding (``event_type_entropy`` and counts do not separate it); only
the ORDER differs: each of ``simulate.script.kits`` automation kits shuffles the positions with
its own permutation, and the bot walks its kit's cycle event after event, in time order. A share
``simulate.script.free_share`` of each kit's positions are free: the bot draws their type afresh
from the human mix at every pass, so its type counts carry a human's sampling noise too (an exact
cycle would give too-regular shares, a tabular tell).

Scripted mimics (``mimic.scripted_share``) and botnet groups (``botnet.scripted_share``, one kit
per group) carry a kit in the column :data:`SCRIPT_KIT` (null: not scripted) and a start phase in
:data:`SCRIPT_PHASE`; :func:`with_script_types` numbers each account's scripted events in time
order and sets their ``event_type``.
"""
from __future__ import annotations

import random
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.simulate.plan import Permutation, Plan
from botwatch.simulate.rng import choose, uniform

SCRIPT_KIT = "_script_kit"  # the account's automation kit, 0..kits-1; null for unscripted rows
SCRIPT_PHASE = "_script_phase"  # where in its kit's cycle the account's first event falls
_POS = "_script_pos"


def human_event_types(plan: Plan) -> list[tuple[str, float]]:
    """The human event-type mix as (type, weight) pairs (``humans.event_type_weights``)."""
    return [(e, float(w)) for e, w in plan.p("humans.event_type_weights").items()]


def script_mix(plan: Plan) -> list[str]:
    """The event type at each quantile ``(q + 0.5) / length`` of the human mix, q = 0..length-1."""
    weights = human_event_types(plan)
    total = sum(w for _, w in weights)
    length = int(plan.p("script.length"))
    out = []
    for q in range(length):
        u, cum = (q + 0.5) / length, 0.0
        pick = weights[-1][0]
        for event, w in weights:
            cum += w / total
            if u < cum:
                pick = event
                break
        out.append(pick)
    return out


def kit_permutations(plan: Plan) -> list[Permutation]:
    """One permutation of the cycle's positions per kit, drawn on the driver from the seed."""
    rng = random.Random(f"botwatch-script-{plan.seed}")
    length = int(plan.p("script.length"))
    return [Permutation.draw(length, rng) for _ in range(int(plan.p("script.kits")))]


def _lookup(values: list[Any], index: Column) -> Column:
    return F.element_at(F.array(*[F.lit(v) for v in values]), index.cast("int") + F.lit(1))


def script_type(plan: Plan, kit: Column, position: Column) -> Column:
    """The event type at ``position`` (0..length-1) of kit ``kit``'s cycle."""
    perms = kit_permutations(plan)
    mul = _lookup([p.mul for p in perms], kit)
    add = _lookup([p.add for p in perms], kit)
    quantile = F.pmod(position * mul + add, F.lit(int(plan.p("script.length"))))
    return _lookup(script_mix(plan), quantile)


def free_position(plan: Plan, kit: Column, position: Column) -> Column:
    """Whether ``position`` of kit ``kit``'s cycle is free (a fresh draw from the human mix each pass)."""
    return uniform(plan.seed, "script_free", kit, position) < F.lit(plan.f("script.free_share"))


def with_script_types(plan: Plan, df: DataFrame, ts_col: str) -> DataFrame:
    """Rows with a :data:`SCRIPT_KIT` get the type of their place in the kit's cycle, in time order.

    Only scripted rows are shuffled (a window per account, ordered by time); the others pass through.
    With no scripted family configured there are none: ``df`` is returned as is, not split in two
    (each half would evaluate the event generators again).
    """
    if plan.f("mimic.scripted_share") <= 0 and plan.f("botnet.scripted_share") <= 0:
        return df.drop(SCRIPT_KIT, SCRIPT_PHASE)
    kit = F.col(SCRIPT_KIT)
    plain = df.filter(kit.isNull())
    scripted = df.filter(kit.isNotNull())
    order = Window.partitionBy(t.ACCOUNT_ID).orderBy(ts_col)
    pos = F.pmod(F.col("_rank") - F.lit(1) + F.col(SCRIPT_PHASE), F.lit(int(plan.p("script.length"))))
    rank = F.row_number().over(order)
    scripted = scripted.withColumn("_rank", rank).withColumn(_POS, pos)
    fresh = choose(uniform(plan.seed, "script_free_type", F.col(t.ACCOUNT_ID), F.col("_rank")), human_event_types(plan))
    scripted = scripted.withColumn(
        t.EVENT_TYPE,
        F.when(free_position(plan, kit, F.col(_POS)), fresh).otherwise(script_type(plan, kit, F.col(_POS))),
    ).drop(_POS, "_rank")
    return plain.unionByName(scripted).drop(SCRIPT_KIT, SCRIPT_PHASE)


def kit_column(plan: Plan, purpose: str, key: Column) -> Column:
    """A kit drawn from ``key`` (an account or a botnet group), 0..kits-1."""
    return F.floor(uniform(plan.seed, purpose, key) * F.lit(int(plan.p("script.kits")))).cast("int")


def phase_column(plan: Plan, key: Column) -> Column:
    """A start phase in the cycle drawn from ``key`` (an account), 0..length-1."""
    return F.floor(uniform(plan.seed, "script_phase", key) * F.lit(int(plan.p("script.length")))).cast("long")
