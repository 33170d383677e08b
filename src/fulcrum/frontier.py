"""The Pareto frontier of quality against cost, its knee, and the sweet-spot policies.

Pure functions over plain values: no torch, no optuna. A :class:`Point` is one candidate (a trial
or the baseline) with its measured values; an :class:`Objective` says which of those values to
maximise or minimise; a :class:`Budget` says which points are acceptable; :func:`pick` chooses one.

Keys break every tie, compared in natural order (trial ``"9"`` before ``"10"``), so that every
result is the same whatever the order of the input.

>>> objectives = [Objective("accuracy", "maximize"), Objective("latency_ms", "minimize")]
>>> points = [
...     Point("0", {"accuracy": 0.99, "latency_ms": 4.0}),
...     Point("1", {"accuracy": 0.985, "latency_ms": 1.5}),
...     Point("2", {"accuracy": 0.95, "latency_ms": 1.0}),
...     Point("3", {"accuracy": 0.98, "latency_ms": 3.0}),  # dominated by "1"
... ]
>>> [p.key for p in pareto_front(points, objectives)]
['0', '1', '2']
>>> pick(points, objectives, Budget("accuracy", baseline=0.99, max_drop=1.0)).point.key
'1'
"""

from __future__ import annotations

import math
import numbers
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fulcrum.errors import ConfigError, suggest

DIRECTIONS = ("maximize", "minimize")
POLICIES = ("tolerance", "knee", "weighted")
# Differences this small (relative to the bound) are float rounding, not a violation:
# 0.93 - 0.93 x 1% is 0.9207000000000001, and a point at 0.9207 must meet a 1% drop.
_ROUNDING = 1e-9


@dataclass(frozen=True)
class Objective:
    """A value of :attr:`Point.values` to maximise or minimise."""

    name: str
    direction: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"an objective's name must be a non-empty string; got {self.name!r}.")
        if self.direction not in DIRECTIONS:
            raise ConfigError(
                f"objective {self.name!r} has direction {self.direction!r}; choose 'maximize' or "
                f"'minimize'.{suggest(str(self.direction), DIRECTIONS)}"
            )


@dataclass(frozen=True)
class Point:
    """One candidate: a unique key, its measured values (any names), and data carried along."""

    key: str
    values: Mapping[str, float]
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str):
            raise ConfigError(f"a point's key must be a string; got {self.key!r}.")


# -- dominance and the front --------------------------------------------------------------------


def dominates(a: Point, b: Point, objectives: Sequence[Objective]) -> bool:
    """Whether ``a`` is at least as good as ``b`` on every objective and better on one."""
    _check_objectives(objectives)
    return _dominates(_oriented(a, objectives), _oriented(b, objectives))


def pareto_front(points: Sequence[Point], objectives: Sequence[Objective]) -> list[Point]:
    """The points that no other point dominates.

    Of exact duplicates (equal on every objective) only the one with the smallest key is kept.
    The front is sorted best-first on the first objective, then on the next ones, then by key;
    an empty input gives an empty front.
    """
    _check_objectives(objectives)
    _check_keys(points)
    ranked = sorted(
        ((_oriented(p, objectives), p) for p in points),
        key=lambda item: (item[0], _key_order(item[1].key)),
    )
    front: list[tuple[tuple[float, ...], Point]] = []
    for values, point in ranked:
        # Sorted lexicographically, a dominating point always comes first, and a point dominated
        # by a dropped point is also dominated by whatever dropped it: comparing with the front
        # kept so far is enough.
        if front and front[-1][0] == values:
            continue  # a duplicate with a larger key
        if not any(_dominates(kept, values) for kept, _ in front):
            front.append((values, point))
    return [point for _, point in front]


def knee(front: Sequence[Point], objectives: Sequence[Objective]) -> Point:
    """The point of ``front`` closest to the utopia point.

    Each objective is rescaled to [0, 1] over the front (its best value 1, its worst 0; an
    objective equal on every point counts as 1), and the knee is the point at the smallest
    Euclidean distance from (1, ..., 1). On a two-objective front this agrees closely with the
    point farthest from the chord between the extremes, and it extends to any number of
    objectives. Ties go to the smallest key.
    """
    _check_objectives(objectives)
    _check_keys(front)
    if not front:
        raise ConfigError("knee() needs at least one point; got an empty front.")
    oriented = [_oriented(p, objectives) for p in front]  # smaller is better
    lows = [min(column) for column in zip(*oriented, strict=True)]
    highs = [max(column) for column in zip(*oriented, strict=True)]

    def distance(values: tuple[float, ...]) -> float:
        gaps = [
            (v - low) / (high - low) if high > low else 0.0
            for v, low, high in zip(values, lows, highs, strict=True)
        ]
        return math.sqrt(sum(g * g for g in gaps))

    _, best = min(
        zip(oriented, front, strict=True),
        key=lambda item: (distance(item[0]), _key_order(item[1].key)),
    )
    return best


