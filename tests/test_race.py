"""The racing rule on synthetic per-row scores: who is dropped, when the race ends, and
how often the candidate that is best on all rows is lost."""

import random

from mergekit_expo.search.race import RaceRule, judge, replay, row_blocks
from mergekit_expo.search.stats import fmean, stdev


def rows_of(means, rows=400, noise=1.0, shared=2.0, seed=0):
    """Per-row scores: a row effect every candidate shares (rows differ in difficulty) plus
    each candidate's own noise: what pairing is for."""
    rng = random.Random(seed)
    difficulty = [rng.gauss(0, shared) for _ in range(rows)]
    return {name: {row: mean + difficulty[row] + rng.gauss(0, noise) for row in range(rows)}
            for name, mean in means.items()}


def race(scores, seed=0, **rule_options):
    rows = len(next(iter(scores.values())))
    blocks = row_blocks(rows, seed=seed)
    rule = RaceRule(candidates=len(scores), rounds=len(blocks), rows=rows, **rule_options)
    return replay(scores, blocks, rule), blocks


def rows_used(outcome, blocks, candidates):
    full = sum(len(block) for block in blocks)
    return sum(sum(len(block) for block in blocks[:outcome.blocks_read[name]])
               for name in candidates) / (full * len(candidates))


def within_tolerance(scores, pick, tolerance=3.0):
    """Whether ``pick``'s mean over all rows is within the tolerance of the best's: that many
    standard errors of the pair's mean paired difference on all rows."""
    best = max(scores, key=lambda name: fmean(list(scores[name].values())))
    if pick == best:
        return True
    differences = [scores[best][row] - scores[pick][row] for row in scores[best]]
    return fmean(differences) <= tolerance * stdev(differences) / len(differences) ** 0.5


def test_blocks_cover_every_row_once_in_a_seeded_order():
    blocks = row_blocks(203, seed=7)
    assert sorted(row for block in blocks for row in block) == list(range(203))
    assert len(blocks) == 8 and len(blocks[0]) == 26  # at most 8 rounds
    assert row_blocks(203, seed=7) == blocks and row_blocks(203, seed=8) != blocks
    assert [len(block) for block in row_blocks(40)] == [16, 16, 8]  # at least 16 rows a block
    guard = row_blocks(30, seed=7, count=8)  # a guard's rows in as many blocks as the score's
    assert len(guard) == 8 and sorted(row for block in guard for row in block) == list(range(30))


def test_clear_losers_go_in_the_first_round_and_the_best_wins():
    scores = rows_of({"0": 0.0, "0.3": 0.6, "0.6": 1.2, "2": -1.0})
    outcome, blocks = race(scores)
    assert outcome.dropped_in["0"] == 1 and outcome.dropped_in["2"] == 1
    assert outcome.survivors == ["0.6"] and outcome.over
    # "0.3" went too: below "0.6", or unable to beat it by more than the tolerance
    assert "0.3" in outcome.dropped_in or "0.3" in outcome.retired_in
    assert rows_used(outcome, blocks, scores) < 0.5


def test_no_candidate_can_be_dropped_when_the_noise_hides_every_difference():
    # the same per-row values in another order: equal on all rows, noisy on every part of them
    rng = random.Random(3)
    values = [rng.gauss(0, 3.0) for _ in range(64)]
    orders = {name: rng.sample(range(64), 64) for name in "abc"}
    scores = {name: {row: values[order[row]] for row in range(64)} for name, order in orders.items()}
    outcome, blocks = race(scores, tolerance=0.01)
    assert all(not standing.dropped for standing in outcome.rounds)
    assert outcome.rounds[-1].finished == "every row is scored"
    assert sorted(outcome.survivors) == ["a", "b", "c"]
    # a rule that forgot the number of comparisons would have dropped one on these rows
    careless = replay(scores, blocks, RaceRule(candidates=2, rounds=1, rows=64, tolerance=0.01))
    assert careless.dropped_in, careless.rounds


def test_the_leader_can_change_mid_race():
    # "early" is ahead on the first block only; "late" is better on the rest
    scores = rows_of({"early": 0.0, "late": 0.5}, rows=160, noise=0.5)
    first = row_blocks(160, seed=0)[0]
    for row in first:
        scores["early"][row] += 0.8
    outcome, _ = race(scores, tolerance=0.01)
    leaders = [standing.leader for standing in outcome.rounds]
    assert leaders[0] == "early" and leaders[-1] == "late"
    assert outcome.survivors == ["late"] and "early" in outcome.dropped_in


