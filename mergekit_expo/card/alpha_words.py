"""α as configured, in words: what a model card says about the extrapolation strength.

Any value mergekit accepts for a parameter is described: a number, a gradient over
depth (``[0.1, 0.5]``), a filter list (``- filter: mlp`` / ``value: …``), per-slice and
per-module settings, in mergekit's order of precedence (input model, slice, module,
top level, then the method's default). A filter list that matches no tensor falls
through to the next level, as mergekit's parameter resolver does.
"""

from typing import List, Optional, Sequence, Tuple

from mergekit_expo.alpha import DEFAULT_ALPHA

NAME = "alpha"
LAYERS = ("the first layer", "the last")
SLICE_LAYERS = ("the slice's first layer", "its last")
OUTSIDE_THE_STACK = ("Tensors outside the layer stack (embeddings, final norm, output head) take a "
                     "gradient's first value.")


def alpha_in_words(config) -> List[str]:
    """One line per part of the model with its own α setting, then notes; for a
    ``MergeConfiguration`` whose ``base_model`` is the SFT model."""
    words = _Words()
    if config.modules:
        lines = [f"module `{name}`: {line}" for name, module in config.modules.items()
                 for line in _levels_of(words, config, module, (module.parameters, config.parameters))]
    else:
        lines = _levels_of(words, config, config, (config.parameters,))
    return lines + words.notes()


def _levels_of(words, config, holder, outer: Tuple) -> List[str]:
    base = config.base_model
    if holder.slices:
        lines = []
        for output_slice in holder.slices:
            aligned = [s for s in output_slice.sources if s.model != (output_slice.base_model or base)]
            if not aligned:
                continue
            start, end = aligned[0].layer_range
            span = f"layer {start}" if end - start == 1 else f"layers {start}–{end - 1}"
            chain = (aligned[0].parameters, output_slice.parameters, *outer)
            lines.append(f"{span} of the aligned model: "
                         + words.chain(chain, within=SLICE_LAYERS, single_layer=end - start == 1))
        return lines
    models = [m for m in (holder.models or []) if m.model != base]
    if not models:
        return [words.chain(outer, within=LAYERS)]
    return [words.chain((m.parameters, *outer), within=LAYERS) for m in models[:1]]


class _Words:
    def __init__(self):
        self.gradient = False
        self.single_layer = False

    def notes(self) -> List[str]:
        notes = [OUTSIDE_THE_STACK] if self.gradient else []
        if self.single_layer:
            notes.append("A one-layer slice takes a gradient's last value (mergekit places it at the end).")
        return notes

    def chain(self, levels: Sequence[Optional[dict]], *, within: Tuple[str, str],
              single_layer: bool = False) -> str:
        """The first level that sets α, and what its filter list falls through to."""
        settings = [level[NAME] for level in levels if level and NAME in level]
        if single_layer:
            self.single_layer = self.single_layer or any(_has_gradient(s) for s in settings)
        if not settings:
            return f"{DEFAULT_ALPHA:g} (the default)"
        if _conditions(settings[0]) is None:
            return self.value(settings[0], within=within)  # the common case: one number or gradient
        parts = []
        for setting in settings:
            parts.append(self.setting(setting, within=within, other=bool(parts)))
            if not _may_fall_through(setting):
                return "; ".join(parts)
        parts.append(f"{DEFAULT_ALPHA:g} (the default) for every {'other ' if parts else ''}tensor")
        return "; ".join(parts)

    def setting(self, setting, *, within: Tuple[str, str], other: bool = False) -> str:
        conditions = _conditions(setting)
        if conditions is None:
            return f"{self.value(setting, within=within)} for every {'other ' if other else ''}tensor"
        parts, filters = [], []  # consecutive filters with one value are named together
        for index, condition in enumerate(conditions):
            value = self.value(condition.value, within=within)
            if condition.filter in (None, "*"):
                parts.append(f"{value} for every {'other ' if parts or other else ''}tensor")
                break  # mergekit takes the first match: later entries never apply
            filters.append(f"`{condition.filter}`")
            following = conditions[index + 1] if index + 1 < len(conditions) else None
            if following is None or following.filter in (None, "*") or following.value != condition.value:
                names = filters[0] if len(filters) == 1 else f"{', '.join(filters[:-1])} or {filters[-1]}"
                parts.append(f"{value} for tensors whose name contains {names}")
                filters = []
        return "; ".join(parts)

    def value(self, value, *, within: Tuple[str, str]) -> str:
        if isinstance(value, list):
            values = [_number(v) for v in value]
            if len(set(values)) == 1:
                return _with_meaning(values[0])
            self.gradient = True
            first, last = within
            if len(values) == 2:
                return f"from {values[0]} at {first} to {values[1]} at {last} (linear in depth)"
            return (f"{', '.join(values)} spread evenly over depth ({values[0]} at {first}, "
                    f"{values[-1]} at {last}, linear in between)")
        return _with_meaning(_number(value))


def _conditions(setting):
    """The ConditionalParameter entries of a filter list, or None for a number/gradient."""
    items = setting if isinstance(setting, list) else [setting]
    if items and all(hasattr(item, "value") and hasattr(item, "filter") for item in items):
        return items
    return None


def _may_fall_through(setting) -> bool:
    conditions = _conditions(setting)
    return conditions is not None and all(c.filter not in (None, "*") for c in conditions)


def _has_gradient(setting) -> bool:
    conditions = _conditions(setting)
    values = [c.value for c in conditions] if conditions is not None else [setting]
    return any(isinstance(v, list) and len({_number(x) for x in v}) > 1 for v in values)


def _number(value) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def _with_meaning(value: str) -> str:
    return f"{value} (the aligned model's values)" if value in ("0", "-0") else value
