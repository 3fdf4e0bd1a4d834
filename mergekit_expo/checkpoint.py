"""Reading tensors from a safetensors checkpoint folder (sharded or not), by name."""

import json
from pathlib import Path
from typing import Dict

import torch
from safetensors import safe_open


def shard_of(folder: Path) -> Dict[str, Path]:
    """Map each tensor name to the safetensors file that holds it."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    mapping = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            mapping.update({name: file for name in handle.keys()})
    return mapping


def read_tensor(file: Path, name: str) -> torch.Tensor:
    with safe_open(file, framework="pt") as handle:
        return handle.get_tensor(name)


def load_all(folder: Path) -> Dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in ``folder`` (for small models and checks)."""
    return {name: read_tensor(file, name) for name, file in shard_of(folder).items()}
