"""Make mergekit know ``expo`` without anyone importing this package.

The ``mergekit_expo.pth`` start-up hook calls :func:`install`, which only appends
a finder to ``sys.meta_path`` (no torch, no mergekit, no output). When any process
later imports mergekit's method registry, the finder lets the registry load as
usual and then registers ``expo`` in it. Safe to call any number of times.
"""

import importlib.machinery
import sys

_REGISTRY = "mergekit.merge_methods.registry"


def install() -> None:
    """Register now if mergekit is already loaded, else when its registry loads."""
    if not any(isinstance(finder, _RegistryWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegistryWatcher())
    register_if_loaded()


def register_if_loaded() -> None:
    registry = sys.modules.get(_REGISTRY)
    if registry is not None and hasattr(registry, "registered_methods"):
        _register(registry)


def _register(registry) -> None:
    try:
        from mergekit_expo.method import expo_merge_method
    except ImportError:
        # mergekit_expo.method is itself mid-import (it imported mergekit first);
        # it registers at its end through register_if_loaded().
        return
    if not any(m.spec.name == "expo" for m in registry.registered_methods()):
        registry.register(expo_merge_method)


class _RegistryWatcher:
    """A meta-path finder that only ever wraps the loader of mergekit's registry."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _REGISTRY:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader:
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register(module)

    def __getattr__(self, name):
        # get_source, get_filename, ...: tracebacks and inspect keep working.
        return getattr(self._loader, name)
