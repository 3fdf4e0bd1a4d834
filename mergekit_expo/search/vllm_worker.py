"""Runs inside each vLLM worker process: sets the ExPO weights of an α in place.

vLLM's supported way to change a running engine's weights is to hand its own loader
checkpoint-named tensors (``reload_weights``): the loader renames, fuses, shards
(tensor parallelism) and repacks them as on first load. Each worker computes the
ExPO tensors itself from the memory-mapped checkpoints (the SFT and aligned models, or a
run's checkpoints), so no weights travel between processes. Kept free of vLLM imports:
vLLM imports it in its workers.
"""

import itertools
import json
import time

import torch

from mergekit_expo.compat.vllm import reload_weights, worker_parameters
from mergekit_expo.search.expo_weights import open_weights


class ExpoWorkerExtension:
    """Mixed into vLLM's worker class through ``LLM(worker_extension_cls=...)``."""

    def expo_set_alpha(self, source: dict, alpha, dtype=None) -> float:
        """``source``: the SFT model and the aligned model, or a run's checkpoints with their
        steps and window (:func:`~mergekit_expo.search.expo_weights.open_weights`'s arguments);
        ``alpha``: one α for every tensor, or a dict of checkpoint name -> α."""
        start = time.perf_counter()
        key = (json.dumps(source, sort_keys=True), dtype)
        if getattr(self, "_expo_key", None) != key:  # open the files once per engine
            self._expo_checkpoint = open_weights(**source, dtype=getattr(torch, dtype) if dtype else None)
            self._expo_key = key
        layers = self._expo_checkpoint.layers(alpha)  # computed one at a time, as the loader takes them
        reload_weights(self, itertools.chain.from_iterable(layer.items() for layer in layers))
        return time.perf_counter() - start

    # -- read-back for the engine's self-check (mergekit_expo.search.self_check) --------
    def expo_held(self) -> dict:
        """name -> (shape, dtype name) of every parameter this worker holds."""
        return {name: (list(p.shape), str(p.dtype).removeprefix("torch."))
                for name, p in worker_parameters(self).items()}

    def expo_read(self, requests: dict) -> dict:
        """name -> the values at the given flat positions, as floats (exact for every float dtype)."""
        held = worker_parameters(self)
        return {name: held[name].detach().reshape(-1)[positions].double().cpu().tolist()
                for name, positions in requests.items()}