# -- budgets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """Which points are acceptable: a largest drop of a quality metric, and limits on costs.

    ``metric`` names the quality measure in :attr:`Point.values` (higher is better) and
    ``baseline`` is the baseline's value of it. ``max_drop`` is in *points*, 100 x the metric's
    units: with accuracy in [0, 1], a baseline of 0.991 and ``max_drop=1.0``, a point needs
    accuracy >= 0.981. With ``relative=True`` it is a percentage of the baseline instead:
    ``max_drop=1.0`` needs accuracy >= 0.991 x 0.99. ``None`` sets no floor. ``limits`` are upper
    bounds on cost measures (``{"latency_ms": 2.0, "size_bytes": 1e6}``); a point that lacks a
    limited measure (or the metric, when there is a floor) is never allowed.
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}  # (as a run record)

    metric: str
    baseline: float
    max_drop: float | None = None
    relative: bool = False
    limits: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ConfigError(f"Budget.metric must be a non-empty name; got {self.metric!r}.")
        if not _is_finite(self.baseline):
            raise ConfigError(
                f"Budget.baseline must be a finite number (the baseline's {self.metric}); "
                f"got {self.baseline!r}."
            )
        if self.max_drop is not None and not (_is_finite(self.max_drop) and self.max_drop >= 0):
            raise ConfigError(
                f"Budget.max_drop must be a number >= 0 (points of {self.metric}) or None; "
                f"got {self.max_drop!r}."
            )
        for name, limit in self.limits.items():
            if not (_is_finite(limit) and limit > 0):
                raise ConfigError(f"budget {name}={limit!r} must be a positive number.")
        if self.metric in self.limits:
            raise ConfigError(
                f"{self.metric!r} is both the quality metric and a cost limit; bound the metric "
                "with max_drop and remove it from limits."
            )

    @property
    def floor(self) -> float | None:
        """The lowest acceptable value of the metric, or None when there is no drop limit."""
        if self.max_drop is None:
            return None
        scale = abs(self.baseline) if self.relative else 1.0
        return self.baseline - scale * self.max_drop / 100

    def violations(self, point: Point) -> dict[str, float]:
        """How far ``point`` is past each bound, in the measure's units; 0 where it is within.

        The drop comes first, under the metric's name (how far below :attr:`floor`), then each
        limit (how far above it). A missing or NaN measure is infinitely far.
        """
        out: dict[str, float] = {}
        floor = self.floor
        if floor is not None:
            out[self.metric] = _excess(floor, _measure(point, self.metric), floor)
        for name, limit in self.limits.items():
            out[name] = _excess(_measure(point, name), limit, limit)
        return out

    def constraints(self, point: Point) -> dict[str, float]:
        """Optuna's constraint values, <= 0 when met: ``drop`` (how far the metric is below
        :attr:`floor`; negative: how far above), then each limit's excess as a fraction of the
        limit. Signed, so that a sampler can tell near misses from far ones; within rounding of
        a bound is on it (0)."""
        out: dict[str, float] = {}
        floor = self.floor
        if floor is not None:
            out["drop"] = _signed(floor, _measure(point, self.metric), floor)
        for name, limit in self.limits.items():
            out[name] = _signed(_measure(point, name), limit, limit) / limit
        return {k: round(v, 6) for k, v in out.items()}

    def allows(self, point: Point) -> bool:
        """Whether ``point`` is within the drop and every limit."""
        return not any(self.violations(point).values())

    def total_violation(self, point: Point) -> float:
        """The violations as fractions, summed: each limit's of the limit, the drop's of the
        baseline (its magnitude, or 1 when it is 0). 0 when allowed, inf when a measure is
        missing; ranks the candidates closest to the budget."""
        scales = {**self.limits, self.metric: abs(self.baseline) or 1.0}
        return sum((amount / scales[name] for name, amount in self.violations(point).items()), 0.0)

    def describe(self) -> str:
        """The budget in words: "within 1 pt of the baseline's accuracy (0.991) and under
        latency_ms <= 2"."""
        parts = []
        if self.max_drop is not None:
            unit = "%" if self.relative else " pt"
            parts.append(
                f"within {self.max_drop:g}{unit} of the baseline's {self.metric} "
                f"({self.baseline:g})"
            )
        if self.limits:
            parts.append("under " + ", ".join(f"{k} <= {v:g}" for k, v in self.limits.items()))
        return " and ".join(parts) or "with no budget set"


