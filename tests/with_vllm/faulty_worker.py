"""A vLLM worker extension whose reload can be made to fail silently (for the engine's self-check test).

Imported by name in vLLM's worker processes, so it lives in a module of its own.
"""

from mergekit_expo.search.vllm_worker import ExpoWorkerExtension


class FaultyWorkerExtension(ExpoWorkerExtension):
    def expo_fault(self, fault):
        self._expo_fault = fault

    def expo_set_alpha(self, source, alpha, dtype=None):
        fault = getattr(self, "_expo_fault", None)
        if fault == "does nothing":
            return 0.0
        if fault == "reloads from disk":
            self.reload_weights()  # vLLM reads the aligned checkpoint again
            return 0.0
        return super().expo_set_alpha(source, alpha, dtype)
