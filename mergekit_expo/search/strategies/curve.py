"""``--strategy curve``: the --alphas grid raced on a lattice that refines itself at the leader,
using that α is one number on a line.

About six α of the grid, evenly spread with both ends, race first, as in :mod:`.race` (blocks
of dev rows in a seeded order; a candidate clearly below the leader is dropped, one that
cannot beat it by more than the tolerance is retired). After each round every run of unscored
grid points between two scored ones (or one and an end of the grid) is

- **covered by the curve** when the scored points around it are each dropped or retired: the
  run is never scored;
- **opened** when it touches the leader: its middle point joins the race, scored at once on
  every block read so far (one unit: the weights are set once), then judged with the others;
- left as it is otherwise, until the candidates around it are decided (scored, once every row is
  read with nothing left to decide them).

The search ends when the race has ended and no run touches the leader: the leader's grid
neighbours are scored, and every other run is covered. The scored α cluster at the peak, a
bracket narrowing as in a golden-section search, every point judged on paired rows.

**Assumptions.** (U) the full-data score is unimodal along the grid, plateaus allowed; (S)
between two neighbouring scored α it rises above the higher of them by at most the tolerance
(no peak narrower than the gap between two scored points).

**Guarantee**, with the race's confidence (Bonferroni over every α of the grid and every
block): under U and S, the best α is never dropped, and the pick's full-data score is within
the tolerance of the best's when the best is scored, within twice the tolerance when it lies in
a covered run. Without S, a peak between two scored points that are both within the tolerance
of the leader, or both below it, is not searched. Without U, a second peak is found when one
of its scored points leads the race at some round; otherwise it is covered and missed. On a
plateau the points on it are retired against each other and the runs between them covered, so
a plateau costs about what a peak does.
"""

from typing import Dict, List, Optional, Tuple

from mergekit_expo.search.race import is_guard_drop
from mergekit_expo.search.rows import AlphaResult
from mergekit_expo.search.stats import standard_errors
from mergekit_expo.search.strategies.base import Unit
from mergekit_expo.search.strategies.race import GridRace, guard_words

LATTICE_POINTS = 6  # the first lattice: enough to see where the peak is, few enough to spare the grid


def lattice(count: int) -> List[int]:
    """About :data:`LATTICE_POINTS` grid indices, evenly spread, both ends included."""
    step = max(1, round((count - 1) / (LATTICE_POINTS - 1)))
    return sorted({*range(0, count, step), count - 1})


