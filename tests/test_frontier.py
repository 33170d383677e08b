"""The frontier: hand-made fronts, properties over random points, budgets, policies, errors."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fulcrum.errors import ConfigError
from fulcrum.frontier import (
    POLICIES,
    Budget,
    Objective,
    Point,
    dominates,
    knee,
    pareto_front,
    pick,
)

ACC_LAT = [Objective("accuracy", "maximize"), Objective("latency_ms", "minimize")]
ACC_LAT_SIZE = [*ACC_LAT, Objective("size_mb", "minimize")]


def pt(key, accuracy, latency_ms, size_mb=1.0, **extra):
    return Point(key, {"accuracy": accuracy, "latency_ms": latency_ms, "size_mb": size_mb, **extra})


def keys(points):
    return [p.key for p in points]


# -- hand-made fronts ---------------------------------------------------------------------------


def test_two_objective_front_excludes_dominated_points_and_sorts_best_first():
    points = [
        pt("a", 0.90, 1.0),
        pt("b", 0.95, 2.0),
        pt("c", 0.99, 5.0),
        pt("d", 0.94, 2.5),  # dominated by b
        pt("e", 0.89, 1.0),  # dominated by a (equal latency, lower accuracy)
        pt("f", 0.99, 6.0),  # dominated by c (equal accuracy, slower)
    ]
    assert keys(pareto_front(points, ACC_LAT)) == ["c", "b", "a"]
    assert dominates(points[1], points[3], ACC_LAT)
    assert not dominates(points[0], points[1], ACC_LAT)
    assert not dominates(points[0], points[0], ACC_LAT)  # never dominates itself


def test_three_objective_front_keeps_points_that_win_on_the_third_objective():
    points = [
        pt("big", 0.99, 2.0, 10.0),
        pt("small", 0.97, 2.0, 1.0),  # worse accuracy, smaller: on the front only in 3-D
        pt("slow", 0.97, 3.0, 1.0),  # dominated by small
        pt("tiny", 0.90, 5.0, 0.5),
        pt("meh", 0.96, 2.5, 5.0),  # dominated by small
    ]
    assert keys(pareto_front(points, ACC_LAT)) == ["big"]
    assert keys(pareto_front(points, ACC_LAT_SIZE)) == ["big", "small", "tiny"]


def test_duplicates_keep_only_the_smallest_key_in_natural_order():
    points = [pt("10", 0.9, 1.0), pt("9", 0.9, 1.0), pt("11", 0.9, 1.0), pt("2", 0.8, 0.5)]
    assert keys(pareto_front(points, ACC_LAT)) == ["9", "2"]
    # extra values that are not objectives do not make points different
    points = [pt("b", 0.9, 1.0, flops=3.0), pt("a", 0.9, 1.0, flops=1.0)]
    assert keys(pareto_front(points, ACC_LAT)) == ["a"]


def test_empty_input_gives_an_empty_front():
    assert pareto_front([], ACC_LAT) == []


def test_knee_of_an_l_shaped_front_is_the_corner():
    front = [
        pt("fast", 0.50, 1.0),
        pt("corner", 0.95, 2.0),
        pt("a", 0.955, 5.0),
        pt("accurate", 0.96, 10.0),
    ]
    assert knee(front, ACC_LAT).key == "corner"
    assert knee(pareto_front(list(reversed(front)), ACC_LAT), ACC_LAT).key == "corner"


def test_knee_of_a_three_objective_front_and_of_one_point():
    front = [
        pt("acc", 0.99, 9.0, 9.0),
        pt("mid", 0.97, 2.0, 2.0),
        pt("lat", 0.60, 1.0, 8.0),
        pt("size", 0.60, 8.0, 1.0),
    ]
    assert knee(front, ACC_LAT_SIZE).key == "mid"
    assert knee([front[0]], ACC_LAT_SIZE).key == "acc"


def test_knee_ties_go_to_the_smallest_key():
    # symmetric front: the two ends are equally far from utopia, the middle is nearer
    front = [pt("b", 1.0, 2.0), pt("a", 0.0, 0.0)]
    assert knee(front, ACC_LAT).key == "a"


def test_knee_of_an_empty_front_is_an_error():
    with pytest.raises(ConfigError, match="empty"):
        knee([], ACC_LAT)


# -- properties over random points --------------------------------------------------------------

# Small grids, so that ties and exact duplicates are common.
accuracies = st.integers(80, 100).map(lambda i: i / 100)
latencies = st.integers(1, 12).map(float)
sizes = st.integers(1, 6).map(lambda i: i / 2)


@st.composite
def point_sets(draw, min_size=0, max_size=25):
    rows = draw(
        st.lists(st.tuples(accuracies, latencies, sizes), min_size=min_size, max_size=max_size)
    )
    # keys in a scrambled order, so that "smallest key" and "first in the input" differ
    numbers = draw(st.permutations(range(len(rows))))
    return [pt(str(n), a, lat, s) for n, (a, lat, s) in zip(numbers, rows, strict=True)]


objective_sets = st.sampled_from([ACC_LAT, ACC_LAT_SIZE, ACC_LAT_SIZE[::-1]])


@st.composite
def budgets(draw):
    limits = {}
    if draw(st.booleans()):
        limits["latency_ms"] = float(draw(st.integers(1, 12)))
    if draw(st.booleans()):
        limits["size_mb"] = draw(sizes)
    return Budget(
        "accuracy",
        baseline=draw(accuracies),
        max_drop=draw(st.sampled_from([None, 0.0, 0.5, 1.0, 2.0, 5.0])),
        relative=draw(st.booleans()),
        limits=limits,
    )


def values_on(point, objectives):
    return tuple(point.values[o.name] for o in objectives)


PROPERTY = settings(max_examples=200, deadline=None)


@PROPERTY
@given(point_sets(), objective_sets)
def test_no_front_point_is_dominated(points, objectives):
    front = pareto_front(points, objectives)
    assert all(not dominates(p, f, objectives) for f in front for p in points)


@PROPERTY
@given(point_sets(), objective_sets)
def test_every_point_off_the_front_is_dominated_or_a_duplicate(points, objectives):
    front = pareto_front(points, objectives)
    on_front = {p.key for p in front}
    for p in points:
        if p.key in on_front:
            continue
        assert any(
            dominates(f, p, objectives) or values_on(f, objectives) == values_on(p, objectives)
            for f in front
        )
    # of duplicates, the kept one has the smallest key
    for f in front:
        twins = [p for p in points if values_on(p, objectives) == values_on(f, objectives)]
        assert int(f.key) == min(int(p.key) for p in twins)


@PROPERTY
@given(point_sets(), objective_sets, st.data())
def test_front_is_invariant_under_shuffling(points, objectives, data):
    shuffled = data.draw(st.permutations(points))
    assert keys(pareto_front(shuffled, objectives)) == keys(pareto_front(points, objectives))


@PROPERTY
@given(point_sets(min_size=1), objective_sets)
def test_knee_is_a_front_point(points, objectives):
    front = pareto_front(points, objectives)
    assert knee(front, objectives).key in keys(front)


@PROPERTY
@given(point_sets(), objective_sets, budgets())
def test_tolerance_pick_is_feasible_and_cheapest(points, objectives, budget):
    chosen = pick(points, objectives, budget)
    assert keys(chosen.feasible) == sorted((p.key for p in points if budget.allows(p)), key=int)
    if chosen.point is None:
        return
    p = chosen.point
    assert budget.allows(p)
    if budget.max_drop is not None:
        scale = budget.baseline if budget.relative else 1.0
        assert p.values["accuracy"] >= budget.baseline - scale * budget.max_drop / 100 - 1e-9
    for name, limit in budget.limits.items():
        assert p.values[name] <= limit
    cost = next(o.name for o in objectives if o.direction == "minimize")
    assert not any(q.values[cost] < p.values[cost] for q in chosen.feasible)


@PROPERTY
@given(point_sets(), objective_sets, budgets(), st.sampled_from(POLICIES), st.data())
def test_pick_is_deterministic_and_feasible_for_every_policy(
    points, objectives, budget, policy, data
):
    shuffled = data.draw(st.permutations(points))
    first = pick(points, objectives, budget, policy)
    second = pick(shuffled, objectives, budget, policy)
    assert first == second
    if first.point is not None:
        assert first.point in first.feasible
        assert first.closest == ()


@PROPERTY
@given(point_sets(min_size=1), objective_sets, budgets())
def test_when_nothing_is_feasible_the_closest_are_listed_in_order(points, objectives, budget):
    chosen = pick(points, objectives, budget)
    if chosen.point is not None:
        return
    assert chosen.feasible == ()
    assert 1 <= len(chosen.closest) <= 3
    shortfalls = [budget.total_violation(p) for p in chosen.closest]
    assert shortfalls == sorted(shortfalls)
    assert all(s > 0 for s in shortfalls)
    others = [p for p in points if p not in chosen.closest]
    assert all(budget.total_violation(p) >= shortfalls[-1] for p in others)


def test_nothing_feasible_reports_the_closest():
    points = [pt("0", 0.95, 1.0), pt("1", 0.97, 3.0), pt("2", 0.90, 0.5)]
    budget = Budget("accuracy", 0.99, max_drop=1.0, limits={"latency_ms": 2.0})
    chosen = pick(points, ACC_LAT, budget)
    assert chosen.point is None
    # 0: 0.03 / 0.99 short; 1: 0.01 / 0.99 short + 1 / 2 over; 2: 0.08 / 0.99 short
    assert keys(chosen.closest) == ["0", "2", "1"]
    assert "none of the 3 candidates" in chosen.reason and "'0'" in chosen.reason


def test_pick_over_no_points_is_none():
    chosen = pick([], ACC_LAT, Budget("accuracy", 0.9, max_drop=1.0))
    assert chosen.point is None and chosen.closest == () and chosen.feasible == ()


# -- budgets ------------------------------------------------------------------------------------


def test_max_drop_is_in_points_of_the_metric():
    budget = Budget("accuracy", baseline=0.991, max_drop=1.0)
    assert budget.floor == pytest.approx(0.981)
    assert budget.allows(Point("ok", {"accuracy": 0.981}))  # exactly on the floor, despite rounding
    assert not budget.allows(Point("low", {"accuracy": 0.9809}))
    assert budget.violations(Point("low", {"accuracy": 0.9809})) == {
        "accuracy": pytest.approx(0.0001)
    }


def test_relative_max_drop_is_a_percentage_of_the_baseline():
    budget = Budget("accuracy", baseline=0.8, max_drop=1.0, relative=True)
    assert budget.floor == pytest.approx(0.792)
    assert budget.allows(Point("ok", {"accuracy": 0.792}))
    assert not budget.allows(Point("low", {"accuracy": 0.7915}))
    # the same drop in absolute points would allow 0.79
    assert Budget("accuracy", baseline=0.8, max_drop=1.0).allows(Point("p", {"accuracy": 0.7915}))


@pytest.mark.parametrize(
    ("budget", "on_bound", "past_bound"),
    [
        # 0.93 - 0.93 x 1% is 0.9207000000000001: 0.9207 is below it by float rounding only
        (
            Budget("accuracy", baseline=0.93, max_drop=1.0, relative=True),
            {"accuracy": 0.9207, "latency_ms": 1.0},
            {"accuracy": 0.9206, "latency_ms": 1.0},
        ),
        # 0.5006 - 0.01 is 0.49060000000000004
        (
            Budget("accuracy", baseline=0.5006, max_drop=1.0),
            {"accuracy": 0.4906, "latency_ms": 1.0},
            {"accuracy": 0.4905, "latency_ms": 1.0},
        ),
        # 0.1 + 0.2 is 0.30000000000000004
        (
            Budget("accuracy", baseline=0.9, limits={"latency_ms": 0.3}),
            {"accuracy": 0.9, "latency_ms": 0.1 + 0.2},
            {"accuracy": 0.9, "latency_ms": 0.3001},
        ),
    ],
    ids=["relative floor", "absolute floor", "cost limit"],
)
def test_a_point_on_a_bound_is_within_the_budget_despite_float_rounding(
    budget, on_bound, past_bound
):
    on, past = Point("on", on_bound), Point("past", past_bound)
    chosen = pick([on, past], ACC_LAT, budget)
    assert chosen.point is on and chosen.feasible == (on,)


def test_no_max_drop_means_no_floor():
    budget = Budget("accuracy", baseline=0.9)
    assert budget.floor is None
    assert budget.allows(Point("any", {"accuracy": 0.0}))
    assert budget.allows(Point("no metric", {}))  # nothing is bounded
    assert budget.violations(Point("p", {})) == {}


def test_limits_are_upper_bounds_and_a_missing_measure_is_infeasible():
    budget = Budget("accuracy", 0.9, max_drop=2.0, limits={"latency_ms": 2.0, "size_mb": 1.0})
    fine = Point("fine", {"accuracy": 0.9, "latency_ms": 2.0, "size_mb": 0.5})
    slow = Point("slow", {"accuracy": 0.85, "latency_ms": 3.0, "size_mb": 0.5})
    unsized = Point("unsized", {"accuracy": 0.9, "latency_ms": 1.0})
    nan = Point("nan", {"accuracy": math.nan, "latency_ms": 1.0, "size_mb": 0.5})
    assert budget.violations(fine) == {"accuracy": 0.0, "latency_ms": 0.0, "size_mb": 0.0}
    assert budget.allows(fine) and budget.total_violation(fine) == 0.0
    over = budget.violations(slow)
    assert over == {
        "accuracy": pytest.approx(0.03),
        "latency_ms": pytest.approx(1.0),
        "size_mb": 0.0,
    }
    assert budget.total_violation(slow) == pytest.approx(0.03 / 0.9 + 1.0 / 2.0)
    assert not budget.allows(unsized)
    assert budget.violations(unsized)["size_mb"] == math.inf
    assert budget.total_violation(unsized) == math.inf
    assert not budget.allows(nan) and budget.violations(nan)["accuracy"] == math.inf


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_drop": -1.0}, "max_drop"),
        ({"max_drop": math.inf}, "max_drop"),
        ({"limits": {"latency_ms": 0.0}}, "latency_ms=0.0 must be a positive number"),
        ({"limits": {"accuracy": 1.0}}, "both the quality metric and a cost limit"),
        ({"baseline": math.nan}, "baseline"),
    ],
)
def test_bad_budgets_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Budget(**{"metric": "accuracy", "baseline": 0.9, **kwargs})


# -- the policies -------------------------------------------------------------------------------

THREE = [pt("0", 0.99, 4.0, 3.0), pt("1", 0.985, 2.0, 2.0), pt("2", 0.95, 1.0, 1.0)]


def test_tolerance_picks_the_cheapest_within_the_drop():
    budget = Budget("accuracy", baseline=0.99, max_drop=1.0)
    chosen = pick(THREE, ACC_LAT, budget)
    assert chosen.point is not None and chosen.point.key == "1"
    assert keys(chosen.feasible) == ["0", "1"]
    assert chosen.reason.startswith("lowest latency_ms (2) among 2 candidates within 1 pt")
    # a looser drop lets the fastest in; an explicit cost changes what "cheapest" means
    assert pick(THREE, ACC_LAT, Budget("accuracy", 0.99, max_drop=5.0)).point.key == "2"
    assert pick(THREE, ACC_LAT, budget, cost="size_mb").point.key == "1"


def test_tolerance_ties_go_to_other_costs_then_metric_then_key():
    budget = Budget("accuracy", baseline=0.99, max_drop=10.0)
    tied = [pt("3", 0.95, 1.0, 2.0), pt("2", 0.95, 1.0, 1.0), pt("1", 0.94, 1.0, 1.0)]
    assert pick(tied, ACC_LAT_SIZE, budget).point.key == "2"  # smaller size
    tied = [pt("3", 0.95, 1.0), pt("1", 0.94, 1.0)]
    assert pick(tied, ACC_LAT, budget).point.key == "3"  # higher accuracy
    tied = [pt("10", 0.95, 1.0), pt("9", 0.95, 1.0)]
    assert pick(tied, ACC_LAT, budget).point.key == "9"  # smaller key, naturally


def test_knee_policy_picks_the_knee_of_the_feasible_front():
    points = [pt("fast", 0.50, 1.0), pt("corner", 0.95, 2.0), pt("accurate", 0.96, 10.0)]
    chosen = pick(points, ACC_LAT, Budget("accuracy", 0.96, max_drop=50.0), "knee")
    assert chosen.point.key == "corner" and "knee" in chosen.reason
    # with "corner" over the latency limit, the knee is taken among what is left
    limited = Budget("accuracy", 0.96, max_drop=50.0, limits={"latency_ms": 1.5})
    assert pick(points, ACC_LAT, limited, "knee").point.key == "fast"


def test_weighted_policy_follows_mnasnet_soft_constraint():
    no_floor = Budget("accuracy", baseline=0.99)
    # target = median latency (2): 0 loses 0.99 * 2 ** -0.07 = 0.943 < 0.985 for 1
    assert pick(THREE, ACC_LAT, no_floor, "weighted").point.key == "1"
    # target 1: 1 is worth 0.985 * 2 ** -0.07 = 0.938 < 0.95 for 2
    assert pick(THREE, ACC_LAT, no_floor, "weighted", target=1.0).point.key == "2"
    # a mild exponent keeps the most accurate
    assert pick(THREE, ACC_LAT, no_floor, "weighted", target=1.0, exponent=-0.001).point.key == "0"
    # the limit is the default target, and still hard
    limited = Budget("accuracy", 0.99, limits={"latency_ms": 2.0})
    chosen = pick(THREE, ACC_LAT, limited, "weighted")
    assert chosen.point.key == "1" and keys(chosen.feasible) == ["1", "2"]


def test_weighted_policy_refuses_a_bad_target_or_exponent():
    budget = Budget("accuracy", baseline=0.99)
    with pytest.raises(ConfigError, match="positive target"):
        pick(THREE, ACC_LAT, budget, "weighted", target=0.0)
    with pytest.raises(ConfigError, match="exponent"):
        pick(THREE, ACC_LAT, budget, "weighted", exponent=0.5)


def test_pick_the_way_search_calls_it():
    objectives = [
        Objective("metric", "maximize"),
        Objective("latency_ms", "minimize"),
        Objective("size_bytes", "minimize"),
    ]
    points = [
        Point(str(i), {"metric": m, "latency_ms": lat, "size_bytes": s}, {"recipe": f"r{i}"})
        for i, (m, lat, s) in enumerate([(0.97, 1.0, 9e5), (0.975, 0.8, 2e6), (0.9, 0.2, 1e5)])
    ]
    budget = Budget("metric", 0.98, max_drop=1.0, relative=False, limits={"size_bytes": 1e6})
    chosen = pick(points, objectives, budget, "tolerance", cost="latency_ms")
    assert chosen.point.key == "0" and chosen.point.data == {"recipe": "r0"}


# -- errors -------------------------------------------------------------------------------------


def test_unknown_policy_suggests_a_close_match():
    with pytest.raises(ConfigError, match=r"unknown policy 'tolerence'.*Did you mean 'tolerance'"):
        pick(THREE, ACC_LAT, Budget("accuracy", 0.99), "tolerence")


def test_objective_missing_from_a_point_names_it_and_suggests():
    objectives = [Objective("accuracy", "maximize"), Objective("latency", "minimize")]
    with pytest.raises(ConfigError, match=r"no value 'latency'.*Did you mean 'latency_ms'"):
        pareto_front(THREE, objectives)
    with pytest.raises(ConfigError, match="no value 'latency'"):
        pick(THREE, objectives, Budget("accuracy", 0.99))
    with pytest.raises(ConfigError, match="no value 'acc'"):
        pick(THREE, ACC_LAT, Budget("acc", 0.99))


def test_bad_direction_suggests_the_spelling():
    with pytest.raises(ConfigError, match="Did you mean 'maximize'"):
        Objective("accuracy", "maximise")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pareto_front(THREE, []), "at least one objective"),
        (lambda: pareto_front([*THREE, THREE[0]], ACC_LAT), "'0' appears twice"),
        (lambda: pareto_front(THREE, [*ACC_LAT, ACC_LAT[0]]), "unique"),
        (lambda: pareto_front([pt("x", math.nan, 1.0)], ACC_LAT), "finite number"),
        (lambda: pick(THREE, ACC_LAT, Budget("accuracy", 0.9), cost="accuracy"), "maximised"),
        (
            lambda: pick(THREE, [ACC_LAT[0]], Budget("accuracy", 0.9)),
            "no objective is minimised",
        ),
    ],
)
def test_other_bad_inputs_are_config_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_the_pick_is_among_the_finalists_timed_again_even_on_a_long_front():
    """A front longer than --finalists: the points within the budget, fastest first, are the
    ones timed again, so the pick never rests on a single short trial timing (the fastest
    point within budget is last on the front, which is sorted by metric)."""
    from fulcrum.frontier import Budget
    from fulcrum.measuring import Measurement
    from fulcrum.runfolder import Figures, Reference, Trial
    from fulcrum.search.settings import SearchSettings
    from fulcrum.sweetspot import conclude

    base = Figures(metric=0.9, latency_ms=1.0, size_bytes=100, macs=10, params=10)
    settings = SearchSettings(finalists=2, max_drop=5.0)
    reference = Reference(
        baseline=base, budget=Budget("metric", 0.9, max_drop=5.0), workload="w", settings=settings
    )
    # metric falls as latency falls: every trial is on the front; 0-3 within 5 pt, 4-5 beyond
    trials = [
        Trial(
            number=n,
            state="COMPLETE",
            recipe=f"r{n}",
            metric=metric,
            latency_ms=latency,
            latency_ratio=1 / latency,
            size_bytes=50,
            macs=5,
            params=5,
            threads=1,
        )
        for n, (metric, latency) in enumerate(
            [(0.99, 0.9), (0.97, 0.8), (0.95, 0.7), (0.90, 0.6), (0.80, 0.3), (0.70, 0.2)]
        )
    ]
    timed: list[str] = []

    def remeasure(points):
        timed.extend(p.key for p in points)
        return {
            p.key: Measurement(
                runtime="onnxruntime",
                batch_size=1,
                threads=1,
                latency_ms=p.values["latency_ms"],
                latency_ratio=1.0,
                latencies=(),
                size_bytes=50,
                sizes={},
                ratio_range=(0.9, 1.1),
            )
            for p in points
        }

    _, pick, _, _ = conclude(
        trials, reference, settings, here={str(t.number) for t in trials}, remeasure=remeasure
    )
    assert timed == ["3", "2"]  # within the budget, fastest first; not the top of the front
    assert pick.point is not None and pick.point.trial == "3"
    assert pick.point.ratio_range == [0.9, 1.1]  # it was timed again


def _knee_by_hand(front, objectives):
    """The knee as its definition reads: each objective rescaled to [0, 1] over the front (best
    1, worst 0; constant: 1), the point nearest (1, ..., 1), ties to the smallest numeric key."""
    ranges = {}
    for o in objectives:
        values = [p.values[o.name] for p in front]
        ranges[o.name] = (min(values), max(values))

    def score(p, o):
        low, high = ranges[o.name]
        if high == low:
            return 1.0
        share = (p.values[o.name] - low) / (high - low)
        return share if o.direction == "maximize" else 1.0 - share

    return min(
        front,
        key=lambda p: (math.dist([score(p, o) for o in objectives], [1.0] * len(objectives)),
                       int(p.key)),
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(point_sets(min_size=1), objective_sets)
def test_the_knee_is_the_point_nearest_utopia_after_rescaling_each_objective(points, objectives):
    front = pareto_front(points, objectives)
    assert knee(front, objectives).key == _knee_by_hand(front, objectives).key


def test_the_knee_rescales_objectives_of_different_scales():
    """Unscaled, the bytes would decide alone; rescaled, the balanced point wins."""
    objectives = [Objective("accuracy", "maximize"), Objective("size_bytes", "minimize")]
    front = [
        Point("small", {"accuracy": 0.90, "size_bytes": 1_000_000.0}),
        Point("balanced", {"accuracy": 0.97, "size_bytes": 1_300_000.0}),
        Point("accurate", {"accuracy": 0.98, "size_bytes": 4_000_000.0}),
    ]
    assert knee(front, objectives).key == "balanced"


def test_when_nothing_is_feasible_the_reason_says_by_how_much_and_what_is_missing():
    budget = Budget(
        metric="accuracy", baseline=0.99, max_drop=1.0, limits={"latency_ms": 1.0, "params": 10}
    )
    point = pt("only", 0.95, 2.5, 1.0)  # no params measured
    chosen = pick([point], ACC_LAT, budget)
    assert chosen.point is None
    assert chosen.reason.endswith(
        "the closest, 'only', misses by 0.03 of accuracy below 0.98 and 1.5 of latency_ms over 1 "
        "and having no params."
    )


def test_constraints_are_signed_fractions_of_each_limit_and_points_of_the_drop():
    """What Optuna sees: the drop below the floor in the metric's units (negative above it),
    each limit's excess as a fraction of the limit (negative under it), 6 decimals; a point on
    a bound gives 0, and a missing measure is infinitely far."""
    budget = Budget("accuracy", 0.9, max_drop=1.0, limits={"latency_ms": 3.0, "size_mb": 1000.0})
    inside = pt("a", 0.895, 7.0, 500.0)
    assert budget.constraints(inside) == {
        "drop": pytest.approx(-0.005),
        "latency_ms": 1.333333,  # (7 - 3) / 3, rounded to 6 decimals
        "size_mb": -0.5,
    }
    assert budget.constraints(pt("b", 0.89, 3.0, 1000.0)) == {
        "drop": 0.0,
        "latency_ms": 0.0,
        "size_mb": 0.0,
    }
    missing = Point("c", {"latency_ms": 1.0})
    assert budget.constraints(missing) == {
        "drop": math.inf,
        "latency_ms": pytest.approx(-2 / 3, abs=1e-6),
        "size_mb": math.inf,
    }


def test_a_large_metric_is_on_its_floor_within_rounding_relative_to_its_size():
    """The rounding allowance grows with the bound: 5e-6 below a floor of 9,999 is rounding
    (1e-9 of it), for the constraints as for the budget."""
    budget = Budget("score", 10000.0, max_drop=100.0)  # floor 9999
    point = Point("a", {"score": 9999.0 - 5e-6})
    assert budget.constraints(point) == {"drop": 0.0} and budget.allows(point)
    below = Point("b", {"score": 9999.0 - 5e-3})
    assert budget.constraints(below) == {"drop": 0.005} and not budget.allows(below)


def test_total_violation_scales_the_drop_by_the_baseline_or_by_one_at_zero():
    at_zero = Budget("metric", 0.0, max_drop=1.0)  # floor -0.01
    assert at_zero.total_violation(Point("a", {"metric": -0.03})) == pytest.approx(0.02)
    scaled = Budget("metric", 0.5, max_drop=1.0, limits={"latency_ms": 2.0})
    point = Point("b", {"metric": 0.485, "latency_ms": 3.0})
    assert scaled.total_violation(point) == pytest.approx(0.005 / 0.5 + 1.0 / 2.0)


def test_tolerance_ties_go_to_the_other_minimised_objectives_before_the_metric_or_key():
    budget = Budget("accuracy", baseline=0.99, max_drop=10.0)
    tied = [pt("2", 0.96, 1.0, 2.0), pt("3", 0.95, 1.0, 1.0)]
    assert pick(tied, ACC_LAT_SIZE, budget).point.key == "3"  # smaller size, lower accuracy


def test_weighted_policy_accepts_the_edges_and_names_the_fix_when_refusing():
    budget = Budget("accuracy", baseline=0.99)
    flat = pick(THREE, ACC_LAT, budget, "weighted", target=1.0, exponent=0.0)
    assert flat.point.key == "0"  # no discount: the most accurate
    zero = [pt("a", 0.0, 1.0), pt("b", 0.0, 2.0)]
    assert pick(zero, ACC_LAT, budget, "weighted", target=1.0).point.key == "a"
    with pytest.raises(ConfigError, match=r"got 0\.0: pass target= or a positive limit on it\.$"):
        pick(THREE, ACC_LAT, budget, "weighted", target=0.0)
    negative = [pt("a", -0.1, 1.0)]
    with pytest.raises(ConfigError, match="needs a non-negative accuracy; use 'tolerance'"):
        pick(negative, ACC_LAT, Budget("accuracy", 0.0), "weighted", target=1.0)


def test_knee_of_nothing_says_what_it_needs():
    with pytest.raises(ConfigError, match=r"^knee\(\) needs at least one point; got an empty"):
        knee([], ACC_LAT)


def test_the_budget_in_words():
    assert (
        Budget("accuracy", 0.991, max_drop=1.0, limits={"latency_ms": 2.0, "size_mb": 0.5})
    ).describe() == (
        "within 1 pt of the baseline's accuracy (0.991) and under latency_ms <= 2, size_mb <= 0.5"
    )
    assert Budget("accuracy", 0.9, max_drop=2.0, relative=True).describe() == (
        "within 2% of the baseline's accuracy (0.9)"
    )
    assert Budget("accuracy", 0.9).describe() == "with no budget set"


def test_a_measure_that_is_not_a_number_counts_as_missing():
    budget = Budget("accuracy", 0.9, max_drop=1.0)
    for value in ("high", True):
        assert budget.violations(Point("a", {"accuracy": value})) == {"accuracy": math.inf}


def test_the_rounding_allowance_is_one_billionth_of_the_bound_or_at_least_of_one():
    """Exactly 1e-9 below a floor of 0 is rounding; 1.5e-9 below a floor of 0.5 is not (the
    allowance is 1e-9 x max(1, |bound|)); 5e-6 below 9,999 is rounding."""
    assert Budget("m", 0.0, max_drop=0.0).allows(Point("a", {"m": -1e-9}))
    assert not Budget("m", 0.5, max_drop=0.0).allows(Point("a", {"m": 0.5 - 1.5e-9}))
    large = Budget("score", 10000.0, max_drop=100.0)
    assert large.violations(Point("a", {"score": 9999.0 - 5e-6})) == {"score": 0.0}


def test_ties_go_to_the_natural_order_of_keys_digits_before_letters():
    budget = Budget("accuracy", baseline=0.99, max_drop=10.0)
    for keys_, first in (
        (["a", "9"], "9"),
        (["x2y", "x10y"], "x2y"),
        (["t1-3b", "t1-3a"], "t1-3a"),
    ):
        tied = [pt(k, 0.95, 1.0) for k in keys_]
        assert pick(tied, ACC_LAT, budget).point.key == first


def test_reasons_count_candidates_and_name_the_policy():
    budget = Budget("accuracy", baseline=0.99, max_drop=1.0)
    one = pick([pt("0", 0.99, 4.0)], ACC_LAT, budget)
    assert "among 1 candidate within" in one.reason
    chosen = pick(THREE, ACC_LAT, Budget("accuracy", 0.99, max_drop=50.0), "knee")
    assert "Pareto front of 3 candidates" in chosen.reason and chosen.policy == "knee"
    none = pick([pt("0", 0.5, 4.0)], ACC_LAT, budget, "knee")
    assert none.point is None and none.policy == "knee" and none.reason.startswith("none of the")
    empty = pick([], ACC_LAT, budget, "knee")
    assert empty.point is None and empty.policy == "knee"
    assert empty.reason == "there are no candidates to choose from."


def test_the_weighted_target_defaults_to_the_limit_on_the_cost_not_the_median():
    """With a limit of 4 on latency (the median is 2), nothing feasible is over the target, so
    the most accurate wins; with the median as target, 0.99 x 2^-0.07 < 0.985 would lose."""
    limited = Budget("accuracy", 0.99, limits={"latency_ms": 4.0})
    chosen = pick(THREE, ACC_LAT, limited, "weighted")
    assert chosen.point.key == "0" and chosen.policy == "weighted"
    assert chosen.reason.startswith(
        "highest MnasNet reward (0.99: accuracy, times (latency_ms/4)^-0.07 where latency_ms "
        "exceeds 4) among 3 candidates"
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Budget(123, 0.5), "Budget.metric must be a non-empty name; got 123."),
        (
            lambda: Budget("a", 0.5, limits={"a": 1.0}),
            "'a' is both the quality metric and a cost limit; bound the metric with max_drop "
            "and remove it from limits.",
        ),
        (
            lambda: Objective(7, "minimize"),
            "an objective's name must be a non-empty string; got 7.",
        ),
        (lambda: Point(3, {}), "a point's key must be a string; got 3."),
        (lambda: pareto_front(THREE, []), "at least one objective is needed; got none."),
        (
            lambda: pareto_front(THREE, ["accuracy"]),
            "objectives must be Objective(name, direction); got 'accuracy'.",
        ),
        (
            lambda: pick(THREE, [Objective("accuracy", "maximize")], Budget("accuracy", 0.99)),
            "no objective is minimised, so there is no cost: pass cost=NAME.",
        ),
        (
            lambda: pick([Point("p", {})], ACC_LAT, Budget("accuracy", 0.99)),
            "point 'p' has no value 'accuracy'; it has none.",
        ),
        (
            lambda: pick([Point("p", {"latency_ms": 1.0, "size": 2})], ACC_LAT, Budget("a", 1)),
            "point 'p' has no value 'accuracy'; it has latency_ms, size.",
        ),
        (
            lambda: pick([pt("p", math.nan, 1.0)], ACC_LAT, Budget("accuracy", 0.99)),
            "point 'p' has accuracy=nan; it must be a finite number: drop failed candidates first.",
        ),
        (
            lambda: pick(THREE, ACC_LAT, Budget("accuracy", 0.99), "best"),
            "unknown policy 'best'; choose from tolerance, knee, weighted.",
        ),
    ],
)
def test_refusals_say_what_was_given_and_what_to_do(call, message):
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message