def test_a_flat_peak_ends_the_race_early_within_the_tolerance():
    # five candidates on a flat top, far from two clear losers
    means = {f"{alpha:g}": 1.0 for alpha in (0.5, 0.6, 0.7, 0.8, 0.9)} | {"0": 0.0, "4": -2.0}
    scores = rows_of(means, rows=800, noise=0.2)
    outcome, blocks = race(scores)
    assert outcome.rounds[-1].finished.startswith("every other candidate is below")
    assert max(outcome.blocks_read.values()) < len(blocks)
    assert {"0", "4"} <= set(outcome.dropped_in)
    # the flat top stops being scored as soon as it cannot beat the leader by the tolerance
    assert len(outcome.retired_in) == 4 and outcome.survivors == [outcome.rounds[-1].leader]
    # with no tolerance every row is scored
    strict, _ = race(scores, tolerance=0.0)
    assert len(strict.rounds) == len(blocks) and strict.rounds[-1].finished == "every row is scored"


def test_an_equivalence_stop_picks_within_the_tolerance_of_the_best_on_all_rows():
    """21 candidates on a gentle peak: races stop early, and the pick's mean over all rows is
    within the tolerance of the best's in at least 95% of them (the documented promise)."""
    races, kept, early, shares = 100, 0, 0, []
    for seed in range(races):
        scores = rows_of({f"{i / 5:g}": -abs(i - 10) * 0.01 for i in range(21)}, rows=400, seed=seed)
        outcome, blocks = race(scores, seed=seed)
        kept += within_tolerance(scores, outcome.rounds[-1].leader)
        early += outcome.rounds[-1].finished.startswith("every other candidate is below")
        shares.append(rows_used(outcome, blocks, scores))
    assert kept >= 0.95 * races and early >= 0.5 * races, (kept, early)
    assert fmean(shares) < 0.75, fmean(shares)


def test_two_candidates_no_row_has_told_apart_are_not_yet_equivalent():
    """The best wins every row, a neighbour loses 6 of 256: until a row tells them apart their
    differences have no spread, which must not read as proof that they are equal."""
    rng = random.Random(5)
    scores = {"near": {row: 0.0 if row % 43 == 0 else 1.0 for row in range(256)},  # first: leads a tie
              "best": {row: 1.0 for row in range(256)},
              **{f"far{i}": {row: float(rng.random() < 0.6) for row in range(256)} for i in range(3)}}
    picks = [race(scores, seed=seed)[0].rounds[-1].leader for seed in range(40)]
    assert picks == ["best"] * 40, picks


def test_the_guard_drops_a_candidate_whose_guard_falls_too_far_and_keeps_alpha_0_scored():
    scores = rows_of({"0": 0.0, "0.5": 1.0, "1": 1.5}, rows=200)
    guard = rows_of({"0": 0.8, "0.5": 0.75, "1": 0.2}, rows=100, noise=0.1, shared=0.1, seed=1)
    blocks = row_blocks(200)
    guard_blocks = row_blocks(100, count=len(blocks))
    rule = RaceRule(candidates=3, rounds=len(blocks), rows=200, max_drop=0.1)
    outcome = replay(scores, blocks, rule, guard=guard, guard_blocks=guard_blocks, reference="0")
    assert outcome.rounds[0].dropped["1"].startswith("guard")
    assert outcome.survivors == ["0.5"] and outcome.dropped_in["0"] >= 1


def test_the_race_waits_for_the_block_it_needs():
    scores = rows_of({"a": 0.0, "b": 2.0, "c": 1.9}, rows=160)
    blocks = row_blocks(160)
    partial = {name: {row: value for row, value in values.items() if row in blocks[0]}
               for name, values in scores.items()}
    partial["c"] = {}
    rule = RaceRule(candidates=3, rounds=len(blocks), rows=160)
    waiting = replay(partial, blocks, rule)
    assert waiting.next_units == [("c", 0)] and waiting.rounds == [] and not waiting.over


