"""``--strategy prune`` (``--race`` in the sampled spaces) (TPE, CMA-ES, random): each drawn candidate is
scored block by block of dev rows and pruned once it is clearly worse than the incumbent, the
best candidate scored on every row so far.

Why not the grid's race: the sampler draws each candidate from the scores of the finished
ones, so candidates arrive one at a time and there are no rounds to share. Why not one of
optuna's pruners (median, successive halving): they compare running means across trials,
unpaired; here every candidate is scored on the same rows in the same seeded order, so the
paired per-row differences to the incumbent carry far less noise (:mod:`..stats`' test,
Bonferroni-corrected over ``--trials`` × blocks). optuna still sees each block's running
mean (``trial.report``) and a pruned candidate as a PRUNED trial, which its TPE sampler
ranks below every fully scored one. α = 0 is never pruned: it is the first incumbent and
the guard's reference.
"""

from typing import List, Optional, Tuple

from mergekit_expo.search.race import RaceRule, guard_drop_words, is_guard_drop
from mergekit_expo.search.rows import AlphaResult, candidate_row
from mergekit_expo.search.stats import CONFIDENCE, clearly_below
from mergekit_expo.search.strategies.base import ALL, Strategy, Unit
from mergekit_expo.search.strategies.race import by_guard, guard_words, rows_line
from mergekit_expo.search.trial_roles import SAMPLED


class SampledPruning(Strategy):
    name = "prune"

    def plan(self) -> dict:
        return dict(super().plan(), race={"tolerance": self.setup.options.get("tolerance"),
                                          "max_drop": self.setup.max_drop})

    def start(self) -> List[Unit]:
        return [self.reference(block=0, blocks=ALL)]

    def next(self, scored: List[AlphaResult]) -> List[Unit]:
        return [Unit(None, block=0, blocks=ALL, role=SAMPLED)]  # the loop stops drawing at --trials

    def rule(self, scored: List[AlphaResult]) -> RaceRule:
        blocks, guard_blocks = self.setup.dev.blocks(scored)
        return RaceRule(candidates=self.setup.trials + 1, rounds=len(blocks), rows=sum(map(len, blocks)),
                        max_drop=self.setup.max_drop if guard_blocks else None,
                        guard_rows=guard_blocks and sum(map(len, guard_blocks)))

    def go_on(self, unit: AlphaResult, scored: List[AlphaResult]) -> Optional[str]:
        """Why the candidate is clearly worse than the incumbent (or its guard than α = 0's)."""
        if not any(unit.alphas.values()):
            return None  # α = 0: the first incumbent
        rule = self.rule(scored)
        full = [other for other in scored if other.stopped is None and other.values]
        if rule.max_drop is not None:
            base = next((other for other in full if not any(other.alphas.values())), None)
            if base is not None:
                by_row = base.guard_by_row
                why = clearly_below([by_row[row] for row in unit.guard_rows], unit.guard_values,
                                    rule.guard_rows, rule.z, rule.max_drop)
                if why:
                    return guard_drop_words(why)
                full = [other for other in full if other.guard >= base.guard - rule.max_drop]
        if not full:
            return None
        incumbent = max(full, key=lambda other: (other.score, -other.trial))
        by_row = incumbent.by_row
        why = clearly_below([by_row[row] for row in unit.rows], unit.values, rule.rows, rule.z)
        return why and f"below {incumbent.candidate} (the best so far then) by {why}"

    def report(self, scored: List[AlphaResult]) -> Tuple[List[AlphaResult], Optional[dict]]:
        if not scored:
            return [], None
        blocks, _ = self.setup.dev.blocks(scored)
        block_rows = len(blocks[0])
        reference = [unit for unit in scored if not any(unit.alphas.values())]
        rows = [candidate_row([unit], dropped_in=len(unit.rows) // block_rows if unit.stopped else None,
                              reference=reference) for unit in scored]
        total = sum(map(len, blocks))
        record = {"strategy": self.name, "kind": "sampled",
                  "rounds": max(1, *(row.dropped_in or len(blocks) for row in rows)),
                  "block_rows": block_rows, "rows": total, "rows_scored": sum(row.n for row in rows),
                  "rows_full": total * len(rows), "tolerance": None, "confidence": CONFIDENCE,
                  "ended": "every sampled candidate is scored or pruned" if len(rows) > self.setup.trials
                  else None,
                  "survivors": [unit.candidate for unit in scored if unit.stopped is None],
                  "dropped": {unit.candidate: unit.stopped for unit in scored if unit.stopped}}
        return self.sorted_rows(rows), record

    @classmethod
    def verdict(cls, row: AlphaResult, best: AlphaResult, record: dict) -> str:
        if row.key == best.key:
            return "pick"
        return f"dropped{by_guard(record, row)} after {row.n} rows" if row.dropped_in is not None \
            else "scored on every row"

    @classmethod
    def why_picked(cls, record: dict) -> str:
        return ("the best candidate scored on every row; pruned ones are means over fewer rows, each "
                f"clearly below the best so far then on the rows both were scored on{guard_words(record)}")

    @classmethod
    def card_rows_note(cls, row: AlphaResult, record: dict) -> str:
        return f" (pruned{by_guard(record, row)} after block {row.dropped_in})" if row.dropped_in else ""

    @classmethod
    def card_sentence(cls, record: dict) -> str:
        return (f"raced (`--race`): each sampled candidate was scored on blocks of {record['block_rows']} of "
                f"the {record['rows']} dev rows, in a seeded order, and pruned once clearly worse than the "
                f"best candidate scored on every row so far{guard_words(record, 'α')} "
                f"({100 * record.get('confidence', CONFIDENCE):g}% confidence on the paired per-row "
                f"differences); the pick is the best fully scored candidate; {record['rows_scored']} of "
                f"{record['rows_full']} candidate rows were scored; the rows column gives how many rows each "
                "candidate was scored on")

    @classmethod
    def summary_line(cls, record: dict, generating: bool) -> Optional[str]:
        guarded = sum(map(is_guard_drop, record["dropped"].values()))
        how = (f"in blocks of {record['block_rows']}, pruning {len(record['dropped'])} candidates"
               + (f" ({guarded} by the guard)" if guarded else ""))
        return rows_line(record, how, generating)
