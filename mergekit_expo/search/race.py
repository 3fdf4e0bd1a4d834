"""Racing candidates on shared dev rows: score every running candidate on the next block of
rows, drop those clearly worse than the leader, retire those that cannot beat it by more than
the tolerance, until only the leader is running.

Every candidate is scored on the same rows, so the paired per-row differences to the
leader carry far less noise than the scores themselves (F-race, Hoeffding races).

The rule, after each round (``n`` of the dev set's ``N`` rows scored by every running
candidate):

- the leader is the running candidate with the highest mean score, among those whose guard
  mean (with ``--guard``) is within ``--max-drop`` of α = 0's on the same rows, as the pick must
  be; one the guard excludes does not lead, but is judged against the leader as any other
  (and runs on while it may beat it by more than the tolerance); where the guard allows no
  running candidate, none is judged and the retired come back;
- a running ``c`` is dropped when the mean paired difference ``d = leader − c`` has its
  lower confidence bound above 0: ``mean(d) − z·se(d) > 0``;
- with a guard, ``c`` is also dropped when its guard's drop below α = 0 exceeds
  ``--max-drop`` with the same confidence;
- a running ``c`` is retired (no longer scored) when it cannot beat the leader by more than
  the pair's tolerance: ``mean(c − leader) + z·se <= tolerance``. Every retired candidate is
  checked again against each new round's leader on the rows it was scored on, and reopened
  when that no longer holds: scored on the blocks it missed, then judged again;
- the race ends when only the leader is running, or when every row is scored. A pair's
  tolerance is ``--race-tolerance`` standard errors of its paired difference on all rows (the
  spread of its per-row differences / √N, the resolution of a full search's comparison of
  the two): by default 3. Two neighbours whose answers barely differ are held to their small
  spread; two candidates that disagree on many rows, to their large one.

``se`` is the standard error of the mean difference over the ``n`` rows as an estimate of
its mean over all ``N`` rows (rows are drawn without replacement, hence the factor
``√((N − n)/(N − 1))``: once every row is scored the means are exact). ``z`` is
Bonferroni-corrected for every comparison of the best candidate the race can make
(``candidates − 1`` others, each on the first ``k`` blocks for every ``k``). With that, one
event covers both promises (normal approximation of the mean of paired differences; rows in
a seeded random order): with probability at least ``confidence``, the candidate that is best
on all rows is never dropped, and the pick is within the tolerance of it on all rows (the
best is the pick, or a retiree checked against the pick in the last round; the tolerance is
the pair's, its spread measured on the rows the best was scored on).
"""

import math
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from mergekit_expo.search.stats import CONFIDENCE, clearly_below, fmean, most_above, z_of

#: rows in the first block, at least: fewer make the per-row spread too noisy to test on
MIN_BLOCK = 16
#: the rows are split into at most this many blocks, so the correction for looking again
#: after every block stays small
MAX_ROUNDS = 8
DEFAULT_TOLERANCE = 3.0


