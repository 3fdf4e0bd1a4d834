"""Every candidate on every dev row: the --alphas grid (and --refine's midpoints), or the
candidates the sampler draws, each scored at once by the scorer."""

from typing import List, Optional, Tuple

from mergekit_expo.search.rows import AlphaResult, best, candidate_row
from mergekit_expo.search.strategies.base import Strategy, Unit
from mergekit_expo.search.trial_roles import SAMPLED


class FullSearch(Strategy):
    name = "full"

    def start(self) -> List[Unit]:
        grid = self.setup.grid or []
        return [self.reference(), *(Unit({"alpha": alpha}) for alpha in grid)]

    def next(self, scored: List[AlphaResult]) -> List[Unit]:
        if self.setup.grid is None:
            return [Unit(None, role=SAMPLED)]  # the loop stops drawing at --trials
        if not self.setup.refine:
            return []
        return [Unit({"alpha": alpha}) for alpha in self.refinements(scored)]

    def refinements(self, scored: List[AlphaResult]) -> List[float]:
        """--refine: the midpoints on either side of the grid's best α, once the grid is scored."""
        grid = sorted({0.0, *self.setup.grid})
        rows = [candidate_row([unit]) for unit in scored if unit.alpha in grid]
        if len(rows) < len(grid):
            return []
        ordered = sorted(row.alpha for row in rows)
        index = ordered.index(best(rows, self.setup.max_drop).alpha)
        neighbours = ordered[max(index - 1, 0):index] + ordered[index + 1:index + 2]
        return [round((neighbour + ordered[index]) / 2, 6) for neighbour in neighbours]

    def report(self, scored: List[AlphaResult]) -> Tuple[List[AlphaResult], Optional[dict]]:
        return self.sorted_rows([candidate_row([unit]) for unit in scored]), None

    def resumed(self, scored: List[AlphaResult]) -> Optional[str]:
        if self.setup.grid is None:
            return super().resumed(scored)
        every = {0.0, *self.setup.grid}
        done = len(every & {unit.alpha for unit in scored})
        return f"resuming: {done} of {len(every)} α already scored" if done else None
