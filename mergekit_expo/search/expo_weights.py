"""The ExPO model of any α as checkpoint-named tensors, computed from the two files.

Both checkpoints stay memory-mapped; tensors are produced one layer at a time, so an
engine can hand them to its own loader (transformers' conversion, vLLM's
``load_weights``), which renames, fuses and shards them as it does on first load.
"""

import re
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Union

import torch
from safetensors import safe_open

from mergekit_expo.checkpoint import shard_of
from mergekit_expo.errors import ExpoInputError
from mergekit_expo.numerics import extrapolate_tensor

_LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


class ExpoCheckpoint:
    """θ_aligned + α·(θ_aligned − θ_sft) per tensor, by checkpoint name."""

    def __init__(self, sft: str, aligned: str, dtype: Optional[torch.dtype] = None):
        sft_shards, aligned_shards = shard_of(Path(sft)), shard_of(Path(aligned))
        if not aligned_shards or not sft_shards:
            raise ExpoInputError("search reads safetensors checkpoints: convert .bin checkpoints first")
        if set(sft_shards) != set(aligned_shards):
            extra = sorted(set(sft_shards) ^ set(aligned_shards))[0]
            raise ExpoInputError(f"tensor {extra} exists in only one of the two models: "
                                 "use the SFT checkpoint the aligned model was trained from")
        self.dtype = dtype
        files = {}  # open safetensors handles, memory-mapped, kept for all α
        self._sources = {
            name: tuple(files.setdefault(file, safe_open(file, framework="pt"))
                        for file in (sft_shards[name], aligned_shards[name]))
            for name in aligned_shards
        }
        self.groups = _by_layer(sorted(aligned_shards))

    def tensor(self, name: str, alpha: float, device="cpu") -> torch.Tensor:
        sft_file, aligned_file = self._sources[name]
        sft, aligned = sft_file.get_tensor(name), aligned_file.get_tensor(name)
        if not aligned.is_floating_point():
            return aligned  # token ids and other integer buffers are copied, as in the merge
        if self.dtype is not None:  # like mergekit's dtype: inputs convert first
            sft, aligned = sft.to(self.dtype), aligned.to(self.dtype)
        return extrapolate_tensor(sft.to(device), aligned.to(device), alpha, name=name)

    def shape(self, name: str) -> tuple:
        return tuple(self._sources[name][1].get_slice(name).get_shape())

    def rows(self, name: str, rows: List[int], whole: bool = False):
        """(sft, aligned) rows of a tensor (all of it with ``whole``), as the arithmetic reads them."""
        pair = []
        for source in self._sources[name]:
            part = source.get_slice(name)
            tensor = part[:] if whole else torch.cat([part[r:r + 1] for r in rows])
            pair.append(tensor.to(self.dtype) if self.dtype is not None else tensor)
        return tuple(pair)

    def layers(self, alphas: Union[float, Mapping[str, float]],
               device="cpu") -> Iterator[Dict[str, torch.Tensor]]:
        """The ExPO tensors of one layer at a time (embeddings and head in a group of their own).

        ``alphas``: one α for every tensor, or each tensor's own (checkpoint name -> α).
        """
        alpha_of = alphas.__getitem__ if isinstance(alphas, Mapping) else (lambda _name: alphas)
        for names in self.groups:
            yield {name: self.tensor(name, alpha_of(name), device) for name in names}


def _by_layer(names: List[str]) -> List[List[str]]:
    groups: Dict[Optional[int], List[str]] = {}
    for name in names:
        match = _LAYER.search(name)
        groups.setdefault(int(match.group(1)) if match else None, []).append(name)
    return [groups[key] for key in sorted(groups, key=lambda k: -1 if k is None else k)]
