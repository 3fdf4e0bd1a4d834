"""transformers' checkpoint conversion, as the search loads ExPO tensors through it: the
one ``from_pretrained`` uses (it renames and fuses Mixtral's and Qwen-MoE's experts, for
one), kept in internal modules; :func:`check_transformers_loader` checks it (5.16 on).
And its notes to other libraries' authors, kept out of our commands' output.
"""

import contextlib
import inspect
import logging
import sys
import warnings
from typing import Callable, Dict, List, Set, Tuple

from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.hosts import installed_hosts


def check_transformers_loader() -> None:
    """Refuse, before anything is read, a loader :func:`checkpoint_loader` cannot call (5.16's)."""
    import transformers

    try:
        from transformers.core_model_loading import convert_and_load_state_dict_in_model
        from transformers.modeling_utils import LoadStateDictConfig  # noqa: F401

        takes = list(inspect.signature(convert_and_load_state_dict_in_model).parameters)
    except ImportError:
        takes = []
    if takes[:3] == ["model", "state_dict", "load_config"] and "tp_plan" not in takes:
        return
    pinned = ", ".join(installed_hosts())
    raise ExpoConfigError(
        f"the transformers engine loads ExPO weights through transformers' checkpoint loader "
        f"as of transformers 5.16; this environment has transformers {transformers.__version__}"
        f"{f' (beside {pinned})' if pinned else ''}: run the search where transformers>=5.16 "
        "is installed (a venv with mergekit-expo[mergekit,search], for example), then merge "
        "its best.yml with your host's CLI"
    )


def checkpoint_loader(model, device) -> Callable[[Dict], Tuple[Set[str], List[str]]]:
    """``load(tensors)``: checkpoint-named tensors into ``model`` in place, converted as on
    first load; returns the model's keys it did not set, and what went wrong."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import convert_and_load_state_dict_in_model
    from transformers.modeling_utils import LoadStateDictConfig

    mapping = get_model_conversion_mapping(model)

    def load(tensors: Dict) -> Tuple[Set[str], List[str]]:
        config = LoadStateDictConfig(device_map={"": device}, dtype=model.dtype, weight_mapping=mapping)
        info, _ = convert_and_load_state_dict_in_model(model, tensors, config)
        problems = sorted(info.unexpected_keys | info.mismatched_keys) + list(info.conversion_errors)
        return set(info.missing_keys), problems or list(info.error_msgs)

    return load


def is_tied(model, name: str) -> bool:
    """Whether ``name`` is a weight ``model`` ties to another (set when that one is)."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    if isinstance(tied, dict):  # transformers 5: {target: source}
        return name in tied
    return any(name.endswith(key) for key in tied)


def checkpoint_renamer(model_type) -> Callable[[str], str]:
    """Checkpoint tensor name -> the name ``model_type``'s class loads it under."""
    transforms = []
    if model_type:
        try:
            from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        except ImportError:  # a transformers without conversions: names are the layout
            pass
        else:
            transforms = get_checkpoint_conversion_mapping(model_type) or []

    def rename(name: str) -> str:
        for transform in transforms:
            renamed, pattern = transform.rename_source_key(name)
            if pattern is not None:
                name = renamed
        return name

    return rename


class _DeprecationNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecated" not in record.getMessage()


@contextlib.contextmanager
def deprecation_notes_hidden(hidden: bool = True):
    """transformers' notes that code calling it uses a deprecated name ("`torch_dtype` is
    deprecated! Use `dtype` instead!", which mergekit's merge and planner set) are for that
    code's authors, not for whoever runs a command: dropped inside the block, unless
    ``hidden`` is False (-v shows everything). transformers prints them through the
    handler of its library logger (and the root logger's, where it propagates)."""
    if not hidden:
        yield
        return
    from transformers.utils import logging as transformers_logging

    transformers_logging.get_logger("transformers")  # its handler exists from here on
    handlers = [*logging.getLogger("transformers").handlers, *logging.getLogger().handlers]
    notes = _DeprecationNotes()
    for handler in handlers:
        handler.addFilter(notes)
    if not sys.stderr.isatty():  # its bars (loading an adapter, say) flood a log
        transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # the same notes given as FutureWarning
            warnings.filterwarnings("ignore", message=".*deprecated", category=FutureWarning)
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(notes)
