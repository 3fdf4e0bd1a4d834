"""mergekit's internals (mergekit as in :data:`mergekit_expo.hosts.SUPPORTED`): the planner run
without merging needs the merged model's config, which ``run_merge`` builds with a private
function; re-creating mergekit's card offline needs its Hub look-up answered; mergekit 0.1.4
and mergekitty 0.3 have no call that registers a method, only their registry's dict."""

import contextlib


def model_out_config(merge_config, arch_info, *, trust_remote_code: bool = False):
    """The config ``run_merge`` gives the merged model of ``merge_config``."""
    from mergekit.merge import _model_out_config

    return _model_out_config(merge_config, arch_info, trust_remote_code=trust_remote_code)


def register_method(registry, name: str, method) -> None:
    """Add ``method`` under ``name`` to a 0.1.4-style host's ``REGISTERED_MERGE_METHODS`` unless there."""
    registry.REGISTERED_MERGE_METHODS.setdefault(name, method)


def registered_methods(registry) -> dict:
    """name -> method of a 0.1.4-style host's registry."""
    return registry.REGISTERED_MERGE_METHODS


@contextlib.contextmanager
def card_generator(hub_ids):
    """``mergekit.card.generate_card`` with its Hub look-up (``is_hf``) answered by ``hub_ids``:
    what mergekit found on the Hub when it wrote a card, not what the Hub says now."""
    import mergekit.card as mergekit_card

    asked = mergekit_card.is_hf
    mergekit_card.is_hf = set(hub_ids).__contains__
    try:
        yield mergekit_card.generate_card
    finally:
        mergekit_card.is_hf = asked
