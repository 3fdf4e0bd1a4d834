"""Scoring one unit of work: the candidate's weights set in the engine once, then its dev rows
scored (the whole dev set at once, or block by block while the strategy goes on), the guard
with them, and the answers written; the result is the unit's :class:`~.rows.AlphaResult`.
"""

import json
import logging
import time
from typing import Callable, List, Optional

from tqdm import tqdm

from mergekit_expo.errors import ExpoConfigError, ExpoError, first_line
from mergekit_expo.filesystem import make_parents, write_file_atomically
from mergekit_expo.search.race import MIN_BLOCK
from mergekit_expo.search.registry import STRATEGIES
from mergekit_expo.search.rows import AlphaResult, merged_extras
from mergekit_expo.search.stats import bootstrap_interval, fmean
from mergekit_expo.search.strategies.base import ALL, Unit

LOG = logging.getLogger("mergekit_expo")


class Evaluator:
    """One worker's engine, scorers and answers folder."""

    def __init__(self, scorer, guard, plan, *, open_engine: Callable, folder):
        self.scorer, self.guard, self.space, self.resolve = scorer, guard, plan.space, plan.resolve
        self.strategy = plan.strategy  # as messages name it
        self.open_engine, self.engine, self.folder = open_engine, None, folder
        self.dev = None  # the DevRows the strategy cuts into blocks

    def opened(self):
        """The engine, opened on first use."""
        if self.engine is None:
            self.engine = self.open_engine()
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def row_counts(self):
        """(score rows, guard rows or None) the scorers score by index, asked once the engine is open."""
        engine = self.opened()
        guard = self.guard and rows_of(self.guard, engine, "--guard", self.strategy)
        return rows_of(self.scorer, engine, "--scorer", self.strategy), guard

    def score(self, unit: Unit, trial, go_on: Callable[[AlphaResult], Optional[str]]) -> AlphaResult:
        """``unit`` scored in ``trial``; ``go_on(so far)`` is asked between its blocks."""
        candidate = unit.candidate
        name = self.space.name_of(candidate, trial.number)
        start = time.perf_counter()
        self.opened().set_alphas(self.resolve(candidate))
        updated = time.perf_counter() - start
        common = dict(alpha=candidate.get("alpha"), alphas=dict(candidate), candidate=name,
                      update_seconds=updated)
        if unit.block is None:
            description = self.space.describe(candidate)
            score = self.scored("--scorer", self.scorer, name, description)
            checked = None if self.guard is None else self.scored("--guard", self.guard, name, description)
            self.write_answers(name, score, checked)
            return AlphaResult(score=score.value, low=score.low, high=score.high, n=score.n,
                               seconds=time.perf_counter() - start, extra=self.merged_extra(score, checked),
                               guard=checked and checked.value, guard_low=checked and checked.low,
                               guard_high=checked and checked.high, **common)
        return self._blocks(unit, trial, go_on, name, start, common)

    def _blocks(self, unit: Unit, trial, go_on, name: str, start: float, common: dict) -> AlphaResult:
        blocks, guard_blocks = self.dev.blocks()
        rows, guard_rows = self.dev.counts()
        last = len(blocks) if unit.blocks == ALL else unit.block + unit.blocks
        parts, so_far = [], None
        for number in range(unit.block, last):
            description = f"{self.space.describe(unit.candidate)}, block {number + 1} of {len(blocks)}"
            score = self.scored_rows("--scorer", self.scorer, name, description, blocks[number])
            checked = self.scored_rows("--guard", self.guard, name, description, guard_blocks[number]) \
                if self.guard is not None else None
            self.write_answers(name, score, checked, keep_other_rows=True)
            parts.append((blocks[number], score, guard_blocks and guard_blocks[number], checked))
            so_far = self._so_far(parts, unit.block, rows, guard_rows, time.perf_counter() - start, common)
            if unit.blocks == ALL:  # it may be stopped: optuna (TPE) then ranks it by its running mean
                trial.report(so_far.score, step=len(so_far.rows))
            if number + 1 < last and unit.blocks == ALL:
                so_far.stopped = go_on(so_far)
                if so_far.stopped:
                    break
        return so_far

    def _so_far(self, parts, block: int, rows: int, guard_rows, seconds: float, common: dict) -> AlphaResult:
        values = [value for _, score, _, _ in parts for value in score.values]
        guards = [value for _, _, _, checked in parts if checked is not None for value in checked.values]
        one = len(parts) == 1  # a unit of one block: its interval comes from the units of its candidate
        low, high = (None, None) if one else bootstrap_interval(values)
        guard_low, guard_high = (None, None) if one else bootstrap_interval(guards)
        return AlphaResult(score=fmean(values), low=low, high=high, n=len(values), seconds=seconds,
                           extra=merged_extras([(self.merged_extra(score, checked), len(score.values))
                                                for _, score, _, checked in parts]), block=block,
                           guard=fmean(guards) if guards else None, guard_low=guard_low,
                           guard_high=guard_high,
                           rows=[row for part, *_ in parts for row in part], values=values,
                           guard_rows=[row for _, _, part, _ in parts for row in part or []] or None,
                           guard_values=guards or None, race_rows=rows, guard_race_rows=guard_rows, **common)

    def scored(self, option: str, scorer, name: str, description: str, rows: Optional[List[int]] = None):
        """The scorer's score (on ``rows`` only, when given); a failure of its code (a user's
        scorer) names it and the candidate."""
        progress = lambda total: tqdm(total=total, desc=description, leave=False, disable=None)  # noqa: E731
        try:
            return scorer(self.engine, progress=progress, rows=rows)
        except ExpoError:
            raise
        except Exception as error:
            what = type(error).__name__ + (f": {first_line(error)}" if str(error).strip() else "")
            candidate = description if description == name else f"{name} ({description})"
            raise ExpoConfigError(f"{option} {scorer.name} raised {what} while scoring {candidate}: fix it, "
                                  "or run with -v for its traceback") from error

    def scored_rows(self, option: str, scorer, name: str, description: str, rows: List[int]):
        """The scorer's score on ``rows``, with one value per row."""
        score = self.scored(option, scorer, name, description, rows=rows)
        if score.values is None or len(score.values) != len(rows):
            raise ExpoConfigError(f"{option} {scorer.name} gave {len(score.values or [])} per-row values for "
                                  f"the {len(rows)} rows of {description}: a raced scorer gives one per row")
        return score

    def write_answers(self, name: str, score, checked, *, keep_other_rows: bool = False) -> None:
        """answers/<candidate>.jsonl: what each row produced and scored, for reading or judging;
        ``keep_other_rows``: a candidate's earlier blocks stay, each row once."""
        records = [dict(record) for record in (score.rows or [])]
        if checked is not None and checked.rows and not records:
            records = [dict(record, scorer="guard") for record in checked.rows]
        if not records:
            return
        folder = self.folder / "answers"
        make_parents(folder)
        path = folder / f"{name}.jsonl"
        if keep_other_rows and path.is_file():
            new = {record.get("row") for record in records}
            kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            records = [record for record in kept if record.get("row") not in new] + records
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        write_file_atomically(path, text)

    @staticmethod
    def merged_extra(score, guard) -> Optional[dict]:
        """The score's details, and the guard's under a ``guard_`` prefix."""
        extra = dict(score.extra or {})
        if guard is not None:
            extra.update({f"guard_{key}": value for key, value in (guard.extra or {}).items()})
        return extra or None


def rows_of(scorer, engine, option: str, strategy: str = "") -> int:
    """How many dev rows ``scorer`` scores by index; a strategy of one block says it is a full search."""
    how = "--race" if not strategy or "races" in STRATEGIES.get(strategy).traits else f"--strategy {strategy}"
    rows = scorer.race_rows(engine)
    if rows is None or rows < 1:
        raise ExpoConfigError(f"{how}: {option} {scorer.name} has no dev rows to race: check its data")
    if rows <= MIN_BLOCK and option == "--scorer":
        LOG.warning("%s: %s %s scores %d dev row%s, one block (a block has at least %d rows): "
                    "nothing can be dropped before every row is scored, so this is a full search",
                    how, option, scorer.name, rows, "" if rows == 1 else "s", MIN_BLOCK)
    return rows
