"""The simulation plan: the ``simulate`` conf section checked, plus the few numbers derived from it.

Everything here is computed on the driver from the arguments alone (no data): thresholds of the
family draw, the botnet block probability, the permutations behind communities and popularity,
and the drift days. The generators turn the plan into Spark Columns.
"""
from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass
from typing import Any

from botwatch import tables as t

DAY_S = 86400

# Every knob the generators read (families' entries of the per-family mappings are added below).
REQUIRED_KNOBS = (
    "accounts_per_partition", "attributes.enabled", "attributes.linked_apps_shift", "attributes.missing_rate",
    "attributes.phone_rate.bot", "attributes.phone_rate.human", "bot_verified_rate", "botnet.burst_gap_s",
    "botnet.burst_spread_s",
    "botnet.bursts_per_day", "botnet.devices_per_group", "botnet.events_per_burst", "botnet.external_follows",
    "botnet.follow_density", "botnet.group_max", "botnet.group_min", "botnet.ips_per_group", "botnet.participation",
    "botnet.scripted_share", "botnet.human_hours_share", "mimic.scripted_share", "mimic.scripted_proxy_share",
    "script.free_share", "script.kits", "script.length",
    "botnet.signup_window_min", "country_weights", "cyborg.auto_day_share", "cyborg.auto_hours",
    "cyborg.auto_period_min", "cyborg.human_activity_factor", "datacenter_ips", "drift.detection_wave_fraction",
    "drift.human_activity_after_wave", "drift.mimic_jitter_after_wave", "drift.new_family",
    "drift.new_family_fraction",
    "drift.new_signup_bot_multiplier", "drift.scheduled_jitter_after_wave_s", "drift.wave_label_share",
    "follow_spam.follow_share", "follow_spam.followback", "follow_spam.follows_per_session", "follow_spam.gap_s",
    "follow_spam.out_follows", "follow_spam.sessions_per_day", "graph.bot_avoidance", "graph.bot_followback",
    "graph.community_share", "graph.community_size", "graph.community_zipf", "graph.degree_sigma",
    "graph.follows_per_account", "graph.global_zipf", "graph.hub_followback", "graph.human_followback",
    "graph.in_period_share", "graph.mimic_followback", "graph.spam_in_period_share", "history_years", "hub_share",
    "humans.activity_sigma", "humans.day_sigma", "humans.dormant_events_per_day", "humans.dormant_share",
    "humans.event_type_weights", "humans.events_per_day", "humans.events_per_session", "humans.gap_median_s",
    "humans.gap_sigma", "humans.hour_weights_weekday", "humans.hour_weights_weekend", "humans.max_devices",
    "humans.max_ips", "humans.session_tail_alpha", "humans.weekend_factor", "labels.appeal_delay_days",
    "labels.appeal_rate", "labels.investigator_bot_share", "labels.investigator_error",
    "labels.investigator_per_week_per_100k", "labels.propagated_min_links", "labels.propagated_rate",
    "labels.user_report_bot_rate", "labels.user_report_extra_mean", "labels.user_report_human_rate",
    "mimic.gap_jitter", "mimic.gap_s", "mimic.proxy_pool", "mimic.session_events_max", "mimic.session_events_min",
    "mimic.sessions_max", "mimic.sessions_min", "mimic.skip_rate", "mimic.start_jitter_min", "new_signup_share",
    "prevalence", "scheduled.dominant_share", "scheduled.fixed_share", "scheduled.follows", "scheduled.jitter_s",
    "scheduled.miss_rate", "scheduled.periods_min", "signup_growth", "verified_rate",
)
MAX_ACCOUNTS = 3_000_000_000  # n^2 < 2^63: the account-id permutation's products stay exact
PER_FAMILY_KNOBS = {
    "family_shares": t.BOT_FAMILIES,
    "labels.investigator_weights": t.BOT_FAMILIES,
    "profile_completeness": t.FAMILIES,
}


class SimulationParamsError(ValueError):
    """The ``simulate`` parameters are missing a knob or hold an impossible value."""


@dataclass(frozen=True)
class Permutation:
    """``x -> (x * mul + add) mod n``, a bijection of ``[0, n)``, with its inverse multiplier."""

    n: int
    mul: int
    add: int
    inv: int

    @staticmethod
    def draw(n: int, rng: random.Random) -> Permutation:
        if n < 3:
            return Permutation(n, 1, 0, 1)
        while True:
            mul = rng.randrange(2, n)
            if math.gcd(mul, n) == 1:
                break
        return Permutation(n, mul, rng.randrange(n), pow(mul, -1, n))


