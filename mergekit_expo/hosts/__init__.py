"""The merge programs ``expo`` plugs into, and which of their method APIs each speaks.

Each gets ``expo`` and ``expo_trajectory`` (:mod:`mergekit_expo.trajectory`):

- mergekit 0.1.5 (and later 0.1.x keeping its API): method specs, ``registry.register()``,
  ``TensorGroup`` kernels; declared in :mod:`mergekit_expo.method` and
  :mod:`mergekit_expo.trajectory.method`.
- mergekit 0.1.4: ``MergeMethod``/``Task`` classes and a ``REGISTERED_MERGE_METHODS``
  dict; and mergekitty 0.3 (allura-org's fork of mergekit 0.1.4), the same API under
  ``mergekitty.*``: both declared in :mod:`.task_host`.

The API is recognised from the registry module itself, not from version numbers, so a
release that keeps an API keeps working. Importing this package imports no host.
"""

import importlib
import importlib.util
import logging
import re
import sys
from importlib import metadata
from typing import Dict, List, Optional, Tuple

from mergekit_expo.compat.mergekit import registered_methods
from mergekit_expo.contract import NAME
from mergekit_expo.errors import ExpoConfigError, first_line

LOG = logging.getLogger("mergekit_expo")

# The ranges the test suite runs (pyproject's extras say the same).
SUPPORTED = {"mergekit": ">=0.1.4,<0.2", "mergekitty": ">=0.3,<0.4"}
REGISTRY = {"mergekit": "mergekit.merge_methods.registry",
            "mergekitty": "mergekitty.merge_methods.registry"}

# Why expo could not be declared in a host this process imported: {host: message}.
problems: Dict[str, str] = {}
_report_as_warning = True


def adapter_modules(host: str, registry) -> Optional[List[str]]:
    """Our modules that declare expo's methods in the API ``registry`` speaks (None: unknown API)."""
    if host == "mergekit" and hasattr(registry, "register") and hasattr(registry, "registered_methods"):
        return ["mergekit_expo.method", "mergekit_expo.trajectory.method"]
    if hasattr(registry, "REGISTERED_MERGE_METHODS"):
        return ["mergekit_expo.hosts.task_host"]
    return None


def is_ready(registry) -> bool:
    """True once the registry module has defined what ``adapter_modules`` looks for."""
    return hasattr(registry, "registered_methods") or hasattr(registry, "REGISTERED_MERGE_METHODS")


def register(host: str, registry) -> None:
    """Declare expo's methods in ``registry``, a host's method registry; on failure, record why."""
    names = adapter_modules(host, registry)
    if names is None:
        report(host, f"{registry.__name__} has neither register() (mergekit 0.1.5's API) nor "
                     "REGISTERED_MERGE_METHODS (mergekit 0.1.4's)")
        return
    for name in names:
        module = sys.modules.get(name)
        if module is not None and not hasattr(module, "register"):
            continue  # mid-import: it imported the host first, and registers at its own end
        try:
            module = importlib.import_module(name)
            module.register(registry)
        except Exception as error:  # any API change: say which piece is missing, once
            report(host, without_path(first_line(error)))
            return


def report(host: str, detail: str) -> None:
    if host not in problems:
        problems[host] = unsupported(host, detail)
        if _report_as_warning:
            LOG.warning("mergekit-expo: %s", problems[host])


def unsupported(host: str, detail: str) -> str:
    """One line: which host version lacks what, the supported ranges, and what to install."""
    version = installed_version(host)
    ranges = " and ".join(f"{name}{spec}" for name, spec in SUPPORTED.items())
    return (
        f"expo is not available in {host} {version} ({detail}): mergekit-expo supports "
        f"{ranges}; install one of those (pip install '{host}{SUPPORTED[host]}') or a "
        f"mergekit-expo release that supports {host} {version}"
    )


def report_as_errors() -> None:
    """mergekit-expo's own commands turn a recorded problem into their error line instead."""
    global _report_as_warning
    _report_as_warning = False