# -- picking the sweet spot ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pick:
    """The chosen point (None when no point meets the budget), and why.

    ``feasible`` holds every point within the budget, in key order; ``closest`` is empty unless
    nothing is feasible, and then holds up to three points with the smallest
    :meth:`Budget.total_violation`, closest first (ties by key).
    """

    point: Point | None
    policy: str
    reason: str
    feasible: tuple[Point, ...]
    closest: tuple[Point, ...]


def pick(
    points: Sequence[Point],
    objectives: Sequence[Objective],
    budget: Budget,
    policy: str = "tolerance",
    *,
    cost: str | None = None,
    target: float | None = None,
    exponent: float = -0.07,
) -> Pick:
    """Choose the sweet spot among ``points`` under ``budget``.

    Every point needs a finite value for each objective, the budget's metric and the cost.
    Policies, all over the points within the budget:

    - ``tolerance``: the lowest ``cost`` (default: the first minimised objective); ties go to
      the other minimised objectives in order, then the higher metric, then the smallest key.
    - ``knee``: the :func:`knee` of the feasible points' Pareto front.
    - ``weighted``: MnasNet's soft constraint (Tan et al. 2019), reward = metric x
      (cost / target) ** w with w = 0 when cost <= target and w = ``exponent`` above it; the
      highest reward wins, ties to the lower cost, then the key. ``target`` defaults to the
      budget's limit on ``cost``, else the median cost of ``points``. The budget stays hard, so
      with a target equal to the limit this is the best metric within budget; a lower target
      trades metric for cost above it.
    """
    if policy not in POLICIES:
        raise ConfigError(
            f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}."
            f"{suggest(str(policy), POLICIES)}"
        )
    _check_objectives(objectives)
    _check_keys(points)
    cost = _cost_measure(objectives, cost)
    for p in points:
        _oriented(p, objectives)  # every objective present and finite
        _finite(p, budget.metric)
        _finite(p, cost)
    if not points:
        return Pick(None, policy, "there are no candidates to choose from.", (), ())

    ordered = sorted(points, key=lambda p: _key_order(p.key))
    feasible = tuple(p for p in ordered if budget.allows(p))
    if not feasible:
        closest = tuple(
            sorted(ordered, key=lambda p: (budget.total_violation(p), _key_order(p.key)))[:3]
        )
        return Pick(
            None,
            policy,
            f"none of the {_count(len(points))} is {budget.describe()}; the closest, "
            f"{closest[0].key!r}, misses by {_misses(budget, closest[0])}.",
            feasible,
            closest,
        )

    scope = f"{_count(len(feasible))} {budget.describe()}"
    if policy == "tolerance":
        chosen, reason = _tolerance(feasible, objectives, budget.metric, cost)
    elif policy == "knee":
        front = pareto_front(feasible, objectives)
        chosen = knee(front, objectives)
        reason = (
            f"the knee (closest to the best of every objective) of the {len(front)}-point "
            "Pareto front of"
        )
    else:
        if target is None:
            target = budget.limits.get(cost, statistics.median(p.values[cost] for p in points))
        chosen, reason = _weighted(feasible, budget.metric, cost, target, exponent)
    return Pick(chosen, policy, f"{reason} {scope}.", feasible, ())


def _tolerance(
    feasible: Sequence[Point], objectives: Sequence[Objective], metric: str, cost: str
) -> tuple[Point, str]:
    """The lowest cost; ties to the other minimised objectives, the higher metric, the key."""
    minimised = [o.name for o in objectives if o.direction == "minimize" and o.name != cost]
    chosen = min(
        feasible,
        key=lambda p: (
            p.values[cost],
            *(p.values[name] for name in minimised),
            -p.values[metric],
            _key_order(p.key),
        ),
    )
    return chosen, f"lowest {cost} ({chosen.values[cost]:g}) among"


