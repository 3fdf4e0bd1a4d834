"""Engines check themselves: after every α, sampled weights read back from the running
model must equal the ExPO values computed from the checkpoints, apart from the engine (for a
trajectory, with :func:`~mergekit_expo.trajectory.numerics.affine_parts` and ``evaluate``
where the engine runs the merge's streamed kernel).

Both engines hand their tensors to a library's own loader (transformers' checkpoint
conversion, vLLM's ``reload_weights``), through interfaces that can change between
versions. A loader that silently ignored what it is handed, or reloaded the checkpoint
from disk, would have every α score the aligned model, with no error. The check costs a
few hundred values per α.

Which weights can be read back: those the running model holds under their checkpoint
name with their checkpoint shape (norms, and for the transformers engine every tensor it
does not rename or fuse). Fused or renamed tensors (vLLM's ``qkv_proj`` / ``gate_up_proj``,
mixture-of-experts experts in both engines), tensor-parallel shards and linear weights
that vLLM's CPU backend repacks are not compared; they go through the same loader call
as the compared ones.
"""

import functools
import importlib
import logging
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from packaging.version import Version

from mergekit_expo.errors import ExpoEngineError
from mergekit_expo.search.registry import ENGINES

LOG = logging.getLogger("mergekit_expo")

#: The library versions each engine was tested with (first and last minor version, inclusive).
TESTED = {entry.name: entry.tested for entry in ENGINES.entries if entry.tested}
_TENSORS = 4  # tensors compared per α
_ELEMENTS = 16  # values compared per tensor
_ROWS = 4  # rows read per matrix when choosing the values


def library_version(engine: str) -> str:
    return importlib.import_module(TESTED[engine][0]).__version__


@functools.lru_cache(maxsize=None)
def warn_if_untested(engine: str) -> None:
    """One line, once, when the engine's library is outside the tested range."""
    library, first, last = TESTED[engine]
    version = Version(library_version(engine))
    if not Version(first) <= Version(f"{version.major}.{version.minor}") <= Version(last):
        LOG.warning("%s %s is outside the versions --engine %s was tested with (%s): each α's "
                    "weights are checked after loading", library, version, engine, _tested_text(engine))


def _tested_text(engine: str) -> str:
    library, first, last = TESTED[engine]
    return f"{library} {first}" if first == last else f"{library} {first} to {last}"


@dataclass
class _Sample:
    name: str
    positions: List[int]  # flat element positions in the tensor
    points: Tuple[torch.Tensor, ...]  # each checkpoint's values there, in the dtype the arithmetic runs in
    dtype: torch.dtype  # the running model's dtype for this tensor


class WeightProbe:
    """The sampled weights of one engine and their ExPO values at any α."""

    def __init__(self, checkpoint, readable: Mapping[str, Tuple[tuple, torch.dtype]], engine: str):
        """``readable``: name -> (shape, dtype) of what the running model holds."""
        self.engine, self.checkpoint = engine, checkpoint
        self.samples = _choose(checkpoint, readable)
        if not self.samples:
            LOG.warning("--engine %s: no weight the running model holds under its checkpoint name "
                        "differs between the checkpoints, so α updates cannot be checked", engine)

    @property
    def covered(self) -> List[str]:
        return [s.name for s in self.samples]

    def requests(self) -> Dict[str, List[int]]:
        """name -> flat positions to read back from the running model."""
        return {s.name: s.positions for s in self.samples}

    def check(self, alphas, found: Mapping[str, torch.Tensor]) -> None:
        """Raise ExpoEngineError unless ``found`` (name -> values read back) is ExPO at ``alphas``:
        one α for every tensor, or each checkpoint tensor's own (name -> α)."""
        for sample in self.samples:
            alpha = alphas[sample.name] if isinstance(alphas, Mapping) else alphas
            expected = self.checkpoint.expected(sample.points, alpha).to(sample.dtype)
            got = found[sample.name].to(sample.dtype).reshape(-1)
            differ = (_bits(got) != _bits(expected)).nonzero().view(-1)
            if len(differ):
                first = int(differ[0])
                library = TESTED[self.engine][0]
                raise ExpoEngineError(
                    f"--engine {self.engine} ({library} {library_version(self.engine)}) does not hold the "
                    f"weights of alpha={alpha:g}: {sample.name} reads {got[first].item():.6g} where ExPO "
                    f"gives {expected[first].item():.6g} ({len(differ)} of {len(expected)} sampled values "
                    "differ), and nothing was scored: merge with mergekit-expo run and score the merged "
                    f"model (this engine was tested with {_tested_text(self.engine)})"
                )


def _bits(values: torch.Tensor) -> torch.Tensor:
    integer = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[values.element_size()]
    return values.contiguous().view(integer)


def _choose(checkpoint, readable) -> List[_Sample]:
    """Up to _TENSORS readable tensors spread over the model, each with values α moves."""
    names = [n for group in checkpoint.groups for n in group  # embeddings, layer 0, 1, ...
             if n in readable and tuple(readable[n][0]) == checkpoint.shape(n)
             and readable[n][1].is_floating_point]
    samples, tried = [], set()
    for pick in range(_TENSORS):
        start = round(pick * (len(names) - 1) / max(1, _TENSORS - 1)) if names else 0
        for name in names[start:start + 8]:  # the first one there whose values differ
            if name in tried:
                continue
            tried.add(name)
            sample = _sample(checkpoint, name, readable[name][1])
            if sample is not None:
                samples.append(sample)
                break
    return samples


def _sample(checkpoint, name: str, dtype: torch.dtype) -> Optional[_Sample]:
    shape = checkpoint.shape(name)
    if len(shape) == 0:
        return None
    rows = [0] if len(shape) == 1 else sorted({r * (shape[0] - 1) // (_ROWS - 1) for r in range(_ROWS)})
    points = checkpoint.rows(name, rows, whole=len(shape) == 1)
    delta = checkpoint.moves(points).reshape(len(rows), -1)
    row_size = delta.shape[1] if len(shape) > 1 else 0
    order = delta.reshape(-1).argsort(descending=True)[:_ELEMENTS]
    order = order[delta.reshape(-1)[order] > 0]
    if not len(order):
        return None  # no update to see here
    positions = [rows[int(i) // delta.shape[1]] * row_size + int(i) % delta.shape[1] for i in order]
    return _Sample(name, positions, tuple(point.reshape(-1)[order] for point in points), dtype)
