"""Reading a mergekit YAML config strictly: a typo is an error, never a different merge.

mergekit (0.1.4, 0.1.5) ignores keys it does not know: ``paramters:`` or ``alhpa:`` merge
with the default α and exit 0. Under ``mergekit-expo run`` every key is checked
against mergekit's own config classes and the merge method's declared parameters,
and the error names the closest valid key.
"""

import difflib
import os
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import yaml
from pydantic import BaseModel, ValidationError

from mergekit_expo import hub
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.hosts import expo_parameter_names, merge_method_names
from mergekit_expo.trajectory.placement import misplaced_parameter, parameter_blocks
from mergekit_expo.trajectory.steps import NAME as TRAJECTORY

DTYPES = ("bfloat16", "float16", "float32", "float64")  # what mergekit's dtype_from_name reads
MODEL_KEYS = ("base_model", "model", "tokenizer_source", "source")  # keys whose value may be a path
OUR_METHODS = ("expo", TRAJECTORY)


def load_merge_config(config_file: str, hub_ids: dict):
    """Return (yaml text, MergeConfiguration), or raise ExpoConfigError in one line.

    Hub ids are resolved to their local snapshot folders (cache first, so offline
    works); ``hub_ids`` receives {snapshot folder: Hub id}.
    """
    from mergekit.config import MergeConfiguration

    path = Path(config_file)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ExpoConfigError(
            f"config file {config_file} {what}: check the path (relative paths start "
            f"from the current folder, {os.getcwd()})"
        )
    source = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(source)  # never yaml.load: configs must not run code
    except yaml.YAMLError as error:
        documents = _documents(source)
        if len(documents) == 1:  # mergekit-yaml refuses it too: said, not taken for a pipeline
            raise ExpoConfigError(f"{config_file} holds one config and an empty YAML document (a stray "
                                  "'---' line): remove the '---'") from None
        if documents:
            raise ExpoConfigError(f"{config_file} holds {len(documents)} YAML documents, a mergekit-multi "
                                  "pipeline: run it with mergekit-multi (its stages may use merge_method: "
                                  "expo), or give mergekit-expo run one stage's config") from None
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ExpoConfigError(f"{config_file} is not valid YAML{where}: fix the syntax") from None
    if not isinstance(data, dict):
        raise ExpoConfigError(f"{config_file} must be a YAML mapping with merge_method: and models:")
    data = _map_model_parts(data, _local_form)
    data = _map_model_parts(data, lambda part: _snapshot_form(part, hub_ids))
    check_merge_method(config_file, data.get("merge_method"))
    for key in ("dtype", "out_dtype"):
        check_dtype(f"{config_file}: {key}", data.get(key))
    check_parameter_values(config_file, data)
    try:
        config = MergeConfiguration.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ExpoConfigError(f"{config_file}: {where}: {first['msg']}") from None
    except RuntimeError as error:  # mergekit's own structural validators
        raise ExpoConfigError(f"{config_file}: {error}") from None
    for mistake in key_mistakes(config_file, data, config):
        raise ExpoConfigError(f"{mistake}: fix it (mergekit would ignore it and merge something else)")
    return source, config


def _documents(source: str) -> list:
    """The YAML documents ``source`` holds, empty ones left out ([] where it does not parse)."""
    try:
        return [document for document in yaml.safe_load_all(source) if document is not None]
    except yaml.YAMLError:
        return []


def key_mistakes(config_file: str, data: dict, config) -> Iterator[str]:
    """Keys mergekit would ignore: unknown ones, and parameters our methods do not take."""
    for where, key, valid in unknown_keys(data, config):
        yield f"{config_file}: unknown key {key!r} in {where}{_closest(key, valid)}"
    try:
        check_parameter_names(config_file, data)
    except ExpoConfigError as error:
        yield str(error)


def check_dtype(what: str, value: Optional[str]) -> None:
    if value is not None and value not in DTYPES:
        raise ExpoConfigError(
            f"{what} {value!r} is not a dtype mergekit reads{_closest(str(value), DTYPES)}: "
            f"use one of {', '.join(DTYPES)}"
        )


def check_merge_method(config_file: str, name) -> None:
    known = merge_method_names("mergekit")
    if name is None:
        raise ExpoConfigError(f"{config_file} has no merge_method: add 'merge_method: expo'")
    if name not in known:
        if str(name).lower() in known:
            hint = f"use {name.lower()!r} (names are lower case)"
        else:
            match = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
            hint = f"did you mean {match[0]!r}?" if match else "known: " + ", ".join(known)
        raise ExpoConfigError(f"{config_file}: merge_method {name!r} is not a mergekit merge method: {hint}")


