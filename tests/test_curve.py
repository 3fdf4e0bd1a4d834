"""The curve strategy's rule on simulated per-row scores (no model): where it scores, what it
leaves unscored and why, and what it picks, on a peak inside the grid, a peak at its end, a
plateau, and two separated peaks (found, and missed when narrower than the lattice's gaps)."""

import random

from mergekit_expo.search.race import row_blocks
from mergekit_expo.search.rows import best
from mergekit_expo.search.stats import fmean
from mergekit_expo.search.strategies.curve import CurveSearch, batched, lattice
from mergekit_expo.search.strategies.offline import run_offline
from mergekit_expo.search.strategies.race import GridRace
from test_race import within_tolerance

GRID = [round(0.2 * i, 4) for i in range(21)]  # 0, 0.2, ..., 4: 21 α


def table(curve, rows=256, noise=0.05, shared=0.2, seed=0):
    """Per-row scores: the curve, a row effect shared by every α, and each α's own noise."""
    rng = random.Random(seed)
    difficulty = [rng.gauss(0, shared) for _ in range(rows)]
    return {alpha: [curve(alpha) + difficulty[row] + rng.gauss(0, noise) for row in range(rows)]
            for alpha in GRID}


def curve_search(scores, **options):
    rows, record, units = run_offline(CurveSearch, scores, options={"tolerance": 3.0, **options})
    return rows, record, units, {row.alpha for row in rows}


def share(record) -> float:
    return record["rows_scored"] / record["rows_full"]


def by_name(scores):
    return {f"alpha={alpha:g}": dict(enumerate(values)) for alpha, values in scores.items()}


def test_the_lattice_spreads_about_six_points_with_both_ends():
    assert lattice(21) == [0, 4, 8, 12, 16, 20] and lattice(41) == [0, 8, 16, 24, 32, 40]
    assert lattice(4) == [0, 1, 2, 3] and lattice(2) == [0, 1]


def test_a_peak_inside_is_found_scoring_a_fraction_of_the_grid():
    scores = table(lambda a: 0.8 - 0.02 * (a - 2.6) ** 2)
    rows, record, units, scored = curve_search(scores)
    pick = best(rows, None).alpha
    assert within_tolerance(by_name(scores), f"alpha={pick:g}")
    assert {round(pick - 0.2, 4), round(pick + 0.2, 4)} <= scored  # its grid neighbours scored and judged
    assert len(scored) < len(GRID) / 2 and share(record) < 0.2
    unscored = {left["alpha"] for left in record["unscored"]}
    assert unscored == set(GRID) - scored and all("beyond alpha=" in left["why"] for left in record["unscored"])
    raced, race_record, _ = run_offline(GridRace, scores, options={"tolerance": 3.0})
    assert share(record) < share(race_record)  # the race scores every α on the first block at least


def test_a_peak_at_the_end_of_the_grid():
    scores = table(lambda a: 0.6 + 0.05 * a)
    rows, record, units, scored = curve_search(scores)
    assert best(rows, None).alpha >= 3.6 and 3.8 in scored and share(record) < 0.15


def test_a_plateau_costs_about_what_a_peak_does_and_the_pick_is_on_it():
    scores = table(lambda a: 0.8 - 0.05 * max(0.0, abs(a - 2) - 1))  # flat on [1, 3]
    rows, record, units, scored = curve_search(scores)
    assert 1 <= best(rows, None).alpha <= 3
    assert share(record) < 0.35 and record["unscored"]  # retired against each other, runs covered


def test_two_separated_peaks_the_higher_is_found_when_a_lattice_point_leads_on_it():
    scores = table(lambda a: max(0.70 - 0.2 * (a - 0.6) ** 2, 0.75 - 0.2 * (a - 3.2) ** 2))
    rows, record, units, scored = curve_search(scores)
    assert best(rows, None).alpha == 3.2 and 0.8 in scored  # the lower peak was scored too, and lost