class CurveSearch(GridRace):
    name = "curve"
    words = "the curve search"

    def __init__(self, setup):
        super().__init__(setup)
        self.order = list(self.candidates)  # names in α order: the grid as a line
        self.first = [self.order[index] for index in lattice(len(self.order))]

    def start(self) -> List[Unit]:
        return [Unit(self.candidates[name], block=0) for name in self.first]

    def next(self, scored: List[AlphaResult]) -> List[Unit]:
        race, runs = self.state(scored)
        opened = [self.order[(first + last) // 2] for first, last, why in runs if why == OPEN]
        if not opened and race.over:  # every row read and nothing left to decide them: score them
            opened = [self.order[(first + last) // 2] for first, last, why in runs if why == WAITS]
        if opened:  # each joins the race on every block read so far, in one unit
            read = max(race.blocks_read.values(), default=0)
            return [Unit(self.candidates[name], block=0, blocks=max(read, 1)) for name in opened]
        return batched(self.candidates, race.next_units)

    def replay(self, scored: List[AlphaResult], names: Optional[List[str]] = None):
        """The race among the candidates scored so far (the first lattice before any is)."""
        raced = {unit.candidate for unit in self._raced(scored)}
        return super().replay(scored, names or [name for name in self.order if name in raced] or self.first)

    def state(self, scored: List[AlphaResult]):
        """The race so far, and each run of unscored grid points between its candidates as
        (first index, last index, why it is covered, :data:`OPEN` or :data:`WAITS`)."""
        race = self.replay(scored)
        included = [name for name in self.order if name in race.blocks_read]
        return race, self.runs(race, included) if race.rounds else []

    def runs(self, race, included: List[str]) -> List[Tuple[int, int, str]]:
        decided = {name: "dropped by the guard" if is_guard_drop(why) else "below {leader}"
                   for standing in race.rounds for name, why in standing.dropped.items()}
        decided.update({name: "within the tolerance of {leader}" for name in race.retired_in})
        leader = race.rounds[-1].leader
        places = [self.order.index(name) for name in included]
        found = []
        for left, right in zip([None, *places], [*places, None]):
            first = 0 if left is None else left + 1
            last = len(self.order) - 1 if right is None else right - 1
            if first > last:
                continue
            sides = [self.order[side] for side in (left, right) if side is not None]
            if leader in sides:
                found.append((first, last, OPEN))
            elif all(name in decided for name in sides):
                found.append((first, last, "beyond " + " and ".join(
                    f"{name} ({decided[name].format(leader=leader)})" for name in sides)))
            else:
                found.append((first, last, WAITS))
        return found

    def report(self, scored: List[AlphaResult]):
        rows, record = super().report(scored)
        if record is not None:
            _, runs = self.state(scored)
            record["unscored"] = [dict(alpha=self.candidates[self.order[index]]["alpha"],
                                       candidate=self.order[index], why=why)
                                  for first, last, why in runs for index in range(first, last + 1)]
            if any(why in (OPEN, WAITS) for *_, why in runs):  # the race among those scored so far
                record["ended"] = None  # ended, but runs of the grid are still to be scored
        return rows, record

    @classmethod
    def why_picked(cls, record: dict) -> str:
        return ("the race's leader among the scored alpha, its grid neighbours scored and judged; each "
                f"other scored alpha was dropped (clearly below the leader then{guard_words(record)}) or "
                "retired (unable to beat it by more than the tolerance) on the rows both were scored on, and "
                "each unscored alpha lies beyond such candidates, so the curve (taken to be unimodal and "
                "smooth) puts it no higher: 'pick there' is the pick's mean on that alpha's rows")

    @classmethod
    def card_sentence(cls, record: dict) -> str:
        scored = record["rows_full"] // record["rows"] - len(cls.unscored(record))
        return (f"chosen by the curve search (`--strategy curve`): {scored} of the "
                f"{record['rows_full'] // record['rows']} α were scored, on blocks of {record['block_rows']} "
                f"of the {record['rows']} dev rows in a seeded order, starting from an even lattice and "
                "refining at the leader; an α clearly below the leader"
                f"{guard_words(record, 'α', card=True)} was dropped, one unable to beat it by more than "
                f"{standard_errors(record['tolerance'])} of their paired difference retired "
                f"({100 * record.get('confidence', 0.95):g}% confidence on the "
                "paired per-row differences), and the α beyond such candidates were not scored, the score "
                f"taken to be unimodal in α and smooth; {record['rows_scored']} of {record['rows_full']} "
                f"candidate rows were scored (ended: {record['ended']}); the rows column gives how many rows "
                "each α was scored on")

    @classmethod
    def summary_line(cls, record: dict, generating: bool) -> Optional[str]:
        line = super().summary_line(record, generating)
        unscored = len(cls.unscored(record))
        return line.replace("race: ", f"curve: {unscored} α not scored; ", 1)


OPEN = "to be scored: it touches the leader"
WAITS = "not scored: the candidates around it are still racing"


def batched(candidates: Dict[str, dict], units: List[Tuple[str, int]]) -> List[Unit]:
    """(candidate, block) pairs as units, a candidate's consecutive blocks in one (its weights
    are set once for them)."""
    by_name: Dict[str, List[int]] = {}
    for name, block in units:
        by_name.setdefault(name, []).append(block)
    found = []
    for name, blocks in by_name.items():
        blocks, start = sorted(blocks), min(blocks)
        for previous, block in zip(blocks, [*blocks[1:], None]):
            if block != previous + 1:
                found.append(Unit(candidates[name], block=start, blocks=previous - start + 1))
                start = block
    return found