def check_parameter_names(config_file: str, data: dict) -> None:
    """Every key of every ``parameters:`` mapping is one the merge method declares (and,
    for expo_trajectory, one mergekit reads where it is written)."""
    method = data.get("merge_method")
    if method not in OUR_METHODS:
        return  # other methods: mergekit's business; only our methods' names are ours to enforce
    valid = expo_parameter_names("mergekit", method)
    for where, parameters, _ in parameter_blocks(data):
        for key in parameters:
            if key not in valid:
                raise ExpoConfigError(
                    f"{config_file}: {method} does not take parameter {key!r} (in {where})"
                    f"{_closest(key, valid)}: {method}'s parameters are {', '.join(valid)}"
                )
    if method == TRAJECTORY:
        problem = misplaced_parameter(data)
        if problem:
            raise ExpoConfigError(f"{config_file}: {problem}")


def check_parameter_values(config_file: str, data: dict) -> None:
    """Our methods' parameters have a value: mergekit reads ``alpha: []`` as no α at all (the
    default then merges), and ``alpha: null`` fails in its validator with a line naming its classes."""
    if data.get("merge_method") not in OUR_METHODS:
        return
    for where, parameters, _ in parameter_blocks(data):
        for key, value in parameters.items():
            problem = _missing_value(value)
            if problem:
                raise ExpoConfigError(
                    f"{config_file}: parameter {key!r} (in {where}) {problem}: give a number ({key}: 0.3), "
                    f"a list of numbers for a per-layer gradient ({key}: [0.1, 0.5]) or a list of "
                    f"filters each with a value ({key}: [{{filter: self_attn, value: 0.5}}, {{value: 0.3}}])")


def _missing_value(value) -> Optional[str]:
    if value is None:
        return "has no value"
    if isinstance(value, (list, dict)) and not value:
        return f"is empty ({_shown(value)})"
    entries = value if isinstance(value, list) else [value]
    for entry in entries:
        if entry is None or isinstance(entry, (list, dict)) and not entry:
            return f"has an empty entry ({_shown(value)})"
        if isinstance(entry, dict):  # a filter: its value is a number or a gradient, never empty
            if "value" not in entry or _missing_value(entry["value"]):
                return f"has a filter without a value ({_shown(entry)})"
    return None


def _shown(value) -> str:
    """A value as the YAML config writes it (null, not None)."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip().removesuffix("\n...")


def unknown_keys(data, model, where: str = "the top level") -> Iterator[Tuple[str, str, list]]:
    """(location, key, valid keys) for every key of ``data`` its pydantic model lacks."""
    if isinstance(model, BaseModel) and isinstance(data, dict):
        fields = type(model).model_fields
        names = {field.alias or name: name for name, field in fields.items()}
        for key, value in data.items():
            if key not in names:
                yield where, str(key), sorted(names)
                continue
            inner = key if where == "the top level" else f"{where}.{key}"
            yield from unknown_keys(value, getattr(model, names[key]), inner)
    elif isinstance(data, list) and isinstance(model, (list, tuple)):
        for index, (item, value) in enumerate(zip(data, model)):
            yield from unknown_keys(item, value, f"{where}[{index}]")
    elif isinstance(data, dict) and isinstance(model, dict):
        for key, value in data.items():
            if key in model and key != "parameters":
                yield from unknown_keys(value, model[key], f"{where}.{key}")


def cached_references(data: dict) -> dict:
    """A config mapping whose Hub ids are their snapshot folders where the local cache has
    them, and local folders ./x/y: what mergekit can plan without the network."""
    cached = _map_model_parts(data, _local_form)
    return _map_model_parts(cached, lambda part: hub.is_hub_id(part) and hub.cached_snapshot(part) or part)


def _map_model_parts(node, transform):
    """Apply ``transform`` to every model named by a string (base_model:, model:, …), and to
    each part of ``model+lora`` on its own."""
    if isinstance(node, dict):
        return {
            key: "+".join(map(transform, value.split("+"))) if key in MODEL_KEYS and isinstance(value, str)
            else _map_model_parts(value, transform)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_map_model_parts(value, transform) for value in node]
    return node


def _snapshot_form(part: str, found: dict) -> str:
    if not hub.is_hub_id(part):
        return part
    folder = hub.resolve(part, "model")
    found[folder] = part
    return folder


def _local_form(part: str) -> str:
    # mergekit's model card asks the Hub about any path with exactly one "/", which
    # fails offline after the whole merge has been computed: name local folders ./x/y.
    local = part.count("/") == 1 and not part.startswith((".", "/", "~")) and os.path.isdir(part)
    return f"./{part}" if local else part


def reads_of(config, config_file: str) -> List[Tuple[str, str]]:
    """(role, path) for every path a merge of ``config`` reads."""
    reads = [("the config file", config_file)]
    # referenced_models() is a set: sort it (base first) so the message names the same input every run
    models = sorted(config.referenced_models(), key=lambda m: (m != config.base_model, str(m)))
    for model in models:
        role = "the base model" if model == config.base_model else "the input model"
        reads.append((role, model.model.path))
        if model.lora is not None:
            reads.append(("the LoRA adapter", model.lora.path))
    tokenizer_source = config.tokenizer.source if config.tokenizer else config.tokenizer_source
    path = getattr(getattr(tokenizer_source, "model", None), "path", None)
    if path:
        reads.append(("the tokenizer source", path))
    return reads


def _closest(key: str, valid) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""
