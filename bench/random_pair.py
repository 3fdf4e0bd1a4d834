"""Large synthetic SFT/aligned pairs for the benchmarks, written fast, shard by shard."""

import json
import math
import os
from typing import Tuple

import torch

from mergekit_expo.synthetic import PairSpec, model_config


def write_random_pair(root: str, spec: PairSpec, vocab_size: int,
                      shard_bytes: int = 2_000_000_000) -> Tuple[str, str]:
    """Write a large pair fast: random tensors streamed shard by shard, no model in memory.

    Shapes come from the transformers model built on the meta device; the folders
    look like Hub checkpoints (config.json, model-0000k-of-0000n.safetensors, index).
    """
    import transformers
    from safetensors.torch import save_file

    config = model_config(spec, vocab_size)
    config.dtype = str(spec.dtype).removeprefix("torch.")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    config.architectures = [type(model).__name__]
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    del model
    shards, current, size = [], [], 0
    for name, shape in shapes.items():
        current.append(name)
        size += math.prod(shape) * spec.dtype.itemsize
        if size >= shard_bytes:
            shards.append(current)
            current, size = [], 0
    if current:
        shards.append(current)

    generator = torch.Generator().manual_seed(spec.seed)
    folders = [os.path.join(os.path.abspath(root), n) for n in ("sft", "aligned")]
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
        config.save_pretrained(folder)
    weight_map = {}
    for index, names in enumerate(shards, start=1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        sft, aligned = {}, {}
        for name in names:
            base = torch.randn(shapes[name], generator=generator) * 0.02
            if name.endswith("norm.weight"):
                base = 1 + 5 * base
            noise = torch.randn(shapes[name], generator=generator) * (spec.delta_scale * float(base.std()))
            sft[name], aligned[name] = base.to(spec.dtype), (base + noise).to(spec.dtype)
            weight_map[name] = file
            del base, noise
        for folder, tensors in zip(folders, (sft, aligned)):
            save_file(tensors, os.path.join(folder, file), metadata={"format": "pt"})
        del sft, aligned
    total = sum(math.prod(s) for s in shapes.values()) * spec.dtype.itemsize
    for folder in folders:
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as handle:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle, indent=2)
    return folders[0], folders[1]
