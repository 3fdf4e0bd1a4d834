"""Batches: a batched function run over many items (halved on out-of-memory), and padding.

Items are processed longest first (similar lengths share a batch, so little padding;
an out-of-memory shows up in the first batch), and results come back in input order.
"""

import gc
from typing import Callable, List, Optional, Sequence, TypeVar

import torch
from accelerate.utils.memory import should_reduce_batch_size  # accelerate: mergekit's own dependency

from mergekit_expo.errors import ExpoInputError

Item = TypeVar("Item")
Result = TypeVar("Result")

# Where no --batch-size is given: large on a GPU (halved on out-of-memory), modest on CPU.
CPU_BATCH = 8
GPU_MAX_BATCH = 64


class Batcher:
    """Remembers a batch size that fits, across calls (one per search)."""

    def __init__(self, batch_size: Optional[int], device: str):
        self.size = batch_size or (GPU_MAX_BATCH if str(device).startswith("cuda") else CPU_BATCH)

    def run(self, items: Sequence[Item], fn: Callable[[List[Item]], List[Result]],
            length: Callable[[Item], int] = len, progress: Callable = None) -> List[Result]:
        order = sorted(range(len(items)), key=lambda i: -length(items[i]))
        results: List[Optional[Result]] = [None] * len(items)
        start = 0
        bar = progress(total=len(items)) if progress else None
        while start < len(order):
            chunk = order[start : start + self.size]
            try:
                outputs = fn([items[i] for i in chunk])
            except Exception as error:  # noqa: BLE001 - only out-of-memory is retried
                if not should_reduce_batch_size(error):
                    raise
                self._shrink(error, len(chunk))
                continue
            for index, output in zip(chunk, outputs):
                results[index] = output
            start += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return results

    def _shrink(self, error: Exception, failed: int) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if failed == 1:
            raise ExpoInputError(
                "out of memory with batch size 1: lower --max-new-tokens or --max-model-len, "
                "use --dtype bfloat16, or a device with more memory"
            ) from error
        self.size = failed // 2  # half of what failed, not of a size larger than the data


def padded(sequences: Sequence[List[int]], pad: int, *, left: bool = False):
    """(input ids, attention mask) of ``sequences`` padded with ``pad`` to the longest one: on
    the right, or on the ``left`` (for generation: every sequence ends where answers start)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        span = slice(width - len(sequence), width) if left else slice(0, len(sequence))
        ids[row, span] = torch.tensor(sequence)
        mask[row, span] = 1
    return ids, mask