@dataclass(frozen=True)
class Plan:
    accounts: int
    days: int
    seed: int
    start_date: dt.date
    params: dict[str, Any]
    n_old: int
    n_new: int
    start_s: int
    end_s: int
    community: Permutation
    popularity: Permutation
    wave_day: int | None
    new_family: str | None
    switch_day: int | None

    def p(self, dotted: str) -> Any:
        """The knob ``simulate.<dotted>``; a missing one raises :class:`SimulationParamsError`."""
        node: Any = self.params
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise SimulationParamsError(
                    f"simulate parameter '{dotted}' is missing; pass the whole `simulate` section of "
                    "conf/base.yaml (conf.section('simulate')) with your changes"
                )
            node = node[part]
        return node

    def f(self, dotted: str) -> float:
        return float(self.p(dotted))

    @property
    def switch_s(self) -> int | None:
        return None if self.switch_day is None else self.start_s + self.switch_day * DAY_S

    @property
    def wave_s(self) -> int | None:
        return None if self.wave_day is None else self.start_s + self.wave_day * DAY_S

    def family_shares(self) -> dict[str, float]:
        shares = {f: float(self.p(f"family_shares.{f}")) for f in t.BOT_FAMILIES}
        total = sum(shares.values())
        return {f: s / total for f, s in shares.items()}

    def prevalence(self, new: bool) -> float:
        base = self.f("prevalence")
        return min(0.9, base * self.f("drift.new_signup_bot_multiplier")) if new else base

    def botnet_mean_members(self) -> float:
        return (int(self.p("botnet.group_min")) + int(self.p("botnet.group_max"))) / 2.0

    def botnet_block_prob(self, new: bool, capped: bool = True) -> float:
        """Probability that a block of ``group_max`` consecutive ids is a botnet group (the plan's check
        refuses parameters that need more than 1)."""
        target = self.prevalence(new) * self.family_shares()["botnet"]
        wanted = target * int(self.p("botnet.group_max")) / self.botnet_mean_members()
        return min(1.0, wanted) if capped else wanted

    def other_family_probs(self, new: bool) -> list[tuple[str, float]]:
        """Per-account probabilities of the non-botnet bot families, among accounts outside botnets."""
        shares = self.family_shares()
        prev = self.prevalence(new)
        outside = max(1e-9, 1.0 - prev * shares["botnet"])
        return [(f, prev * shares[f] / outside) for f in t.BOT_FAMILIES if f != "botnet"]

    def partitions(self, default_parallelism: int) -> int:
        per = max(1, int(self.p("accounts_per_partition")))
        return max(1, default_parallelism, math.ceil(self.accounts / per))


def _check_prob(plan: Plan, key: str) -> None:
    value = plan.f(key)
    if not 0.0 <= value <= 1.0:
        raise SimulationParamsError(f"simulate parameter '{key}' must be within [0, 1], got {value}")


def _check_positive(plan: Plan, key: str) -> None:
    if not plan.f(key) > 0:
        raise SimulationParamsError(f"simulate parameter '{key}' must be positive, got {plan.p(key)}")


def _weights_ok(weights) -> bool:
    """Weights of a draw: none negative, a positive sum (a negative one would shift every later cut-off)."""
    values = [float(w) for w in weights]
    return all(w >= 0 for w in values) and sum(values) > 0


def _fraction_day(plan: Plan, key: str, days: int) -> int | None:
    value = plan.p(key)
    if value is None:
        return None
    value = float(value)
    if not 0.0 < value < 1.0:
        raise SimulationParamsError(f"simulate parameter '{key}' must be within (0, 1) or null, got {value}")
    return min(days - 1, max(1, int(math.floor(days * value)))) if days > 1 else None


