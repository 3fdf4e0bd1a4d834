"""``search --race``: the α grid scored block by block of dev rows, dropping clear losers.

The rule is :mod:`.race`'s; this module is its glue to the study:

- a unit of work is one candidate on one block of dev rows: a trial whose row holds the
  block's row indices and per-row values (and the guard's), keyed by candidate and block,
  so that the study scores each unit once across workers and gives a killed worker's back;
- after each round (the study's barrier: nothing waiting or running) any worker replays
  the race from the completed units and enqueues the next block for the candidates still
  running (and the blocks a reopened candidate missed); every worker reaches the same
  verdicts, so a rerun resumes mid-race;
- the reports have one row per candidate, aggregated from its units.
"""

import logging
import math
import time
from typing import Dict, List, Optional

from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.search.race import MIN_BLOCK, RaceRule, replay, row_blocks
from mergekit_expo.search.results import AlphaResult, candidate_name
from mergekit_expo.search.stats import bootstrap_interval, fmean
from mergekit_expo.search.study import BLOCK

LOG = logging.getLogger("mergekit_expo")
REFERENCE = "alpha=0"  # α = 0: its guard is the one every other is measured against


def check(settings, scorer, guard) -> None:
    """Every refusal of ``--race``, before any candidate is scored: one line each."""
    if not settings.race:
        if "race_tolerance" in settings.given:  # never a silently full search
            raise ExpoConfigError("--race-tolerance applies to a race: add --race, or drop --race-tolerance")
        return
    if settings.space != "scalar" and "race_tolerance" in settings.given:
        raise ExpoConfigError(
            f"--race-tolerance ends the race of the --alphas grid; with --space {settings.space} each "
            "sampled candidate is pruned on its own once clearly worse than the best so far, and the "
            "search ends after --trials: drop --race-tolerance")
    if settings.refine:
        raise ExpoConfigError("--race cannot --refine: the midpoints are placed around the best full score, "
                              "which a race does not compute for dropped α: add the midpoints to --alphas")
    if not 0 <= settings.race_tolerance < math.inf:
        raise ExpoConfigError("--race-tolerance must be a finite number, 0 or more (standard errors of "
                              f"a pair's paired difference), got {settings.race_tolerance}")
    for option, used in (("--scorer", scorer), ("--guard", guard)):
        why = used is not None and used.race_refusal()
        if why:
            raise ExpoConfigError(f"--race cannot use {option} {why}")


def study_settings(settings) -> dict:
    """What a raced study adds to the search's settings: the seeded row order."""
    return {"race": {"seed": settings.seed}} if settings.race else {}


def plan_of(settings) -> Optional[dict]:
    """What workers racing together must agree on (a rerun may change it once they are done)."""
    if not settings.race:
        return None
    return {"tolerance": settings.race_tolerance, "max_drop": settings.max_drop}


