"""vLLM, as the vLLM engine uses it (vLLM 0.32, :data:`TESTED` in
:data:`mergekit_expo.search.registry.ENGINES`): what it offers no public API for.

- Weights are set through the worker's ``reload_weights`` with an iterator of
  checkpoint-named tensors (as TRL's weight sync does), and read back for the self-check
  from the worker's model (``model_runner.get_model()``): both are worker internals, so every
  α is checked after loading (:mod:`mergekit_expo.search.self_check`).
- The context length and the engine's shutdown are reached through ``LLM.llm_engine``.
Kept free of vLLM imports: vLLM imports the worker extension in its workers.
"""


def reload_weights(worker, tensors) -> None:
    """Load checkpoint-named ``tensors`` into a running worker (the worker sets vLLM's config context)."""
    worker.reload_weights(weights_iterator=tensors)


def worker_parameters(worker) -> dict:
    """name -> parameter of the model a worker runs."""
    return dict(worker.model_runner.get_model().named_parameters())


def context_length(llm) -> int:
    return int(llm.llm_engine.model_config.max_model_len)


def shut_down(llm) -> None:
    """Stop an ``LLM``'s engine processes now, not when it is garbage collected."""
    engine = getattr(llm, "llm_engine", None)
    shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
    if shutdown:
        shutdown()
