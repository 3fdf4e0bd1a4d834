"""A strategy run offline on a table of per-row scores (a full search's answers, or a
simulation): which units it would score and what it would pick, with no model and no study.
The benchmark's replays and the strategies' tests use it; the command's own loop gives the
same units and verdicts for the same scores (a test checks it)."""

from typing import Dict, List, Optional, Sequence, Tuple

from mergekit_expo.search.rows import AlphaResult
from mergekit_expo.search.space import Space
from mergekit_expo.search.strategies.base import ALL, DevRows, Plan, Strategy, Unit


def run_offline(strategy: type, table: Dict[float, Sequence[float]], *, seed: int = 0,
                options: Optional[dict] = None, guard: Optional[Dict[float, Sequence[float]]] = None,
                max_drop: Optional[float] = None) -> Tuple[List[AlphaResult], Optional[dict], List[Unit]]:
    """``table[α]``: one score per dev row for every α of a grid (α = 0 included). Returns the
    strategy's report (rows, record) and the units it asked for, in order."""
    rows = len(next(iter(table.values())))
    guard_rows = guard and len(next(iter(guard.values())))
    space = Space("alpha")
    plan = Plan(space=space, grid=sorted(alpha for alpha in table if alpha), options=dict(options or {}),
                seed=seed, max_drop=max_drop, dev=DevRows(seed, lambda: (rows, guard_rows)))
    chosen: Strategy = strategy(plan)
    scored, asked, seen = [], [], set()
    queue = list(chosen.start())
    while queue:
        for unit in queue:
            key = (unit.candidate.get("alpha"), unit.block, unit.blocks)
            if key not in seen:
                seen.add(key)
                asked.append(unit)
                scored.append(_scored(unit, table, guard, plan.dev, len(scored), space))
        queue = [unit for unit in chosen.next(scored)
                 if (unit.candidate and unit.candidate.get("alpha"), unit.block, unit.blocks) not in seen]
    found, record = chosen.report(scored)
    return found, record, asked


def _scored(unit: Unit, table, guard, dev: DevRows, trial: int, space: Space) -> AlphaResult:
    alpha = unit.candidate["alpha"]
    common = dict(alpha=alpha, low=None, high=None, seconds=0.0, alphas=dict(unit.candidate),
                  candidate=space.name_of(unit.candidate, trial), trial=trial)
    if unit.block is None:
        values = list(table[alpha])
        return AlphaResult(score=sum(values) / len(values), n=len(values), **common)
    blocks, guard_blocks = dev.blocks()
    last = len(blocks) if unit.blocks == ALL else unit.block + unit.blocks
    rows = [row for block in blocks[unit.block:last] for row in block]
    values = [table[alpha][row] for row in rows]
    guard_rows = guard_blocks and [row for block in guard_blocks[unit.block:last] for row in block]
    return AlphaResult(score=sum(values) / len(values), n=len(values), block=unit.block, rows=rows,
                       values=values, guard_rows=guard_rows,
                       guard_values=guard_rows and [guard[alpha][row] for row in guard_rows],
                       race_rows=len(table[alpha]), guard_race_rows=guard and len(guard[alpha]), **common)