def make_plan(accounts: int, days: int, seed: int, start_date: dt.date, params: dict[str, Any]) -> Plan:
    """Check the arguments and ``params`` (the ``simulate`` conf section) and derive the plan."""
    if int(accounts) < 10:
        raise SimulationParamsError(f"--accounts must be at least 10, got {accounts}")
    if int(accounts) > MAX_ACCOUNTS:
        # The id permutation multiplies two ids in a long: past this it overflows and stops being one.
        raise SimulationParamsError(f"--accounts must be at most {MAX_ACCOUNTS:,}, got {accounts}")
    if int(days) < 1:
        raise SimulationParamsError(f"--days must be at least 1, got {days}")
    if not isinstance(start_date, dt.date) or isinstance(start_date, dt.datetime):
        # A datetime's day would depend on the process's time zone once Spark turns it into a date.
        raise SimulationParamsError(f"start_date must be a datetime.date (a day, UTC), got {start_date!r}")
    if not isinstance(params, dict):
        raise SimulationParamsError("params must be the `simulate` conf section as a dict")
    _require_knobs(params)
    accounts, days, seed = int(accounts), int(days), int(seed)
    rng = random.Random(f"botwatch-simulate-{seed}-{accounts}")
    start_s = int(dt.datetime(start_date.year, start_date.month, start_date.day, tzinfo=dt.UTC).timestamp())
    probe = Plan(accounts, days, seed, start_date, params, 0, 0, start_s, start_s, Permutation(1, 1, 0, 1),
                 Permutation(1, 1, 0, 1), None, None, None)
    try:
        new_share = probe.f("new_signup_share")
        if not 0.0 <= new_share < 1.0:
            raise SimulationParamsError(f"simulate parameter 'new_signup_share' must be within [0, 1), got {new_share}")
        n_new = int(round(accounts * new_share))
        new_family = params.get("drift", {}).get("new_family") if isinstance(params.get("drift"), dict) else None
        if isinstance(new_family, str) and new_family.strip().lower() in ("", "null", "none"):
            new_family = None  # `--set simulate.drift.new_family=null` arrives as a string
        if new_family is not None and new_family not in t.BOT_FAMILIES:
            raise SimulationParamsError(
                f"simulate parameter 'drift.new_family' must be one of {list(t.BOT_FAMILIES)} or null, "
                f"got {new_family!r}")
        plan = Plan(
            accounts=accounts,
            days=days,
            seed=seed,
            start_date=start_date,
            params=params,
            n_old=accounts - n_new,
            n_new=n_new,
            start_s=start_s,
            end_s=start_s + days * DAY_S,
            community=Permutation.draw(accounts, rng),
            popularity=Permutation.draw(accounts, rng),
            wave_day=_fraction_day(probe, "drift.detection_wave_fraction", days),
            new_family=new_family,
            switch_day=_fraction_day(probe, "drift.new_family_fraction", days) if new_family else None,
        )
        _validate(plan)
    except (TypeError, ValueError, ZeroDivisionError, AttributeError) as err:
        if isinstance(err, SimulationParamsError):
            raise
        # A knob holding a value of another kind (`--set 'simulate.scheduled.periods_min=[15, x]'`, a list of
        # country weights, a text fraction from a notebook's params).
        raise SimulationParamsError(f"simulate parameters hold a value of the wrong kind: {err}; compare with "
                                    "conf/base.yaml's `simulate` section") from err
    return plan


def _require_knobs(params: dict[str, Any]) -> None:
    wanted = list(REQUIRED_KNOBS) + [f"{m}.{f}" for m, fams in PER_FAMILY_KNOBS.items() for f in fams]
    missing = []
    for dotted in wanted:
        node: Any = params
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(dotted)
                break
            node = node[part]
    if missing:
        raise SimulationParamsError(
            f"simulate parameters missing: {', '.join(missing)}; pass the whole `simulate` section of "
            "conf/base.yaml (conf.section('simulate')) with your changes"
        )