def test_the_best_on_all_rows_is_dropped_at_most_5_percent_of_the_time():
    """21 candidates, the best barely ahead: the corrected rule loses it in ≤ 5% of races;
    the same rule without the correction loses it far more often."""
    lost = {"corrected": 0, "uncorrected": 0}
    races = 100
    for seed in range(races):
        means = {f"{i / 5:g}": -abs(i - 10) * 0.02 for i in range(21)}
        scores = rows_of(means, rows=200, noise=1.0, seed=seed)
        best = max(scores, key=lambda name: sum(scores[name].values()))
        blocks = row_blocks(200, seed=seed)
        for kind, candidates in (("corrected", 21), ("uncorrected", 2)):
            rule = RaceRule(candidates=candidates, rounds=1 if kind == "uncorrected" else len(blocks),
                            rows=200, tolerance=0.0)
            outcome = replay(scores, blocks, rule)
            lost[kind] += best not in outcome.survivors
    assert lost["corrected"] <= 0.05 * races, lost
    assert lost["uncorrected"] > lost["corrected"], lost


def test_judge_names_why_each_candidate_went():
    scores = {"a": [1.0, 1.1, 0.9, 1.0] * 8, "b": [0.0, 0.1, -0.1, 0.0] * 8}
    standing = judge(scores, RaceRule(candidates=2, rounds=1, rows=32), rows_left=True)
    assert standing.leader == "a" and standing.survivors == ["a"]
    assert standing.dropped["b"].startswith("below a (the leader then) by 1 ±")
    assert standing.finished == "one candidate left"


def test_a_retired_candidate_is_reopened_when_a_new_leader_is_more_than_the_tolerance_below_it():
    """"twin" nearly equals "early" and is retired in round 1; "late" then leads, and on the
    rows "twin" was scored on it may be far below "twin": "twin" is scored on the block it
    missed and judged again, so the pick is within the tolerance of every retired candidate."""
    rng = random.Random(1)
    blocks = row_blocks(256, seed=0)
    first = set(blocks[0])
    shared = [rng.gauss(0, 1) for _ in range(256)]
    own = [rng.gauss(0, 0.1) for _ in range(256)]
    scores = {"early": {row: shared[row] + own[row] for row in range(256)},
              "twin": {row: shared[row] + own[row] + rng.gauss(0, 0.02) for row in range(256)},
              "late": {row: shared[row] + (-0.05 if row in first else 0.6) + rng.gauss(0, 1.0) for row in range(256)}}
    rule = RaceRule(candidates=3, rounds=len(blocks), rows=256)
    outcome = replay(scores, blocks, rule)
    first_round, second = outcome.rounds[:2]
    assert first_round.leader == "early" and list(first_round.retired) == ["twin"]
    assert second.leader == "late" and second.reopened == ["twin"] and not second.finished
    assert outcome.rounds[-1].leader == "late" and outcome.survivors == ["late"]
    # while "twin" lacks the block the others were scored on, the race asks for it alone
    missed = set(blocks[1])
    waiting = replay({name: {row: value for row, value in values.items() if name != "twin" or row not in missed}
                      for name, values in scores.items()}, blocks, rule)
    assert waiting.next_units == [("twin", 1)] and len(waiting.rounds) == 2


def test_retiring_one_by_one_reads_fewer_rows_than_stopping_all_at_once():
    """A peak of 21 candidates: a rule that stopped only once every survivor was within the
    tolerance at the same time read 52% of these rows (measured when it was replaced, with a
    tolerance of 2 standard errors of a score); retiring each as soon as it is within its
    tolerance of the leader reads 43% (3 standard errors of the pair's paired difference),
    and still keeps the promise."""
    shares, kept = [], 0
    for seed in range(20):
        scores = rows_of({f"{i / 5:g}": -abs(i - 10) * 0.01 for i in range(21)}, rows=256, seed=seed)
        outcome, blocks = race(scores, seed=seed)
        kept += within_tolerance(scores, outcome.rounds[-1].leader)
        shares.append(rows_used(outcome, blocks, scores))
    assert kept == 20 and fmean(shares) < 0.45, (kept, fmean(shares))