class RaceRun:
    """One worker's part of the race: scoring units, asking for the next round, aggregating."""

    def __init__(self, run, study, grid: List[float], seed: int):
        self.run, self.study, self.seed = run, study, seed
        alphas = sorted({0.0, *grid})
        self.candidates = {candidate_name("scalar", {"alpha": a}, 0): {"alpha": a} for a in alphas}
        self._counts = None
        self._reported: Dict[tuple, AlphaResult] = {}  # a candidate's row, until it has another unit

    def first_units(self) -> List[dict]:
        return [dict(candidate, **{BLOCK: 0}) for candidate in self.candidates.values()]

    @property
    def options(self) -> dict:
        return self.study.plan["race"]  # a rerun may have changed the tolerance

    # -- rows and blocks ----------------------------------------------------------------------
    def counts(self, units: List[dict]):
        """(score rows, guard rows or None): from any scored unit, else asked of the scorers."""
        if self._counts is None:
            scored = next((unit for unit in units if unit.get(BLOCK) is not None), None)
            if scored is not None:
                self._counts = (scored["race_rows"], scored.get("guard_race_rows"))
            else:
                engine = self.run.opened()
                self._counts = (rows_of(self.run.scorer, engine, "--scorer"),
                                self.run.guard and rows_of(self.run.guard, engine, "--guard"))
        return self._counts

    def blocks(self, units: List[dict]):
        rows, guard_rows = self.counts(units)
        blocks = row_blocks(rows, self.seed)
        guard_blocks = row_blocks(guard_rows, self.seed, count=len(blocks)) if guard_rows else None
        return blocks, guard_blocks

    # -- the worker loop's callbacks ------------------------------------------------------------
    def evaluate(self, unit: dict, trial) -> dict:
        block = unit[BLOCK]
        candidate = {name: value for name, value in unit.items() if name != BLOCK}
        # the study is read for the row counts only until they are known
        blocks, guard_blocks = self.blocks(self.study.rows() if self._counts is None else [])
        name = candidate_name("scalar", candidate, trial.number)
        description = f"α = {candidate['alpha']:g}, block {block + 1} of {len(blocks)}"
        start = time.perf_counter()
        engine = self.run.opened()
        engine.set_alphas(self.run.plan.resolve(candidate))
        updated = time.perf_counter() - start
        score = scored_rows(self.run, "--scorer", self.run.scorer, name, description, blocks[block])
        checked = scored_rows(self.run, "--guard", self.run.guard, name, description, guard_blocks[block]) \
            if self.run.guard is not None else None
        self.run.write_answers(name, score, checked, keep_other_rows=True)
        rows, guard_rows = self.counts([])
        return dict(alpha=candidate["alpha"], score=score.value, low=None, high=None, n=len(score.values),
                    seconds=time.perf_counter() - start, update_seconds=updated, alphas=candidate,
                    candidate=name,
                    extra=self.run.merged_extra(score, checked), guard=checked and checked.value,
                    block=block, rows=blocks[block], values=score.values, race_rows=rows,
                    guard_rows=guard_blocks and guard_blocks[block], guard_values=checked and checked.values,
                    guard_race_rows=guard_rows)

    def more(self) -> List[dict]:
        """The next round's units, or [] when the race is over."""
        race = self.replay(self.study.rows())
        return [dict(self.candidates[name], **{BLOCK: block}) for name, block in race.next_units]

    def replay(self, units: List[dict]):
        blocks, guard_blocks = self.blocks(units)
        scores = {name: {} for name in self.candidates}
        guard = {name: {} for name in self.candidates} if guard_blocks else None
        for unit in units:
            if unit.get(BLOCK) is None or unit["candidate"] not in scores:
                continue  # a candidate a rerun's --alphas no longer has
            scores[unit["candidate"]].update(zip(unit["rows"], unit["values"]))
            if guard is not None:
                guard[unit["candidate"]].update(zip(unit["guard_rows"], unit["guard_values"]))
        rows, guard_rows = self.counts(units)
        rule = RaceRule(candidates=len(scores), rounds=len(blocks), rows=rows, guard_rows=guard_rows,
                        tolerance=self.options["tolerance"],
                        max_drop=self.options.get("max_drop") if guard is not None else None)
        return replay(scores, blocks, rule, guard=guard, guard_blocks=guard_blocks, reference=REFERENCE)

    # -- reports ------------------------------------------------------------------------------
    def aggregate(self, units: List[dict]):
        """(one AlphaResult per candidate, results.json's "race" object); ([], None) before any unit."""
        units = [unit for unit in units
                 if unit.get(BLOCK) is not None and unit["candidate"] in self.candidates]
        if not units:
            return [], None
        race = self.replay(units)
        blocks, _ = self.blocks(units)
        leader = race.rounds[-1].leader if race.rounds else None
        leader_scores = {row: value for unit in units if unit["candidate"] == leader
                         for row, value in zip(unit["rows"], unit["values"])}
        rows = [self._row(name, [u for u in units if u["candidate"] == name], race.dropped_in.get(name),
                          race.retired_in.get(name), leader_scores if name != leader else None)
                for name in self.candidates if any(u["candidate"] == name for u in units)]
        ended = race.rounds[-1].finished if race.over and race.rounds else None
        dropped = {name: why for standing in race.rounds for name, why in standing.dropped.items()}
        retired = {name: why for standing in race.rounds for name, why in standing.retired.items()
                   if name in race.retired_in}  # the latest reason of those still retired
        total = self.counts(units)[0]
        report = {"rounds": max(race.blocks_read.values()), "block_rows": len(blocks[0]), "rows": total,
                  "rows_scored": sum(row.n for row in rows), "rows_full": total * len(self.candidates),
                  "tolerance": self.options["tolerance"], "ended": ended, "survivors": race.survivors,
                  "dropped": dropped, "retired": retired}
        return sorted(rows, key=lambda row: row.alpha), report

    def _row(self, name: str, units: List[dict], dropped_in: Optional[int],
             retired_in: Optional[int], leader_scores: Optional[Dict[int, float]]) -> AlphaResult:
        key = (name, tuple(sorted(unit["trial"] for unit in units)), dropped_in, retired_in,
               tuple(sorted(leader_scores.items())) if leader_scores else None)
        if key not in self._reported:
            row = _candidate_row(name, units, dropped_in, retired_in)
            own = [r for unit in units for r in unit["rows"]]
            if leader_scores and all(r in leader_scores for r in own):  # the comparison the race made
                row.pick_score = fmean([leader_scores[r] for r in own])
            self._reported[key] = row
        return self._reported[key]


