"""Where each of expo_trajectory's parameters is read, so that none is written where mergekit
ignores it.

``alpha`` and ``window`` are one value for the fit: mergekit reads them from the top-level,
a slice's or a module's ``parameters:``, and silently ignores them under a checkpoint.
``step`` is per checkpoint: read under each model's ``parameters:``, never for base_model.
"""

from typing import Iterator, Optional, Tuple

SHARED = ("alpha", "window")
PER_CHECKPOINT = ("step",)


def misplaced_parameter(data: dict) -> Optional[str]:
    """The one line saying which parameter is written where it would be ignored, or None."""
    base = data.get("base_model")
    for where, parameters, model in parameter_blocks(data):
        for key in parameters:
            if model is not None and key in SHARED:
                return (f"{key} (in {where}) is one value for the whole fit, and mergekit ignores it under a "
                        f"model: write it under the top-level parameters: (or a slice's)")
            if model is None and key in PER_CHECKPOINT:
                return (f"step (in {where}) belongs to one checkpoint: write it under that checkpoint's "
                        "parameters:")
            if key == "step" and model == base:
                return (f"step (in {where}) is given for base_model {base}, which is step 0 of the fit by "
                        "definition: remove it")
            if key == "step" and not _one_number(parameters[key]):
                return (f"step (in {where}) must be one number, the checkpoint's training step, got "
                        f"{parameters[key]!r}")
    return None


def _one_number(value) -> bool:
    return value is None or (isinstance(value, (int, float, str)) and not isinstance(value, bool))


def parameter_blocks(node, where: str = "") -> Iterator[Tuple[str, dict, Optional[str]]]:
    """(location, parameters mapping, the model it belongs to or None) for every ``parameters:``."""
    if isinstance(node, dict):
        owner = node.get("model") if isinstance(node.get("model"), str) else None
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "parameters" and isinstance(value, dict):
                yield here, value, owner
            else:
                yield from parameter_blocks(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from parameter_blocks(value, f"{where}[{index}]")