def test_scoring_only_the_units_asked_for_gives_the_race_on_every_row():
    """What workers do: score the units the replay asks for, replay again. Each unit is asked
    for once, reopenings included, and the verdicts are those of the race replayed on every
    row's scores (so a replay from a full search's scores is the command's race)."""
    reopened = 0
    for seed in range(150):
        rng = random.Random(seed)
        names = [f"c{i}" for i in range(rng.randint(2, 8))]
        scores = rows_of({name: rng.uniform(-0.2, 0.2) for name in names}, rows=rng.choice([48, 100, 256]),
                         noise=rng.choice([0.05, 0.5, 1.0]), shared=1.0, seed=seed)
        rows = len(scores[names[0]])
        blocks = row_blocks(rows, seed=seed)
        rule = RaceRule(candidates=len(names), rounds=len(blocks), rows=rows, tolerance=rng.choice([0.5, 2.0]))
        known, asked = {name: {} for name in names}, []
        outcome = replay(known, blocks, rule)
        while not outcome.over:
            for name, block in outcome.next_units:
                known[name].update({row: scores[name][row] for row in blocks[block]})
            asked += outcome.next_units
            outcome = replay(known, blocks, rule)
        on_every_row = replay(scores, blocks, rule)
        assert len(asked) == len(set(asked)) == sum(outcome.blocks_read.values())
        assert [s.leader for s in outcome.rounds] == [s.leader for s in on_every_row.rounds]
        assert (outcome.dropped_in, outcome.retired_in, outcome.blocks_read) == \
            (on_every_row.dropped_in, on_every_row.retired_in, on_every_row.blocks_read)
        reopened += any(standing.reopened for standing in outcome.rounds)
    assert reopened >= 10, reopened


def test_a_tolerance_of_one_is_one_standard_error_in_words():
    from mergekit_expo.search.stats import standard_errors

    assert [standard_errors(count) for count in (1, 1.0, 2, 0.5)] == [
        "1 standard error", "1 standard error", "2 standard errors", "0.5 standard errors"]


def test_a_raced_candidates_guard_is_measured_against_alpha_0_on_the_rows_it_read(tmp_path):
    """α = 0 reads more guard rows than a candidate dropped early; those rows are easier, so
    α = 0's mean over all of them says nothing of the candidate's drop: the paired drop (0.04,
    under --max-drop 0.05) does not exclude it, in the rule, results.json and the summary."""
    import json

    from mergekit_expo.search.registry import STRATEGIES
    from mergekit_expo.search.results import SearchResults
    from mergekit_expo.search.rows import excluded
    from mergekit_expo.search.strategies.offline import run_offline

    rng = random.Random(0)
    rows = 256
    difficulty = [rng.gauss(0, 1) for _ in range(rows)]
    means = {0.0: 0.9, 0.5: 0.98, 1.0: 1.0, 2.0: -1.0}  # 2 goes in the first round; the others race on
    table = {a: [mean + difficulty[row] + rng.gauss(0, 0.3) for row in range(rows)] for a, mean in means.items()}
    first = set(row_blocks(64, seed=0, count=len(row_blocks(rows, seed=0)))[0])
    drops = {0.0: 0.0, 0.5: 0.02, 1.0: 0.03, 2.0: 0.04}
    guard = {a: [0.8 + (-0.5 if row in first else 0.5) - drop + rng.gauss(0, 0.01) for row in range(64)]
             for a, drop in drops.items()}
    for name in ("race", "curve"):
        found, record, _ = run_offline(STRATEGIES.get(name).load(), table, guard=guard, max_drop=0.05)
        by_alpha = {row.alpha: row for row in found}
        early, base = by_alpha[2.0], by_alpha[0.0]
        assert early.dropped_in == 1 and early.n < base.n
        assert early.guard < base.guard - 0.05  # unpaired, the means would say it fell by 0.7
        assert abs(early.guard_reference - early.guard - 0.04) < 0.01  # on its own rows, by 0.04
        assert excluded(found, 0.05) == []
        assert excluded(found, 0.03) == [early]  # a drop over --max-drop still excludes it
        results = SearchResults(tmp_path / name, {"scorer": "preference", "guard": "g", "strategy": name},
                                found, max_drop=0.03)
        results.race = record
        (tmp_path / name).mkdir()
        results.save()
        saved = json.loads((tmp_path / name / "results.json").read_text())["results"]
        assert [row["excluded"] for row in saved] == [row.alpha == 2.0 for row in found]
        assert (f"fell more than 0.03 below alpha = 0's on the rows each read (2: {early.guard:.4g} against "
                f"{early.guard_reference:.4g})") in results.summary()


