"""Whole-number shares of a total in proportion to weights: how many rows each stratum, domain or
mixture component gets, so that the shares add up to the total exactly.

Largest remainder (Hamilton's method): each key first gets the whole part of total * w / sum(w),
then the keys with the largest fractional parts get one more (ties: the larger weight, then the key
in order, no key before a real one). Quotas are computed in exact fractions, so a tie is a tie. With
caps, a key never gets more than its cap; what it cannot take is shared again over the others by the
same rule, and the shares add up to min(total, the caps of the keys with weight).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from fractions import Fraction


def _key_order(key: Hashable) -> tuple[bool, str]:
    return (key is None, str(key))


def apportion(
    total: int, weights: Mapping[Hashable, float], caps: Mapping[Hashable, int] | None = None
) -> dict[Hashable, int]:
    """Each key's share of `total` (see the module's text); keys without weight or cap get 0."""
    exact = {k: Fraction(w) for k, w in weights.items()}
    got = {k: 0 for k in weights}
    limit = {k: (caps.get(k, 0) if caps is not None else total) for k in weights}
    open_ = {k for k, w in exact.items() if w > 0 and limit.get(k, 0) > 0}
    left = min(total, sum(limit[k] for k in open_))
    while left > 0 and open_:
        whole = sum(exact[k] for k in open_)
        quota = {k: left * exact[k] / whole for k in open_}
        take = {k: math.floor(quota[k]) for k in open_}
        ranked = sorted(open_, key=lambda k: (-(quota[k] - take[k]), -exact[k], _key_order(k)))
        for k in ranked[: left - sum(take.values())]:
            take[k] += 1
        full = {k for k in open_ if got[k] + take[k] >= limit[k]}
        if not full:
            for k in open_:
                got[k] += take[k]
            break
        for k in full:
            left -= limit[k] - got[k]
            got[k] = limit[k]
        open_ -= full
    return got
