"""Counter-based random numbers as Spark Columns.

Every draw is a hash of ``(seed, purpose, keys...)`` (``xxhash64``), never ``rand()``: a value
depends only on what it is about (an account, a day, a session, an event index), so the tables
come out identical whatever the partitioning, the number of executors or the shuffle settings.

Usage::

    u = uniform(seed, "session_start", F.col("account_id"), F.col("day"), F.col("session"))
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pyspark.sql import Column
from pyspark.sql import functions as F

_TWO_POW_53 = float(2**53)


def _key(value: Any) -> Column:
    col = value if isinstance(value, Column) else F.lit(value)
    # Hash every key as a bigint: an int and a long of the same value must draw the same number.
    return col.cast("long")


def hash64(seed: int, purpose: str, *keys: Any) -> Column:
    """A 64-bit hash of the seed, a purpose string and the keys (bigint Column)."""
    return F.xxhash64(F.lit(int(seed)).cast("long"), F.lit(purpose), *[_key(k) for k in keys])


def uniform(seed: int, purpose: str, *keys: Any) -> Column:
    """Uniform double in [0, 1) from the top 53 bits of the hash."""
    return F.shiftrightunsigned(hash64(seed, purpose, *keys), 11).cast("double") / F.lit(_TWO_POW_53)


def normal(seed: int, purpose: str, *keys: Any) -> Column:
    """Standard normal draw (Box-Muller on two independent uniforms)."""
    u1 = F.lit(1.0) - uniform(seed, purpose + "#r", *keys)  # in (0, 1]: log is finite
    u2 = uniform(seed, purpose + "#a", *keys)
    return F.sqrt(F.lit(-2.0) * F.log(u1)) * F.cos(F.lit(2.0 * math.pi) * u2)


def exponential(seed: int, purpose: str, *keys: Any) -> Column:
    """Exponential draw with mean 1."""
    return -F.log(F.lit(1.0) - uniform(seed, purpose, *keys))


def lognormal_unit_mean(z: Column, sigma: float) -> Column:
    """``exp(sigma*z - sigma^2/2)``: a lognormal factor with mean 1 from a standard normal ``z``."""
    return F.exp(F.lit(float(sigma)) * z - F.lit(float(sigma) ** 2 / 2.0))


def pareto_unit_mean(u: Column, alpha: float) -> Column:
    """Pareto factor with mean 1 (``alpha > 1``) from a uniform ``u``: heavy right tail."""
    xm = (alpha - 1.0) / alpha
    return F.lit(xm) * F.pow(F.lit(1.0) - u, F.lit(-1.0 / alpha))


def stochastic_round(x: Column, u: Column) -> Column:
    """``floor(x + u)`` as bigint: an integer whose mean is exactly ``x`` (for ``x >= 0``)."""
    return F.floor(x + u).cast("long")


def choose(u: Column, options: Sequence[tuple[Any, float]]) -> Column:
    """Pick ``options[i][0]`` with probability proportional to ``options[i][1]`` (inverse CDF on ``u``)."""
    total = float(sum(w for _, w in options))
    if total <= 0:
        raise ValueError("choose: weights must have a positive sum")
    expr = None
    cum = 0.0
    for value, weight in options[:-1]:
        cum += weight / total
        expr = F.when(u < F.lit(cum), F.lit(value)) if expr is None else expr.when(u < F.lit(cum), F.lit(value))
    last = F.lit(options[-1][0])
    return last if expr is None else expr.otherwise(last)


def choose_index(u: Column, weights: Sequence[float]) -> Column:
    """Index ``i`` drawn with probability proportional to ``weights[i]`` (bigint)."""
    return choose(u, [(i, w) for i, w in enumerate(weights)]).cast("long")


def zipf_rank(u: Column, size: Column | int, exponent: float) -> Column:
    """A rank in ``[0, size)`` drawn from a continuous power law ``p(r) ~ (r+1)^-exponent`` (bigint).

    Rank 0 is the most likely: with exponent 1 it gets a share ``ln 2 / ln(size+1)`` of all draws.
    """
    n1 = (size if isinstance(size, Column) else F.lit(int(size))).cast("double") + F.lit(1.0)
    if abs(exponent - 1.0) < 1e-9:
        x = F.exp(u * F.log(n1))
    else:
        a = 1.0 - exponent
        x = F.pow((F.pow(n1, F.lit(a)) - F.lit(1.0)) * u + F.lit(1.0), F.lit(1.0 / a))
    return F.least(F.floor(x).cast("long") - F.lit(1), n1.cast("long") - F.lit(2))


def token(seed: int, purpose: str, *keys: Any) -> Column:
    """A 16-hex-digit identifier (IP hashes, device ids) from the hash of the keys."""
    return F.lower(F.lpad(F.hex(hash64(seed, purpose, *keys)), 16, "0"))
