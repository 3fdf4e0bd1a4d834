"""What an engine of the α search must do, whatever runs the model.

An engine loads the aligned model (a run's last checkpoint) once, sets its weights in
place to the ExPO model of any α, generates answers and scores log-likelihoods in
batches. Scorers talk to this interface only, so a new engine needs no change to them.
:data:`~.registry.ENGINES` names each, imported only when it is used.
"""

from abc import ABC, abstractmethod
from typing import Callable, List, Mapping, Optional, Sequence, Union

from mergekit_expo.search.sampling import Sampling


class Engine(ABC):
    #: the aligned model's tokenizer (prompts are encoded with it)
    tokenizer = None
    #: the largest number of tokens the model takes (prompt plus answer)
    context_length: int = 0
    #: the model object the engine runs, as a ``module:function`` scorer receives it
    model = None

    @abstractmethod
    def set_alphas(self, alphas: Union[float, Mapping[str, float]]) -> None:
        """Make the loaded weights the ExPO model, exactly: θ_aligned + α·(θ_aligned − θ_sft), or
        a trajectory's fit at s_last·(1 + α), with one α for every tensor or each checkpoint
        tensor's own (name -> α, as the search resolves it)."""

    def set_alpha(self, alpha: float) -> None:
        """One α everywhere."""
        self.set_alphas(alpha)

    @abstractmethod
    def generate(self, prompts: Sequence[List[int]], sampling: Sampling,
                 progress: Optional[Callable] = None) -> List[str]:
        """One answer per prompt (token ids), decoded without special tokens."""

    @abstractmethod
    def answer_logprobs(self, contexts: Sequence[List[int]], answers: Sequence[List[int]],
                        progress: Optional[Callable] = None) -> List[float]:
        """Sum of log p(answer token | everything before it), per (context, answer)."""

    def callable_arguments(self) -> tuple:
        """What a user's ``module:function`` scorer receives."""
        return (self.model, self.tokenizer)

    def transformers_model(self):
        """The transformers model whose weights it sets in place (lm-eval wraps it), else None."""
        return None

    @classmethod  # noqa: B027 - optional: an engine of the base install keeps it
    def check_installed(cls) -> None:
        """Before anything is read: the engine's library can run here, or one line naming the fix."""

    def close(self) -> None:  # noqa: B027 - optional: engines without resources keep it
        """Free the engine's resources (processes, GPU memory)."""


def checked_models(sft: str, checkpoints: Sequence[str]) -> str:
    """Each checkpoint is of the SFT model's network; returns the one the engine runs: the
    aligned model, or a run's last checkpoint (its config and tokenizer)."""
    from mergekit_expo.preflight import check_pair

    if not checkpoints:
        raise TypeError("an engine needs the aligned model, or a run's checkpoints")
    for checkpoint in checkpoints:
        check_pair(sft, checkpoint, role="aligned" if len(checkpoints) == 1 else "checkpoint")
    return checkpoints[-1]