def scored_rows(run, option: str, scorer, name: str, description: str, rows: List[int]):
    """The scorer's score on ``rows``, with one value per row."""
    score = run.scored(option, scorer, name, description, rows=rows)
    if score.values is None or len(score.values) != len(rows):
        raise ExpoConfigError(f"{option} {scorer.name} gave {len(score.values or [])} per-row values for "
                              f"the {len(rows)} rows of {description}: a raced scorer gives one per row")
    return score


def rows_of(scorer, engine, option: str) -> int:
    rows = scorer.race_rows(engine)
    if rows is None or rows < 1:
        raise ExpoConfigError(f"--race: {option} {scorer.name} has no dev rows to race: check its data")
    if rows <= MIN_BLOCK and option == "--scorer":
        LOG.warning("--race: %s %s scores %d dev row%s, one block (a block has at least %d rows): "
                    "nothing can be dropped before every row is scored, so this is a full search",
                    option, scorer.name, rows, "" if rows == 1 else "s", MIN_BLOCK)
    return rows


def _candidate_row(name: str, units: List[dict], dropped_in: Optional[int],
                   retired_in: Optional[int]) -> AlphaResult:
    """A candidate's row: its per-row values over every block it was scored on."""
    units = sorted(units, key=lambda unit: unit[BLOCK])
    values = [value for unit in units for value in unit["values"]]
    guards = [value for unit in units for value in (unit.get("guard_values") or [])]
    low, high = bootstrap_interval(values)
    guard_low, guard_high = bootstrap_interval(guards) if guards else (None, None)
    return AlphaResult(alpha=units[0]["alpha"], score=fmean(values), low=low, high=high, n=len(values),
                       seconds=sum(unit["seconds"] for unit in units), extra=unit_extras(units),
                       update_seconds=sum(unit.get("update_seconds") or 0.0 for unit in units),
                       guard=fmean(guards) if guards else None, guard_low=guard_low, guard_high=guard_high,
                       alphas=units[0]["alphas"], candidate=name, trial=min(unit["trial"] for unit in units),
                       dropped_in=dropped_in, retired_in=retired_in)


def unit_extras(units: List[dict]) -> Optional[dict]:
    """The units' details: row-weighted means (counts such as ``skipped`` as the largest)."""
    keys = sorted({key for unit in units for key in (unit.get("extra") or {})})
    merged: Dict[str, object] = {}
    for key in keys:
        given = [(unit["extra"][key], unit["n"]) for unit in units if key in (unit.get("extra") or {})]
        numbers = [(value, n) for value, n in given if isinstance(value, (int, float)) and value is not None]
        if key.endswith("skipped"):
            merged[key] = max(value for value, _ in numbers)
        elif numbers and len(numbers) == len(given):
            merged[key] = sum(value * n for value, n in numbers) / sum(n for _, n in numbers)
        else:
            merged[key] = given[-1][0]
    return merged or None


def summary_line(results) -> Optional[str]:
    """The printed summary's line on the race: the rows it scored, of a full search's."""
    race = results.race
    if not race:
        return None
    scored, full = race["rows_scored"], race["rows_full"]
    rounds = race["rounds"]
    how = f"in {rounds} round{'s' if rounds != 1 else ''}" if race.get("kind") != "sampled" else \
        f"in blocks of {race['block_rows']}, pruning {len(race['dropped'])} candidates"
    line = (f"race: scored {scored} of {full} candidate rows ({100 * scored / full:.0f}%) {how}; "
            f"ended: {race['ended'] or 'not yet'}")
    if results.settings.get("scorer") == "reward-model":
        line += f"; generations: {scored} of the {full} a full search makes"
    return line
