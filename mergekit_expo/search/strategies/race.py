"""``--strategy race`` on the --alphas grid: every α still running scores the next block of dev
rows; clear losers are dropped and those within the tolerance of the leader retired (the rule:
:mod:`mergekit_expo.search.race`).

A unit is one α on one block (or a reopened α on the blocks it missed). When a round is
scored, any worker replays the race from the study's per-row scores and gets the next
round's units: every worker reaches the same verdicts, so a rerun resumes mid-race.
"""

from dataclasses import replace
from typing import Dict, List, Optional, Tuple

from mergekit_expo.search.race import DEFAULT_TOLERANCE, RaceRule, is_guard_drop, replay
from mergekit_expo.search.rows import AlphaResult, candidate_row
from mergekit_expo.search.stats import CONFIDENCE, fmean, standard_errors
from mergekit_expo.search.strategies.base import Strategy, Unit


class GridRace(Strategy):
    name = "race"
    unit_word = "candidate block"
    words = "the race"  # what a resuming worker says it resumes

    def __init__(self, setup):
        super().__init__(setup)
        space = setup.space
        self.candidates = {space.name_of({"alpha": a}, 0): {"alpha": a} for a in sorted({0.0, *setup.grid})}
        self.reference_name = space.name_of(space.reference(), 0)  # every guard is measured against it

    def plan(self) -> dict:
        return dict(super().plan(), race={"tolerance": self.setup.options.get("tolerance", DEFAULT_TOLERANCE),
                                          "max_drop": self.setup.max_drop})

    def start(self) -> List[Unit]:
        return [Unit(candidate, block=0) for candidate in self.candidates.values()]

    def next(self, scored: List[AlphaResult]) -> List[Unit]:
        race = self.replay(scored)
        return [Unit(self.candidates[name], block=block) for name, block in race.next_units]

    def replay(self, scored: List[AlphaResult], names: Optional[List[str]] = None):
        """The race among ``names`` (default: every candidate), its confidence corrected for
        comparisons among every candidate."""
        blocks, guard_blocks = self.setup.dev.blocks(scored)
        scores = {name: {} for name in names or self.candidates}
        guard = {name: {} for name in scores} if guard_blocks else None
        for unit in self._raced(scored):
            if unit.candidate in scores:
                scores[unit.candidate].update(unit.by_row)
                if guard is not None:
                    guard[unit.candidate].update(unit.guard_by_row)
        rows, guard_rows = self.setup.dev.counts(scored)
        rule = RaceRule(candidates=len(self.candidates), rounds=len(blocks), rows=rows, guard_rows=guard_rows,
                        tolerance=self.setup.options.get("tolerance", DEFAULT_TOLERANCE),
                        max_drop=self.setup.max_drop if guard is not None else None)
        return replay(scores, blocks, rule, guard=guard, guard_blocks=guard_blocks,
                      reference=self.reference_name)

    def _raced(self, scored: List[AlphaResult]) -> List[AlphaResult]:
        """The units of this race (not of a candidate a rerun's --alphas no longer has)."""
        return [unit for unit in scored if unit.block is not None and unit.candidate in self.candidates]

    def report(self, scored: List[AlphaResult]) -> Tuple[List[AlphaResult], Optional[dict]]:
        units = self._raced(scored)
        if not units:
            return [], None
        race = self.replay(units)
        blocks, guard_blocks = self.setup.dev.blocks(units)
        # A rerun under a looser rule (--max-drop, --race-tolerance) may stop before rows an earlier
        # rule read: the reports show the race as judged now, as a fresh run would.
        units = [kept for unit in units if (kept := _within(unit, blocks, guard_blocks,
                                                            race.blocks_read.get(unit.candidate, 0)))]
        leader = race.rounds[-1].leader if race.rounds else None
        leader_scores = {row: value for unit in units if unit.candidate == leader
                         for row, value in unit.by_row.items()}
        reference = [u for u in units if u.candidate == self.reference_name]
        rows = [self._row(name, [u for u in units if u.candidate == name], race, leader_scores, leader,
                          reference) for name in self.candidates if any(u.candidate == name for u in units)]
        ended = race.rounds[-1].finished if race.over and race.rounds else None
        dropped = {name: why for standing in race.rounds for name, why in standing.dropped.items()}
        retired = {name: why for standing in race.rounds for name, why in standing.retired.items()
                   if name in race.retired_in}  # the latest reason of those still retired
        total = self.setup.dev.counts(units)[0]
        record = {"strategy": self.name, "rounds": max(race.blocks_read.values()),
                  "block_rows": len(blocks[0]), "rows": total, "rows_scored": sum(row.n for row in rows),
                  "rows_full": total * len(self.candidates), "tolerance": self.plan()["race"]["tolerance"],
                  "confidence": CONFIDENCE, "ended": ended, "survivors": race.survivors, "dropped": dropped,
                  "retired": retired}
        return sorted(rows, key=lambda row: row.alpha), record

    @staticmethod
    def _row(name: str, units: List[AlphaResult], race, leader_scores: Dict[int, float],
             leader: Optional[str], reference: List[AlphaResult]) -> AlphaResult:
        own = [row for unit in units for row in unit.rows]
        there = None  # the comparison the race made: the leader on this candidate's rows
        if name != leader and leader_scores and all(row in leader_scores for row in own):
            there = fmean([leader_scores[row] for row in own])
        return candidate_row(units, dropped_in=race.dropped_in.get(name),
                             retired_in=race.retired_in.get(name), pick_score=there, reference=reference)

    def resumed(self, scored: List[AlphaResult]) -> Optional[str]:
        done = len(self._raced(scored))
        return f"resuming {self.words}: {done} candidate block{'s' if done != 1 else ''} already scored" \
            if done else None

    @classmethod
    def verdict(cls, row: AlphaResult, best: AlphaResult, record: dict) -> str:
        if row.key == best.key:
            return "pick"
        if row.dropped_in is not None:
            return f"dropped{by_guard(record, row)} in round {row.dropped_in}"
        if row.retired_in is not None:
            return f"within the tolerance from round {row.retired_in}"
        if not record.get("ended"):
            return "still running"
        # kept to the end: on every row, or the one left (not the pick where the guard excludes it)
        return "scored on every row" if row.n >= record["rows"] else "the race's leader"

    @classmethod
    def why_picked(cls, record: dict) -> str:
        return ("the race's leader; each other alpha was dropped (clearly below the leader then"
                f"{guard_words(record)}) or retired (unable to beat it by more than the tolerance) on the "
                "rows both were scored on, so a mean over fewer rows is not comparable: 'pick there' is the "
                "pick's mean on that alpha's rows")

    @classmethod
    def card_rows_note(cls, row: AlphaResult, record: dict) -> str:
        if row.dropped_in:
            return f" (dropped{by_guard(record, row)} in round {row.dropped_in})"
        return f" (within the tolerance from round {row.retired_in})" if row.retired_in else ""

    @classmethod
    def card_sentence(cls, record: dict) -> str:
        rounds = record["rounds"]
        return (f"raced (`--race`): every candidate was scored on blocks of {record['block_rows']} of the "
                f"{record['rows']} dev rows, in a seeded order, and no longer scored once clearly worse than "
                f"the leader{guard_words(record, 'α', card=True)} or unable to beat it by more than "
                f"{standard_errors(record['tolerance'])} of "
                f"their paired difference ({100 * record.get('confidence', CONFIDENCE):g}% confidence on the "
                "paired per-row differences); the pick is the leader; "
                f"{record['rows_scored']} of {record['rows_full']} candidate rows were scored in {rounds} "
                f"round{'s' if rounds != 1 else ''} (ended: {record['ended']}); the rows column gives how "
                "many rows each candidate was scored on")

    @classmethod
    def summary_line(cls, record: dict, generating: bool) -> Optional[str]:
        rounds = record["rounds"]
        return rows_line(record, f"in {rounds} round{'s' if rounds != 1 else ''}", generating)