def test_the_leader_is_one_the_guard_allows_and_one_it_excludes_runs_on():
    """A candidate above the others whose guard mean is past --max-drop on the rows read is not
    the leader (the pick could not be it), nor retired against a lower one: it runs on, while the
    noise leaves its guard's drop unproven either way."""
    rng = random.Random(3)
    rows = 64
    scores = {"0": [rng.gauss(0.0, 1) for _ in range(rows)], "hi": [rng.gauss(1.0, 1) for _ in range(rows)],
              "ok": [rng.gauss(0.6, 1) for _ in range(rows)]}
    guard = {"0": [rng.gauss(0.5, 0.3) for _ in range(rows)]}
    guard["hi"] = [value - 0.06 + rng.gauss(0, 0.3) for value in guard["0"]]  # drops 0.06 on average
    guard["ok"] = [value + rng.gauss(0, 0.01) for value in guard["0"]]
    rule = RaceRule(candidates=3, rounds=8, rows=512, max_drop=0.05, guard_rows=512)
    assert fmean(guard["hi"]) < fmean(guard["0"]) - 0.05 and fmean(scores["hi"]) > fmean(scores["ok"])
    standing = judge(scores, rule, rows_left=True, guard=guard, reference="0")
    assert "hi" not in standing.dropped  # its drop is not shown with confidence
    assert standing.leader == "ok" and "hi" in standing.survivors and "hi" not in standing.retired
    unguarded = judge(scores, RaceRule(candidates=3, rounds=8, rows=512), rows_left=True)
    assert unguarded.leader == "hi"


def test_where_the_guard_excludes_every_kept_candidate_the_pick_is_among_the_most_read():
    from mergekit_expo.search.rows import AlphaResult, best

    def row(alpha, score, guard, n, retired_in=None):
        return AlphaResult(alpha=alpha, score=score, low=None, high=None, n=n, seconds=0.0, guard=guard,
                           retired_in=retired_in)

    rows = [row(0.0, 0.50, 0.60, 96, retired_in=3), row(1.0, 0.70, 0.40, 96),  # the leader, excluded
            row(2.0, 0.90, 0.59, 32, retired_in=1), row(3.0, 0.55, 0.60, 96, retired_in=3)]
    assert best(rows, 0.05).alpha == 3.0  # not 2.0, a mean on a third of the rows
    assert best(rows, 0.5).alpha == 1.0


def test_with_no_running_candidate_the_guard_allows_none_is_judged_and_the_retired_come_back():
    """α = 0 retired against "a", which the guard then allowed; now the guard excludes both
    running candidates: nobody is retired or dropped against them, α = 0 is reopened, and the
    race does not end while rows are left."""
    rng = random.Random(4)
    rows = 64
    scores = {"a": [rng.gauss(1.0, 1) for _ in range(rows)], "b": [rng.gauss(0.9, 1) for _ in range(rows)]}
    guard = {"0": [rng.gauss(0.5, 0.3) for _ in range(rows)]}
    guard.update({name: [value - 0.08 + rng.gauss(0, 0.3) for value in guard["0"]] for name in scores})
    retirees = {"0": [rng.gauss(0.9, 1) for _ in range(rows)]}
    rule = RaceRule(candidates=3, rounds=8, rows=512, max_drop=0.05, guard_rows=512)
    standing = judge(scores, rule, rows_left=True, guard=guard, reference="0", retirees=retirees)
    assert not standing.retired and standing.reopened == ["0"] and standing.finished is None
    assert set(standing.survivors) == {"a", "b", "0"}
    last = judge(scores, rule, rows_left=False, guard=guard, reference="0")
    assert last.finished == "every row is scored"
    # the guard shows both clearly past --max-drop: dropped, and α = 0 comes back all the same
    far = {name: [value - 0.3 for value in guard["0"]] for name in scores}
    standing = judge(scores, rule, rows_left=True, guard=dict(far, **{"0": guard["0"]}), reference="0",
                     retirees=retirees)
    assert set(standing.dropped) == {"a", "b"} and standing.reopened == ["0"] and standing.finished is None
