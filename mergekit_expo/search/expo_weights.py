"""The ExPO model of any α as checkpoint-named tensors, computed from the checkpoints' files.

Every checkpoint stays memory-mapped; tensors are produced one layer at a time, so an
engine can hand them to its own loader (transformers' conversion, vLLM's
``load_weights``), which renames, fuses and shards them as it does on first load.
Two kinds, one interface: :class:`ExpoCheckpoint` (the SFT and aligned models,
θ_aligned + α·(θ_aligned − θ_sft)) and :class:`TrajectoryCheckpoint` (the SFT model and a
run's checkpoints, the least-squares line evaluated at s_last·(1 + α)); each computes its
tensors with the merge method's own arithmetic, so they are the bits the merge writes.
"""

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from safetensors import safe_open

from mergekit_expo.checkpoint import shard_of
from mergekit_expo.errors import ExpoConfigError, ExpoInputError
from mergekit_expo.numerics import extrapolate_tensor
from mergekit_expo.trajectory.fit import TrajectoryFit
from mergekit_expo.trajectory.numerics import affine_parts, evaluate, fit_tensor

_LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


class PointCheckpoints(ABC):
    """The checkpoints the ExPO model is computed from (the SFT model first), memory-mapped,
    read by tensor name; a subclass says how the points combine at α."""

    def __init__(self, folders: Sequence[str], dtype: Optional[torch.dtype] = None):
        shards = [shard_of(Path(folder)) for folder in folders]
        if not all(shards):
            raise ExpoInputError("search reads safetensors checkpoints: convert .bin checkpoints first")
        for folder, names in zip(folders[1:], shards[1:]):
            if set(names) != set(shards[0]):
                self.refuse_other_tensors(sorted(set(names) ^ set(shards[0]))[0], folder)
        self.dtype = dtype
        files = {}  # open safetensors handles, memory-mapped, kept for all α
        self._sources = {name: tuple(files.setdefault(file, safe_open(file, framework="pt"))
                                     for file in (shard[name] for shard in shards))
                         for name in shards[-1]}
        self.groups = _by_layer(sorted(shards[-1]))

    @abstractmethod
    def refuse_other_tensors(self, name: str, folder: str) -> None:
        """Raise ExpoInputError: tensor ``name`` is in one of ``folder`` and the SFT model only."""

    @abstractmethod
    def combine(self, points: Sequence[torch.Tensor], alpha: float,
                name: Optional[str] = None) -> torch.Tensor:
        """The ExPO value of the points (one tensor per checkpoint) at ``alpha``, as the merge writes it."""

    def expected(self, points: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
        """The same value, computed for the engine's self-check."""
        return self.combine(points, alpha)

    @abstractmethod
    def moves(self, points: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per element, how much α moves it (zero: every α gives the same value), in fp64."""

    def tensor(self, name: str, alpha: float, device="cpu") -> torch.Tensor:
        points = [source.get_tensor(name) for source in self._sources[name]]
        if not points[-1].is_floating_point():
            return points[-1]  # token ids and other integer buffers are copied, as in the merge
        if self.dtype is not None:  # like mergekit's dtype: inputs convert first
            points = [point.to(self.dtype) for point in points]
        return self.combine([point.to(device) for point in points], alpha, name)

    def shape(self, name: str) -> tuple:
        return tuple(self._sources[name][-1].get_slice(name).get_shape())

    def rows(self, name: str, rows: List[int], whole: bool = False) -> Tuple[torch.Tensor, ...]:
        """Each point's rows of a tensor (all of it with ``whole``), as the arithmetic reads them."""
        points = []
        for source in self._sources[name]:
            part = source.get_slice(name)
            tensor = part[:] if whole else torch.cat([part[r:r + 1] for r in rows])
            points.append(tensor.to(self.dtype) if self.dtype is not None else tensor)
        return tuple(points)

    def layers(self, alphas: Union[float, Mapping[str, float]],
               device="cpu") -> Iterator[Dict[str, torch.Tensor]]:
        """The ExPO tensors of one layer at a time (embeddings and head in a group of their own).

        ``alphas``: one α for every tensor, or each tensor's own (checkpoint name -> α).
        """
        alpha_of = alphas.__getitem__ if isinstance(alphas, Mapping) else (lambda _name: alphas)
        for names in self.groups:
            yield {name: self.tensor(name, alpha_of(name), device) for name in names}


class ExpoCheckpoint(PointCheckpoints):
    """θ_aligned + α·(θ_aligned − θ_sft) per tensor, by checkpoint name."""

    def __init__(self, sft: str, aligned: str, dtype: Optional[torch.dtype] = None):
        super().__init__([sft, aligned], dtype)

    def refuse_other_tensors(self, name: str, folder: str) -> None:
        raise ExpoInputError(f"tensor {name} exists in only one of the two models: "
                             "use the SFT checkpoint the aligned model was trained from")

    def combine(self, points, alpha, name=None):
        return extrapolate_tensor(points[0], points[1], alpha, name=name)

    def moves(self, points):
        return (points[1].double() - points[0].double()).abs()


class TrajectoryCheckpoint(PointCheckpoints):
    """The fit of ``fit`` through the SFT model (step 0) and a run's checkpoints, at
    s_last·(1 + α), per tensor, by checkpoint name."""

    def __init__(self, sft: str, checkpoints: Sequence[str], fit: TrajectoryFit,
                 dtype: Optional[torch.dtype] = None):
        self.folders, self.fit = (sft, *checkpoints), fit
        super().__init__(self.folders, dtype)

    def refuse_other_tensors(self, name: str, folder: str) -> None:
        sft = self.folders[0]
        have, lack = (folder, sft) if name in shard_of(Path(folder)) else (sft, folder)
        raise ExpoInputError(f"tensor {name} is in {have} but not in {lack}: list checkpoints of the run "
                             "that started from the SFT model")

    def combine(self, points, alpha, name=None):
        return fit_tensor(points, self.fit, alpha, name=name)  # the merge's kernel, streamed

    def expected(self, points, alpha):
        return evaluate(affine_parts(points, self.fit), alpha)

    def moves(self, points):
        return affine_parts(points, self.fit).b.abs()  # B: α's coefficient (times m)


def open_weights(sft: str, checkpoints: Sequence[str], *, steps: Optional[Sequence[int]] = None,
                 window: Optional[int] = None, dtype: Optional[torch.dtype] = None) -> PointCheckpoints:
    """The ExPO weights of ``sft`` and one aligned checkpoint (expo), or of several checkpoints
    of one run at ``steps`` (default: what their folders state) fitted over the last ``window``
    points (expo_trajectory); the steps and window are checked as the merge checks them."""
    if len(checkpoints) == 1:
        return ExpoCheckpoint(sft, checkpoints[0], dtype)
    from mergekit_expo.trajectory.contract import planned_fit

    written = tuple(steps) if steps is not None else (None,) * len(checkpoints)
    if len(written) != len(checkpoints):
        raise ExpoConfigError(f"{len(written)} step(s) for {len(checkpoints)} checkpoints: give one per "
                             "checkpoint, in training order")
    fit = planned_fit(tuple(zip(checkpoints, written)), window)
    return TrajectoryCheckpoint(sft, checkpoints, fit, dtype)


def _by_layer(names: List[str]) -> List[List[str]]:
    groups: Dict[Optional[int], List[str]] = {}
    for name in names:
        match = _LAYER.search(name)
        groups.setdefault(int(match.group(1)) if match else None, []).append(name)
    return [groups[key] for key in sorted(groups, key=lambda k: -1 if k is None else k)]