def _within(unit: AlphaResult, blocks, guard_blocks, read: int) -> Optional[AlphaResult]:
    """``unit`` on the rows of the first ``read`` blocks only (None if it has none of them)."""
    rows = {row for block in blocks[:read] for row in block}
    if all(row in rows for row in unit.rows):
        return unit
    keep = [index for index, row in enumerate(unit.rows) if row in rows]
    if not keep:
        return None
    guard_rows = {row for block in (guard_blocks or [])[:read] for row in block}
    guarded = [index for index, row in enumerate(unit.guard_rows or []) if row in guard_rows]
    values = [unit.values[index] for index in keep]
    guard_rows_kept = [unit.guard_rows[index] for index in guarded] if unit.guard_rows else None
    guard_values = [unit.guard_values[index] for index in guarded] if unit.guard_values else None
    return replace(unit, rows=[unit.rows[index] for index in keep], values=values, n=len(values),
                   score=fmean(values), guard_rows=guard_rows_kept, guard_values=guard_values)


def dropped_by_guard(record: dict, key: str) -> bool:
    return is_guard_drop((record.get("dropped") or {}).get(key, ""))


def by_guard(record: dict, row: AlphaResult) -> str:
    """`` by the guard`` where the guard dropped the row's candidate, for its table cells."""
    return " by the guard" if dropped_by_guard(record, row.key) else ""


def guard_words(record: dict, alpha: str = "alpha", card: bool = False) -> str:
    """Where the guard dropped any (it drops those above the leader too), that it did: ``, or
    its guard …`` (``card``: `` (or with its guard …)``)."""
    if not any(dropped_by_guard(record, key) for key in record.get("dropped") or {}):
        return ""
    clause = f"its guard clearly more than --max-drop below {alpha} = 0's"
    return f" (or with {clause})" if card else f", or {clause}"


def rows_line(record: dict, how: str, generating: bool) -> str:
    """``race: scored X of Y candidate rows (Z%) …``: what the strategy saved against a full search."""
    scored, full = record["rows_scored"], record["rows_full"]
    line = (f"race: scored {scored} of {full} candidate rows ({100 * scored / full:.0f}%) {how}; "
            f"ended: {record['ended'] or 'not yet'}")
    if generating:
        line += f"; generations: {scored} of the {full} a full search makes"
    return line