def installed_version(host: str) -> Optional[str]:
    try:
        return metadata.version(host)
    except metadata.PackageNotFoundError:
        return None


def installed_hosts() -> List[str]:
    """``["mergekit 0.1.4", ...]``: the hosts this environment has, with their versions."""
    return [f"{host} {installed_version(host)}" for host in SUPPORTED if is_installed(host)]


def is_installed(host: str) -> bool:
    return importlib.util.find_spec(host) is not None


def registry_of(host: str):
    """Import ``host``'s method registry (which declares expo in it) and return it."""
    registry = importlib.import_module(REGISTRY[host])
    if host in problems:
        raise ExpoConfigError(problems[host])
    return registry


def merge_method_names(host: str = "mergekit") -> List[str]:
    """The names ``merge_method:`` accepts in ``host``."""
    registry = registry_of(host)
    if hasattr(registry, "registered_methods"):
        return sorted(m.spec.name for m in registry.registered_methods() if hasattr(m, "spec"))
    return sorted(registered_methods(registry))


def method_reference(name: str) -> Optional[Tuple[str, Optional[str]]]:
    """(pretty name, paper URL) of mergekit's merge method ``name``; None where it has none.
    Methods declared by a spec (0.1.5's, ours) carry them there; 0.1.4's built-in methods
    answer ``pretty_name()`` and ``reference_url()``."""
    from mergekit import merge_methods

    try:
        method = merge_methods.get(name)
    except RuntimeError:
        return None
    spec = getattr(method, "spec", None)
    if spec is not None:
        return spec.pretty_name or spec.name, spec.reference_url
    return method.pretty_name() or method.name(), method.reference_url()


def expo_parameter_names(host: str = "mergekit", method_name: str = NAME) -> List[str]:
    """The parameters ``expo`` (or another of our methods, ``method_name``) declares in ``host``
    (expo: ``alpha``)."""
    registry = registry_of(host)
    if hasattr(registry, "registered_methods"):
        spec = registry.get(method_name).spec
        return [p.name for p in (*spec.shared_parameters, *spec.input_parameters)]
    method = registered_methods(registry)[method_name]
    return [p.name for p in (*method.parameters(), *method.tensor_parameters())]


def require_mergekit(what: str, *, minimum: str = "0.1.4") -> None:
    """Raise ExpoConfigError in one line unless mergekit itself (not a fork) is installed.

    ``what`` names the command or option that needs it, e.g. ``"mergekit-expo run"``.
    """
    if is_installed("mergekit"):
        return
    need = f"mergekit>={minimum},<0.2"
    if is_installed("mergekitty"):
        raise ExpoConfigError(
            f"{what} needs mergekit, and this environment has mergekitty "
            f"{installed_version('mergekitty')} only: merge with mergekitty-yaml or "
            f"mergekitty-mega (merge_method: expo works there), or pip install '{need}' beside it"
        )
    raise ExpoConfigError(f"{what} needs mergekit, which is not installed: pip install '{need}'")


def require_state_dicts_api() -> None:
    """Raise ExpoConfigError unless mergekit has ``merge_state_dicts`` (0.1.5 on)."""
    what = "mergekit_expo.extrapolate()"
    require_mergekit(what, minimum="0.1.5")
    try:
        from mergekit.merge_methods import merge_state_dicts  # noqa: F401
    except ImportError:
        raise ExpoConfigError(
            f"{what} needs mergekit's merge_state_dicts, new in mergekit 0.1.5, and this "
            f"environment has mergekit {installed_version('mergekit')}: pip install "
            "'mergekit>=0.1.5,<0.2', or merge checkpoints with mergekit-yaml and "
            "merge_method: expo"
        ) from None


def without_path(text: str) -> str:
    # ImportError names the module file in parentheses; the module name is enough.
    return re.sub(r" \((/|[A-Za-z]:\\)[^)]*\)$", "", text)
