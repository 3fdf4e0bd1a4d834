"""Make every installed merge host know ``expo`` without anyone importing this package.

The ``mergekit_expo.pth`` start-up hook calls :func:`install`, which only appends
a finder to ``sys.meta_path`` (no torch, no host, no output). When any process
later imports a host's method registry (mergekit's or mergekitty's), the finder lets
the registry load as usual and then declares ``expo`` in it, through the adapter for
the API that registry speaks (:mod:`mergekit_expo.hosts`). If that fails, the reason is
said once, naming the missing piece. Safe to call any number of times.
"""

import importlib.machinery
import sys

# A host's method registry module -> the host's distribution name.
WATCHED = {
    "mergekit.merge_methods.registry": "mergekit",
    "mergekitty.merge_methods.registry": "mergekitty",
}


def install() -> None:
    """Register now in every host already loaded, else when its registry loads."""
    if not any(isinstance(finder, _RegistryWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegistryWatcher())
    register_if_loaded()


def register_if_loaded() -> None:
    for name, host in WATCHED.items():
        registry = sys.modules.get(name)
        if registry is None:
            continue
        from mergekit_expo import hosts

        if hosts.is_ready(registry):
            hosts.register(host, registry)


class _RegistryWatcher:
    """A meta-path finder that only ever wraps the loader of a host's registry."""

    def find_spec(self, fullname, path, target=None):
        host = WATCHED.get(fullname)
        if host is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisteringLoader(spec.loader, host)
        return spec


class _RegisteringLoader:
    def __init__(self, loader, host: str):
        self._loader = loader
        self._host = host

    def exec_module(self, module):
        self._loader.exec_module(module)
        from mergekit_expo import hosts

        hosts.register(self._host, module)

    def __getattr__(self, name):
        # create_module, get_source, get_filename, ...: the wrapped loader's own, so imports,
        # tracebacks and inspect keep working.
        return getattr(self._loader, name)