def _validate(plan: Plan) -> None:
    prevalence = plan.f("prevalence")
    if not 0.0 <= prevalence <= 0.5:
        raise SimulationParamsError(f"simulate parameter 'prevalence' must be within [0, 0.5], got {prevalence}")
    shares = {f: plan.f(f"family_shares.{f}") for f in t.BOT_FAMILIES}
    if not _weights_ok(shares.values()):
        raise SimulationParamsError(
            f"simulate parameter 'family_shares' must be non-negative with a positive sum: {shares}"
        )
    countries = plan.p("country_weights")
    unknown = sorted(set(countries) - set(t.COUNTRY_UTC_OFFSET))
    if unknown or not _weights_ok(countries.values()):
        raise SimulationParamsError(
            f"simulate parameter 'country_weights' needs non-negative weights (a positive sum) for countries among "
            f"{sorted(t.COUNTRY_UTC_OFFSET)}; unknown: {unknown}"
        )
    for key in ("humans.hour_weights_weekday", "humans.hour_weights_weekend"):
        weights = plan.p(key)
        if len(weights) != 24 or not _weights_ok(weights):
            raise SimulationParamsError(
                f"simulate parameter '{key}' must be 24 non-negative weights (local hours 0-23)"
            )
    types = plan.p("humans.event_type_weights")
    if set(types) - set(t.EVENT_TYPES) or not _weights_ok(types.values()):
        raise SimulationParamsError(
            f"simulate parameter 'humans.event_type_weights' must weigh event types among {list(t.EVENT_TYPES)} "
            "(non-negative, a positive sum)"
        )
    # A negative weight would lower every later cut-off of the cumulative draw (or a probability) silently.
    investigated = {f: plan.f(f"labels.investigator_weights.{f}") for f in t.BOT_FAMILIES}
    if any(w < 0 for w in investigated.values()):
        raise SimulationParamsError(
            f"simulate parameter 'labels.investigator_weights' must be non-negative: {investigated}")
    periods = [int(p) for p in plan.p("scheduled.periods_min")]
    if not periods or any(p <= 0 or 1440 % p for p in periods):
        raise SimulationParamsError(
            f"simulate parameter 'scheduled.periods_min' must list minutes that divide a day (1440), got {periods}"
        )
    auto_period = int(plan.p("cyborg.auto_period_min"))
    if auto_period <= 0 or 1440 % auto_period:
        raise SimulationParamsError(
            f"simulate parameter 'cyborg.auto_period_min' must be minutes that divide a day (1440), got {auto_period}")
    if not 1 <= int(plan.p("cyborg.auto_hours")) <= 24:
        raise SimulationParamsError(
            f"simulate parameter 'cyborg.auto_hours' must be 1 to 24 hours, got {plan.p('cyborg.auto_hours')}")
    if int(plan.p("cyborg.auto_hours")) * 60 % auto_period:
        # The phase holds auto_hours * 60 / period posts, cut to a whole number: 6 h at 480 min would be none.
        raise SimulationParamsError(
            f"simulate parameter 'cyborg.auto_period_min' ({auto_period}) must divide the automated phase, "
            f"'cyborg.auto_hours' ({plan.p('cyborg.auto_hours')}) x 60 minutes")
    for new in (False, True):
        if plan.botnet_block_prob(new, capped=False) > 1.0:
            raise SimulationParamsError(
                "simulate parameters ask for more botnet members than there are accounts"
                f"{' among new sign-ups (prevalence x drift.new_signup_bot_multiplier)' if new else ''}: lower "
                "prevalence or family_shares.botnet, or raise botnet.group_min toward botnet.group_max")
    gmin, gmax = int(plan.p("botnet.group_min")), int(plan.p("botnet.group_max"))
    if not 2 <= gmin <= gmax:
        raise SimulationParamsError(
            f"simulate parameters need 2 <= botnet.group_min <= botnet.group_max, got {gmin}, {gmax}"
        )
    for key in ("humans.dormant_share", "scheduled.fixed_share", "scheduled.dominant_share", "scheduled.miss_rate",
                "mimic.skip_rate", "mimic.scripted_share", "mimic.scripted_proxy_share", "botnet.scripted_share",
                "botnet.human_hours_share",
                "script.free_share",
                "botnet.participation", "botnet.follow_density", "cyborg.auto_day_share",
                "follow_spam.followback", "graph.community_share", "graph.human_followback",
                "graph.mimic_followback", "graph.hub_followback", "graph.bot_followback", "graph.in_period_share",
                "graph.spam_in_period_share", "labels.investigator_bot_share", "labels.investigator_error",
                "labels.user_report_bot_rate", "labels.user_report_human_rate", "labels.appeal_rate",
                "labels.propagated_rate", "drift.wave_label_share", "verified_rate", "bot_verified_rate",
                "hub_share", "attributes.missing_rate", "attributes.phone_rate.human", "attributes.phone_rate.bot"):
        _check_prob(plan, key)
    for key in ("humans.events_per_session", "humans.gap_median_s", "mimic.gap_s", "botnet.burst_gap_s",
                "follow_spam.gap_s", "graph.community_size", "history_years", "humans.session_tail_alpha",
                "drift.human_activity_after_wave", "humans.weekend_factor", "signup_growth",
                "follow_spam.follows_per_session"):
        _check_positive(plan, key)
    # A negative one gave silently other data: no bot among new sign-ups, no botnet burst.
    for key in ("labels.user_report_extra_mean", "labels.appeal_delay_days", "drift.new_signup_bot_multiplier",
                "botnet.bursts_per_day"):
        if not plan.f(key) >= 0:
            raise SimulationParamsError(f"simulate parameter '{key}' must be 0 or more, got {plan.p(key)}")
    if plan.f("humans.session_tail_alpha") <= 1.0:
        raise SimulationParamsError("simulate parameter 'humans.session_tail_alpha' must be above 1 (finite mean)")
    if int(plan.p("mimic.sessions_min")) > int(plan.p("mimic.sessions_max")) or int(plan.p("mimic.sessions_min")) < 1:
        raise SimulationParamsError("simulate parameters need 1 <= mimic.sessions_min <= mimic.sessions_max")
    if int(plan.p("script.kits")) < 1 or int(plan.p("script.length")) < 2:
        raise SimulationParamsError("simulate parameters need script.kits >= 1 and script.length >= 2")
    if not 1 <= int(plan.p("mimic.session_events_min")) <= int(plan.p("mimic.session_events_max")):
        raise SimulationParamsError("simulate parameters need 1 <= mimic.session_events_min <= "
                                    "mimic.session_events_max")
