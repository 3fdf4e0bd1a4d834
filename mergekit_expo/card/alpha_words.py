"""α in words, as mergekit's own planner resolves the config per tensor.

The card embeds the exact YAML; these lines say what it comes to: which tensors take
which α, read from the planned merge (gradients, filters, slices and precedence are
mergekit's, never our reading of its rules). A layer's tensors are named once for all
layers, and a run of layers by its ends.
"""

import logging
import math
import os
import re
from collections import defaultdict
from typing import Dict, List, Optional

LOG = logging.getLogger("mergekit_expo")
LAYER = re.compile(r"^(?P<stack>.*?)\.(?P<index>\d+)\.(?P<part>.+)$")  # the first number: the layer
AS_CONFIGURED = ("as configured below (not resolved per tensor: mergekit could not read the input "
                 "models where this card was written)")


def alpha_in_words(data: dict, *, zero: str = "the aligned model's values") -> List[str]:
    """One line per group of tensors with the same α, for an expo or expo_trajectory config (the
    YAML mapping: Hub ids are planned from the local cache); one line when every tensor takes the
    same α. ``zero``: what α = 0 gives."""
    from mergekit_expo.errors import first_line
    from mergekit_expo.merge_config import cached_references
    from mergekit_expo.search.space import planned_tensor_alphas

    try:
        planned = planned_tensor_alphas(cached_references(data))
    except Exception as error:  # noqa: BLE001 - an input not readable here only costs these words
        unreadable = _unreadable(data)
        if unreadable:
            LOG.warning("α is described as configured, not per tensor: mergekit cannot read %s; make %s "
                        "readable here (restore the folder, download the Hub id) and run card again",
                        ", ".join(unreadable), "them" if len(unreadable) > 1 else "it")
        else:
            LOG.warning("α is described as configured, not per tensor: mergekit could not plan the merge "
                        "here (%s)", first_line(error))
        return [AS_CONFIGURED]
    return describe(planned, zero=zero)


def _unreadable(data: dict) -> List[str]:
    """The models and LoRAs of ``data`` that are no folder here nor a cached Hub id, as written and
    with why: naming them says what to fix, where the planner's error (the Hub unreachable) does not."""
    from mergekit.config import MergeConfiguration

    from mergekit_expo.hub import cached_snapshot, is_hub_id

    try:
        config = MergeConfiguration.model_validate(data)
    except Exception:  # noqa: BLE001 - then the planner's own error says what is wrong
        return []
    found = set()
    for model in config.referenced_models():
        for part in filter(None, (model.model, model.lora)):
            written = part.path if part.revision is None else f"{part.path}@{part.revision}"
            if os.path.isdir(part.path):
                continue
            if not is_hub_id(part.path):
                found.add(f"{written} (no such folder here)")
            elif not cached_snapshot(written):
                found.add(f"{written} (a Hub id the Hugging Face cache does not hold)")
    return sorted(found)


def describe(planned: Dict[str, Optional[float]], *, zero: str) -> List[str]:
    """``planned``: tensor name -> α (None: copied from the SFT model), in plan order; ``zero``:
    what α = 0 gives."""
    if len(set(planned.values())) == 1:
        return [_value(next(iter(planned.values())), zero)]
    words = {}  # label -> its α in words; a layer part is labelled once for every layer
    by_part = defaultdict(dict)
    for name, alpha in planned.items():
        match = LAYER.match(name)
        if match:
            by_part[match["stack"], match["part"]][int(match["index"])] = alpha
        else:
            words[(None, name)] = _value(alpha, zero)
    for key, by_layer in by_part.items():
        words[key] = _over_layers(by_layer, zero)
    groups = defaultdict(list)
    for key, text in words.items():
        groups[text].append(key)
    size = {text: sum(len(by_part[key]) if key[0] else 1 for key in keys) for text, keys in groups.items()}
    largest = max(groups, key=size.get)  # named last, as "every other tensor" unless it is the layers
    stacks = {stack for stack, _ in by_part}
    lines = [f"{_labels(keys, by_part, stacks)}: {text}" for text, keys in groups.items() if text != largest]
    return lines + [f"{_labels(groups[largest], by_part, stacks, other=True)}: {largest}"]


def _labels(keys, by_part, stacks, *, other: bool = False) -> str:
    parts = [key for key in keys if key[0] is not None]
    named = [name for stack, name in keys if stack is None]
    if other and set(parts) != set(by_part):
        return "every other tensor"
    if set(parts) == set(by_part) and len(stacks) == 1:
        layered = ["every tensor of the layers"]
    else:
        layered = []
        for stack in sorted({stack for stack, _ in parts}):
            names = ", ".join(f"`{_short(part)}`" for s, part in parts if s == stack)
            layered.append(f"{names} in every layer" + (f" of `{stack}`" if len(stacks) > 1 else ""))
    return ", ".join([*(f"`{_short(name)}`" for name in named), *layered])


def _over_layers(by_layer: Dict[int, Optional[float]], zero: str) -> str:
    """One value, or runs of layers: constant, or linear in depth over three layers or more."""
    layers = sorted(by_layer)
    values = [by_layer[i] for i in layers]
    if len(set(values)) == 1:
        return _value(values[0], zero)
    runs, start = [], 0
    while start < len(layers):
        end = start
        while _next_to(layers, end) and values[end + 1] == values[start]:
            end += 1
        if end == start:
            end = _linear_end(layers, values, start)
        runs.append(_run(layers, values, start, end, zero))
        start = end + 1
    return "; ".join(runs)


def _next_to(layers, index) -> bool:
    return index + 1 < len(layers) and layers[index + 1] == layers[index] + 1


def _linear_end(layers, values, start) -> int:
    """The last layer of a linear run from ``start`` (three layers at least), else ``start``."""
    end = start
    while (_next_to(layers, end) and None not in values[start:end + 2]
           and (end == start or math.isclose(values[end + 1] - values[end], values[start + 1] - values[start],
                                             rel_tol=1e-6, abs_tol=1e-9))):
        end += 1
    return end if end - start >= 2 else start


def _run(layers, values, start, end, zero: str) -> str:
    if values[start] == values[end]:
        span = f"layer {layers[start]}" if end == start else f"layers {layers[start]}–{layers[end]}"
        return f"{_value(values[start], zero)} at {span}"
    return (f"from {_number(values[start])} at layer {layers[start]} to {_number(values[end])} at layer "
            f"{layers[end]}, linear in depth")


def _value(alpha: Optional[float], zero: str) -> str:
    if alpha is None:
        return "none: the SFT model's values (no aligned model is an input there)"
    return f"{_number(alpha)} ({zero})" if alpha == 0 else _number(alpha)


def _number(alpha: float) -> str:
    return f"{alpha:g}"


def _short(name: str) -> str:
    return name[:-len(".weight")] if name.endswith(".weight") else name