def _weighted(
    feasible: Sequence[Point], metric: str, cost: str, target: Any, exponent: float
) -> tuple[Point, str]:
    """MnasNet's reward: the metric, discounted where the cost exceeds the target."""
    if not (_is_finite(target) and target > 0):
        raise ConfigError(
            f"the weighted policy needs a positive target for {cost}; got {target!r}: pass "
            "target= or a positive limit on it."
        )
    if not (_is_finite(exponent) and exponent <= 0):
        raise ConfigError(
            f"the weighted policy's exponent must be a number <= 0 (MnasNet uses -0.07); "
            f"got {exponent!r}."
        )
    if any(p.values[metric] < 0 for p in feasible):
        raise ConfigError(
            f"the weighted policy needs a non-negative {metric}; use 'tolerance' or 'knee'."
        )
    goal = float(target)

    def reward(p: Point) -> float:
        ratio = p.values[cost] / goal
        return p.values[metric] * (ratio**exponent if ratio > 1 else 1.0)

    chosen = min(feasible, key=lambda p: (-reward(p), p.values[cost], _key_order(p.key)))
    reason = (
        f"highest MnasNet reward ({reward(chosen):.4g}: {metric}, times "
        f"({cost}/{goal:g})^{exponent:g} where {cost} exceeds {goal:g}) among"
    )
    return chosen, reason


# -- helpers ------------------------------------------------------------------------------------


def _check_objectives(objectives: Sequence[Objective]) -> None:
    if not objectives:
        raise ConfigError("at least one objective is needed; got none.")
    for o in objectives:
        if not isinstance(o, Objective):
            raise ConfigError(f"objectives must be Objective(name, direction); got {o!r}.")
    names = [o.name for o in objectives]
    if len(set(names)) != len(names):
        raise ConfigError(f"objective names must be unique; got {names}.")


def _check_keys(points: Sequence[Point]) -> None:
    seen: set[str] = set()
    for p in points:
        if p.key in seen:
            raise ConfigError(f"point keys must be unique; {p.key!r} appears twice.")
        seen.add(p.key)


def _finite(point: Point, name: str) -> float:
    """The point's value of ``name``, which must be there and be a finite number."""
    if name not in point.values:
        raise ConfigError(
            f"point {point.key!r} has no value {name!r}; it has "
            f"{', '.join(point.values) or 'none'}.{suggest(name, point.values)}"
        )
    value = point.values[name]
    if not _is_finite(value):
        raise ConfigError(
            f"point {point.key!r} has {name}={value!r}; it must be a finite number: drop failed "
            "candidates first."
        )
    return float(value)


def _oriented(point: Point, objectives: Sequence[Objective]) -> tuple[float, ...]:
    """The objective values with maximised ones negated, so that smaller is always better."""
    return tuple(
        -_finite(point, o.name) if o.direction == "maximize" else _finite(point, o.name)
        for o in objectives
    )


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def _cost_measure(objectives: Sequence[Objective], cost: str | None) -> str:
    if cost is None:
        minimised = [o.name for o in objectives if o.direction == "minimize"]
        if not minimised:
            raise ConfigError("no objective is minimised, so there is no cost: pass cost=NAME.")
        return minimised[0]
    if any(o.name == cost and o.direction == "maximize" for o in objectives):
        raise ConfigError(
            f"cost={cost!r} is a maximised objective; name a measure where lower is better."
        )
    return cost


def _measure(point: Point, name: str) -> float:
    """The point's value of ``name``, NaN when it has none."""
    value = point.values.get(name)
    if value is None or not _is_number(value):
        return math.nan
    return float(value)


def _excess(value: float, bound: float, scale: float) -> float:
    """How far ``value`` is above ``bound``; 0 within rounding; inf when either is NaN."""
    if math.isnan(value) or math.isnan(bound):
        return math.inf
    over = value - bound
    return over if over > _ROUNDING * max(1.0, abs(scale)) else 0.0


def _signed(value: float, bound: float, scale: float) -> float:
    """``value - bound``, 0 within rounding of the bound; inf when either is NaN."""
    if math.isnan(value) or math.isnan(bound):
        return math.inf
    over = value - bound
    return 0.0 if abs(over) <= _ROUNDING * max(1.0, abs(scale)) else over


def _misses(budget: Budget, point: Point) -> str:
    parts = []
    for name, amount in budget.violations(point).items():
        if amount == math.inf:
            parts.append(f"having no {name}")
        elif amount and name == budget.metric:
            parts.append(f"{amount:.4g} of {name} below {budget.floor:.6g}")
        elif amount:
            parts.append(f"{amount:.4g} of {name} over {budget.limits[name]:g}")
    return " and ".join(parts)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and _is_number(value) and math.isfinite(value)


def _count(n: int) -> str:
    return f"{n} candidate" if n == 1 else f"{n} candidates"


def _key_order(key: str) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """Natural order: digit runs compare as numbers ("9" < "10"); the key itself breaks ties."""
    parts = re.split(r"([0-9]+)", key)  # the digit runs land at the odd indices
    return tuple((0, int(p), "") if i % 2 else (1, 0, p) for i, p in enumerate(parts) if p), key
