"""Implementations registered by name as ``"module:Class"`` and imported only when one is
used, as lm-eval registers its models: an engine pulls in torch or vLLM, a scorer lm-eval."""

import importlib


def load(target: str):
    """The class ``"package.module:Class"`` names, its module imported now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
