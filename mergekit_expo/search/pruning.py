"""``search --race`` in the sampled spaces (TPE, CMA-ES, random): each candidate is scored
block by block of dev rows and pruned once it is clearly worse than the incumbent, the
best candidate scored on every row so far.

Why not the grid's race: the sampler draws each candidate from the scores of the finished
ones, so candidates arrive one at a time and there are no rounds to share. Why not one of
optuna's pruners (median, successive halving): they compare running means across trials,
unpaired; here every candidate is scored on the same rows in the same seeded order, so the
paired per-row differences to the incumbent carry far less noise (:mod:`.race`'s test,
Bonferroni-corrected over ``--trials`` × blocks). optuna still sees each block's running
mean (``trial.report``) and a pruned candidate as a PRUNED trial, which its TPE sampler
ranks below every fully scored one. α = 0 is never pruned: it is the first incumbent and
the guard's reference.
"""

import time
from typing import List, Optional

from mergekit_expo.search.race import RaceRule, row_blocks
from mergekit_expo.search.racing import rows_of, scored_rows, unit_extras
from mergekit_expo.search.results import candidate_name
from mergekit_expo.search.stats import bootstrap_interval, clearly_below, fmean


class SampledRace:
    """One worker's scoring of sampled candidates block by block, pruning clear losers."""

    def __init__(self, run, study, seed: int, trials: int):
        self.run, self.study, self.seed, self.trials = run, study, seed, trials
        self._blocks = None

    def blocks(self):
        """(score blocks, guard blocks or None), asked of the scorers once."""
        if self._blocks is None:
            engine = self.run.opened()
            blocks = row_blocks(rows_of(self.run.scorer, engine, "--scorer"), self.seed)
            guard = self.run.guard and row_blocks(rows_of(self.run.guard, engine, "--guard"), self.seed,
                                                  count=len(blocks))
            self._blocks = blocks, guard or None
        return self._blocks

    def rule(self) -> RaceRule:
        blocks, guard_blocks = self.blocks()
        return RaceRule(candidates=self.trials + 1, rounds=len(blocks), rows=sum(map(len, blocks)),
                        max_drop=self.study.plan["race"].get("max_drop") if guard_blocks else None,
                        guard_rows=guard_blocks and sum(map(len, guard_blocks)))

    def evaluate(self, candidate: dict, trial) -> dict:
        blocks, guard_blocks = self.blocks()
        rule, reference = self.rule(), all(value == 0 for value in candidate.values())
        name = candidate_name(self.run.plan.space.name, candidate, trial.number)
        description = self.run.plan.space.describe(candidate)
        start = time.perf_counter()
        self.run.opened().set_alphas(self.run.plan.resolve(candidate))
        updated = time.perf_counter() - start
        read, values, guard_read, guard_values, units, why = [], [], [], [], [], None
        for number, block in enumerate(blocks):
            score = scored_rows(self.run, "--scorer", self.run.scorer, name, description, block)
            checked = scored_rows(self.run, "--guard", self.run.guard, name, description,
                                  guard_blocks[number]) if guard_blocks else None
            self.run.write_answers(name, score, checked, keep_other_rows=True)
            read += block
            values += score.values
            if checked is not None:
                guard_read += guard_blocks[number]
                guard_values += checked.values
            units.append({"extra": self.run.merged_extra(score, checked), "n": len(block)})
            trial.report(fmean(values), step=len(read))
            if number + 1 < len(blocks) and not reference:
                why = self._pruned_why(rule, read, values, guard_read, guard_values)
                if why:
                    break
        return self._row(candidate, name, start, updated, units, read, values, guard_read, guard_values,
                         dropped_in=number + 1 if why else None, why=why)

    def _pruned_why(self, rule: RaceRule, read, values, guard_read, guard_values) -> Optional[str]:
        """Why the candidate is clearly worse than the incumbent (or its guard than α = 0's)."""
        full = [row for row in self.study.rows() if row.get("dropped_in") is None and row.get("values")]
        if rule.max_drop is not None:
            base = next((row for row in full if not any(row["alphas"].values())), None)
            if base is not None:
                by_row = dict(zip(base["guard_rows"], base["guard_values"]))
                why = clearly_below([by_row[row] for row in guard_read], guard_values, rule.guard_rows,
                                    rule.z, rule.max_drop)
                if why:
                    return f"guard {why} below α = 0"
                full = [row for row in full if row["guard"] >= base["guard"] - rule.max_drop]
        if not full:
            return None
        incumbent = max(full, key=lambda row: (row["score"], -row["trial"]))
        by_row = dict(zip(incumbent["rows"], incumbent["values"]))
        why = clearly_below([by_row[row] for row in read], values, rule.rows, rule.z)
        return why and f"below {incumbent['candidate']} (the best so far then) by {why}"

    def _row(self, candidate, name, start, updated, units, read, values, guard_read, guard_values, *,
             dropped_in: Optional[int], why: Optional[str]) -> dict:
        low, high = bootstrap_interval(values)
        guard_low, guard_high = bootstrap_interval(guard_values) if guard_values else (None, None)
        return dict(alpha=candidate.get("alpha"), score=fmean(values), low=low, high=high, n=len(values),
                    seconds=time.perf_counter() - start, update_seconds=updated, extra=unit_extras(units),
                    guard=fmean(guard_values) if guard_values else None, guard_low=guard_low,
                    guard_high=guard_high, alphas=dict(candidate), candidate=name, dropped_in=dropped_in,
                    dropped_why=why, pruned=why is not None, rows=read, values=values,
                    guard_rows=guard_read or None, guard_values=guard_values or None)

    def report(self, rows: List[dict]) -> Optional[dict]:
        """results.json's "race" object for the sampled candidates scored so far."""
        if not rows:
            return None
        blocks, _ = self.blocks()
        total = sum(map(len, blocks))
        return {"kind": "sampled", "rounds": max(1, *(row.get("dropped_in") or len(blocks) for row in rows)),
                "block_rows": len(blocks[0]), "rows": total, "rows_scored": sum(row["n"] for row in rows),
                "rows_full": total * len(rows), "tolerance": None,
                "ended": "every sampled candidate is scored or pruned" if len(rows) > self.trials else None,
                "survivors": [row["candidate"] for row in rows if row.get("dropped_in") is None],
                "dropped": {row["candidate"]: row["dropped_why"] for row in rows if row.get("dropped_why")}}