def row_blocks(rows: int, seed: int = 0, count: Optional[int] = None) -> List[List[int]]:
    """Row indices in a seeded order, cut into equal blocks of at least MIN_BLOCK rows, or
    into ``count`` blocks (a guard's rows, cut into as many blocks as the score's)."""
    order = list(range(rows))
    random.Random(seed).shuffle(order)
    if count is not None:
        return [order[rows * i // count:rows * (i + 1) // count] for i in range(count)]
    size = max(MIN_BLOCK, math.ceil(rows / MAX_ROUNDS))
    return [order[start:start + size] for start in range(0, rows, size)]


@dataclass(frozen=True)
class RaceRule:
    candidates: int  # in the race from the start
    rounds: int  # blocks there are
    rows: int  # in the whole dev set
    confidence: float = CONFIDENCE
    tolerance: float = DEFAULT_TOLERANCE  # in standard errors of a pair's full-data paired difference
    max_drop: Optional[float] = None  # the guard's allowed drop below α = 0
    guard_rows: Optional[int] = None  # in the guard's whole dev set

    @property
    def z(self) -> float:
        return z_of(self.confidence, max(1, (self.candidates - 1) * self.rounds))


@dataclass
class Standing:
    """The race after a round: who leads, who went and why, whether it is over."""

    leader: str
    survivors: List[str]  # still scored after this round (the reopened among them)
    dropped: Dict[str, str] = field(default_factory=dict)  # candidate -> why it is below
    finished: Optional[str] = None  # why the race ended, or None
    retired: Dict[str, str] = field(default_factory=dict)  # candidate -> why it is within tolerance
    reopened: List[str] = field(default_factory=list)  # retired before, no longer within tolerance


def judge(scores: Dict[str, Sequence[float]], rule: RaceRule, *, rows_left: bool,
          guard: Optional[Dict[str, Sequence[float]]] = None, reference: Optional[str] = None,
          scale: Optional[float] = None, retirees: Optional[Dict[str, Sequence[float]]] = None,
          guard_dropped: bool = False) -> Standing:
    """One round's verdict. ``scores``: each running candidate's per-row scores on the same
    rows, in the same order; ``guard`` likewise for the guard, with ``reference`` (α = 0) among
    them; ``scale``: the range of every score the race has read (default: of ``scores``);
    ``retirees``: each retired candidate's scores on the first rows of ``scores``' order;
    ``guard_dropped``: whether the guard dropped a candidate in an earlier round."""
    scale = _range(scores.values()) if scale is None else scale
    dropped = _guard_drops(scores, rule, guard, reference)
    by_guard = guard_dropped or bool(dropped)  # (so far every drop is the guard's)
    running = [name for name in scores if name not in dropped]
    # The leader is one the guard allows on these rows (the pick's own rule); one it excludes is
    # judged against it as any other, and runs on while it may beat it by more than the tolerance.
    allowed = [name for name in running if _guard_allows(name, guard, reference, rule)]
    if not allowed:  # none the pick could be: nobody is judged, the retired (α = 0 among them) come back
        back = list(retirees or {})
        if not running:
            ended = None if back else "every candidate fails the guard"
            return Standing("", back, dropped, ended, reopened=back)
        leader = max(running, key=lambda name: (fmean(scores[name]), name == reference))
        finished = None if rows_left else _finished(running + back, back, rows_left, retirees, leader,
                                                    by_guard)
        return Standing(leader, running + back, dropped, finished, reopened=back)
    leader = max(allowed, key=lambda name: (fmean(scores[name]), name == reference))
    retired = {}
    for name in running if rows_left else ():  # on every row, the pick is simply the leader
        if name == leader:
            continue
        why = clearly_below(scores[leader], scores[name], rule.rows, rule.z, scale=scale)
        if why:
            dropped[name] = f"below {leader} (the leader then) by {why}"
            continue
        above, within = most_above(scores[name], scores[leader], rule.rows, rule.z, rule.tolerance, scale)
        if above <= within:
            retired[name] = f"at most {above:.3g} above {leader} (the leader then; tolerance {within:.3g})"
    reopened = []
    for name, values in (retirees or {}).items():
        above, within = most_above(values, scores[leader], rule.rows, rule.z, rule.tolerance, scale)
        if above > within:
            reopened.append(name)
    survivors = [name for name in running if name not in dropped and name not in retired] + reopened
    return Standing(leader, survivors, dropped, _finished(survivors, reopened, rows_left, retired or retirees,
                                                          leader, by_guard), retired, reopened)


def _guard_drops(scores, rule: RaceRule, guard, reference) -> Dict[str, str]:
    """The candidates whose guard is below α = 0's by more than ``max_drop``, with why."""
    if guard is None or rule.max_drop is None:
        return {}
    dropped = {}
    for name in scores:
        why = name != reference and clearly_below(guard[reference], guard[name], rule.guard_rows, rule.z,
                                                  rule.max_drop, _range(guard.values()))
        if why:
            dropped[name] = guard_drop_words(why)
    return dropped


def guard_drop_words(why: str) -> str:
    """Why a candidate was dropped by the guard, as the race's record keeps it."""
    return f"guard {why} below α = 0"


def is_guard_drop(why: str) -> bool:
    """Whether a recorded reason for a drop (:func:`guard_drop_words`) is the guard's."""
    return why.startswith("guard ")


def _guard_allows(name: str, guard, reference, rule: RaceRule) -> bool:
    """Whether ``name``'s guard mean is within ``max_drop`` of α = 0's on the same rows."""
    if guard is None or rule.max_drop is None or name == reference:
        return True
    return fmean(guard[name]) >= fmean(guard[reference]) - rule.max_drop


def _range(lists) -> float:
    """The range of every score in ``lists``: the scale of a difference no row has shown yet."""
    values = [value for values in lists for value in values]
    return max(values) - min(values)


def _finished(survivors: List[str], reopened: List[str], rows_left: bool, retirees,
              leader: str, by_guard: bool = False) -> Optional[str]:
    if reopened:  # they are scored on the rows they missed, then judged again
        return None
    if len(survivors) == 1:
        if not retirees:
            return "one candidate left"
        ways = f"below {leader}, within the tolerance of it or dropped by the guard" if by_guard \
            else f"below {leader} or within the tolerance of it"
        return f"every other candidate is {ways}"
    return None if rows_left else "every row is scored"


@dataclass
class Race:
    """The race so far, replayed from the per-row scores every worker reads from the study:
    each worker reaches the same verdicts, so none has to coordinate the rounds."""

    rounds: List[Standing]  # one per judgement
    survivors: List[str]  # still scored
    next_units: List[Tuple[str, int]]  # (candidate, block) to score next; [] once the race is over
    dropped_in: Dict[str, int]  # candidate -> blocks read when it was dropped
    retired_in: Dict[str, int]  # candidate -> blocks read when it was retired (and not reopened)
    blocks_read: Dict[str, int]  # candidate -> the blocks the race read of it (its first ones)

    @property
    def over(self) -> bool:
        return not self.next_units


def replay(scores: Dict[str, Dict[int, float]], blocks: List[List[int]], rule: RaceRule, *,
           guard: Optional[Dict[str, Dict[int, float]]] = None,
           guard_blocks: Optional[List[List[int]]] = None,
           reference: Optional[str] = None) -> Race:
    """``scores[candidate][row]``: what is scored so far, every candidate of the race a key."""
    survivors, rounds, dropped_in, retired_in = list(scores), [], {}, {}
    read = {name: 0 for name in scores}
    count = 1  # blocks read by every survivor in this round
    guard_dropped = False  # in an earlier round: how the race ends is worded with it
    for _ in range(len(blocks) * (len(scores) + 1) ** 2):
        # α = 0 stays scored in a guarded race: every other guard is measured against it
        scoring = survivors + ([reference] if guard is not None and reference not in survivors else [])
        missing = [(name, number) for name in scoring for number in range(count)
                   if not _has(scores, guard, blocks, guard_blocks, name, number)]
        if missing:
            return Race(rounds, survivors, missing, dropped_in, retired_in, read)
        read.update({name: count for name in scoring})
        standing = _judge_round(scores, guard, blocks, guard_blocks, rule, count, survivors, scoring,
                                read, set(retired_in), reference, guard_dropped)
        rounds.append(standing)
        guard_dropped = guard_dropped or any(map(is_guard_drop, standing.dropped.values()))
        dropped_in.update({name: count for name in standing.dropped})
        retired_in.update({name: count for name in standing.retired})
        for name in standing.reopened:
            del retired_in[name]
        survivors = standing.survivors
        if standing.finished:
            return Race(rounds, survivors, [], dropped_in, retired_in, read)
        count += not standing.reopened
    raise RuntimeError(f"the race did not settle in {len(rounds)} rounds")


def _has(scores, guard, blocks, guard_blocks, name: str, number: int) -> bool:
    """Whether ``name`` is scored on block ``number`` (and on its guard block)."""
    return all(row in scores[name] for row in blocks[number]) and \
        (guard is None or all(row in guard[name] for row in guard_blocks[number]))


def _judge_round(scores, guard, blocks, guard_blocks, rule: RaceRule, count: int, survivors, scoring,
                 read: Dict[str, int], retired, reference, guard_dropped: bool) -> Standing:
    """``judge`` on the first ``count`` blocks, each retiree on the blocks it was scored on."""
    rows = [row for block in blocks[:count] for row in block]
    guard_rows = [row for block in (guard_blocks or [])[:count] for row in block]
    prefix = {name: [scores[name][row] for block in blocks[:read[name]] for row in block] for name in scores}
    scale = _range(prefix.values())  # of every score read, as the running candidates may all agree
    retirees = {name: prefix[name] for name in retired}
    running = {name: [scores[name][row] for row in rows] for name in survivors}
    guarded = guard and {name: [guard[name][row] for row in guard_rows] for name in scoring}
    return judge(running, rule, rows_left=count < len(blocks), reference=reference, scale=scale,
                 retirees=retirees, guard=guarded, guard_dropped=guard_dropped)
