"""How answers are generated: greedy by default, or seeded sampling."""

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    sample: bool = False  # False: greedy, and the settings below are ignored
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    presence_penalty: float = 0.0  # honoured by engines that have it (vLLM)
    frequency_penalty: float = 0.0
    seed: int = 0

    def settings(self) -> dict:
        """What makes two searches comparable (part of results.json's fingerprint)."""
        values = asdict(self)
        if not self.sample:
            values = {"max_new_tokens": self.max_new_tokens, "sample": False}
        return values


# The sampling of the paper's released α-selection procedure.
PRESETS = {
    "paper": Sampling(max_new_tokens=2048, sample=True, temperature=0.7, top_p=0.9, top_k=50,
                      presence_penalty=0.1, frequency_penalty=0.1),
}