def test_a_peak_narrower_than_the_lattice_gaps_between_points_below_the_leader_is_missed():
    # The assumption the strategy states: no peak narrower than the gap between two scored points.
    # A spike at α = 2 (0.95), between lattice points 1.6 and 2.4 which lie below the broad peak
    # at 0.8: both are decided against the leader, so the run between them is never scored.
    spike = {1.8: 0.85, 2.0: 0.95, 2.2: 0.85}
    scores = table(lambda a: spike.get(a, 0.8 - 0.1 * (a - 0.8) ** 2))
    rows, record, units, scored = curve_search(scores)
    assert 2.0 not in scored and best(rows, None).alpha < 1.6
    missed = next(left for left in record["unscored"] if left["alpha"] == 2.0)
    assert "alpha=1.6" in missed["why"] and "alpha=2.4" in missed["why"]
    assert fmean(scores[2.0]) > max(fmean(scores[row.alpha]) for row in rows)  # as documented


def test_new_points_catch_up_in_one_unit_and_blocks_are_batched():
    scores = table(lambda a: 0.8 - 0.02 * (a - 2.6) ** 2)
    rows, record, units, scored = curve_search(scores)
    blocks = row_blocks(256, 0)
    assert [unit.candidate["alpha"] for unit in units[:6]] == [0.0, 0.8, 1.6, 2.4, 3.2, 4.0]
    late = [unit for unit in units if unit.candidate["alpha"] not in (0.0, 0.8, 1.6, 2.4, 3.2, 4.0)]
    first = {}
    for unit in late:  # a point that joins starts with every block read so far, in one unit
        first.setdefault(unit.candidate["alpha"], unit)
    assert late and all(unit.block == 0 for unit in first.values())
    spans = [(unit.candidate["alpha"], block) for unit in units
             for block in range(unit.block, unit.block + unit.blocks)]
    assert len(spans) == len(set(spans))  # no block of a candidate asked for twice
    for row in rows:  # every candidate's rows are the first blocks of the seeded order
        assert row.n == sum(len(block) for block in blocks[:row.n // len(blocks[0])]) or row.n == 256
    assert [(u.block, u.blocks) for u in batched({"a": {"alpha": 1}}, [("a", 2), ("a", 0), ("a", 1), ("a", 5)])] \
        == [(0, 3), (5, 1)]


def test_on_one_block_of_rows_every_alpha_is_scored():
    # nothing can be decided before every row is read: no run is left unscored without a reason
    scores = table(lambda a: 0.8 - 0.02 * (a - 2.6) ** 2, rows=12)
    rows, record, units, scored = curve_search(scores)
    assert scored == set(GRID) and record["unscored"] == []
    assert best(rows, None).alpha == max(GRID, key=lambda a: fmean(scores[a]))


def test_a_report_written_mid_search_says_it_has_not_ended():
    """Every worker rewrites results.json after each unit: until the search has nothing left to
    score, its record must not say the search ended (the race among the α scored so far may have)."""
    from mergekit_expo.search.space import Space
    from mergekit_expo.search.strategies.base import DevRows, Plan
    from mergekit_expo.search.strategies.offline import _scored

    scores = table(lambda a: 0.8 - 0.02 * (a - 2.6) ** 2)
    plan = Plan(space=Space("alpha"), grid=GRID[1:], options={"tolerance": 3.0}, seed=0,
                dev=DevRows(0, lambda: (256, None)))
    search, scored, seen = CurveSearch(plan), [], set()
    queue, ended = search.start(), []
    while queue:
        for index, unit in enumerate(queue):  # a report after each unit, as the workers write them
            scored.append(_scored(unit, scores, None, plan.dev, len(scored), plan.space))
            seen.add((unit.candidate["alpha"], unit.block, unit.blocks))
            left = queue[index + 1:] or [unit for unit in search.next(scored)
                                         if (unit.candidate["alpha"], unit.block, unit.blocks) not in seen]
            ended.append((search.report(scored)[1]["ended"], bool(left)))
        queue = [unit for unit in search.next(scored) if (unit.candidate["alpha"], unit.block, unit.blocks)
                 not in seen]
    assert ended[-1][0] and not ended[-1][1]  # the last report, with nothing left: ended, and why
    assert all(said is None for said, more in ended if more), ended
