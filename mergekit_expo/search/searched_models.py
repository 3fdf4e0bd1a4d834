"""The models a search extrapolates: the SFT model and the aligned model (``expo``), or the
SFT model and several checkpoints of one run at their training steps (``expo_trajectory``).

Read before any model is loaded: a local folder for each Hub id, each checkpoint's step as
expo_trajectory reads it (``--steps``, else ``trainer_state.json``, else the folder name
``checkpoint-N``), and every refusal ``mergekit-expo run`` makes of the same merge (by the
trajectory's own checks). A candidate's mergekit config, ``best.yml``, is written from
here, so the search and the merge name the same models, steps and window.
"""

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

from mergekit_expo import hub
from mergekit_expo.errors import ExpoConfigError, ExpoError
from mergekit_expo.preflight import WEIGHT_PATTERNS, check_pair, check_tokenizer, same_weights

LOG = logging.getLogger("mergekit_expo")

# The trajectory's checks name their fix in a config's terms; on this command line the
# options write those: --steps each checkpoint's step:, --window the fit's window.
_COMMAND_LINE_WORDS = (
    ("write its training step under its parameters: (e.g. 'step: 500'), or merge the trainer's "
     "checkpoint-N folder as saved",
     "give every checkpoint's training step with --steps N,N,..., or search the trainer's checkpoint-N "
     "folders as saved"),
    ("write its true training step as step: under its parameters:", "give its true training step in --steps"),
    ("write the checkpoint's step as step: under its parameters:",
     "give every checkpoint's step with --steps"),
    ("fix step: (or leave it out", "fix --steps (or leave it out"),
    ("remove the duplicate or fix its step:", "give each checkpoint once, or fix --steps"),
    (" has step: ", " has --steps "),
    ("steps must increase down models:", "steps must increase along the checkpoints given"),
    ("list the checkpoints in training order", "give the checkpoints in training order"),
    ("window must be", "--window must be"),
    ("window is ", "--window is "),
    ("(base_model and ", "(the SFT model and "),
    ("or leave window out", "or leave --window out"),
    ("list the run's checkpoints under models:, not the SFT model",
     "give the run's checkpoints after the SFT model, not the SFT model itself"),
    ("base_model (the SFT model)", "the SFT model"),
    ("the same weights as base_model ", "the same weights as "),
)


@dataclass(frozen=True)
class SearchedModels:
    """Local folders of the SFT model and the checkpoints, and how configs name them."""

    sft: str
    checkpoints: Tuple[str, ...]  # the aligned model, or a run's checkpoints in training order
    named: Tuple[str, ...]  # the SFT model first: Hub ids as given, else absolute paths
    steps: Optional[Tuple[int, ...]] = None  # a run's: each checkpoint's training step
    window: Optional[int] = None  # a run's: fit the last points only (None: every point)

    @classmethod
    def pair(cls, sft_folder: str, aligned_folder: str, sft: str, aligned: str) -> "SearchedModels":
        """The folders of an SFT and aligned pair, named as ``sft`` and ``aligned`` were given."""
        return cls(sft_folder, (aligned_folder,), (hub.model_reference(sft), hub.model_reference(aligned)))

    @property
    def aligned(self) -> str:
        """The folder the engine loads: the aligned model, or the run's last checkpoint."""
        return self.checkpoints[-1]

    @property
    def is_trajectory(self) -> bool:
        return len(self.checkpoints) > 1

    def roles(self) -> list:
        """(role, name) of each model, as the user knows it."""
        role = "checkpoint" if self.is_trajectory else "the aligned model"
        return [("the SFT model", self.named[0]), *((role, name) for name in self.named[1:])]

    def settings(self) -> dict:
        """What makes two searches' models the same (a part of results.json's settings): their
        names and their weights (a model trained again into the same folder is another search)."""
        weights = weights_fingerprint((self.sft, *self.checkpoints))
        if not self.is_trajectory:
            return {"sft": self.named[0], "aligned": self.named[1], "weights": weights}
        return {"sft": self.named[0], "checkpoints": list(self.named[1:]), "steps": list(self.steps),
                "window": self.window, "weights": weights}

    def engine_options(self) -> dict:
        return {"steps": self.steps, "window": self.window} if self.is_trajectory else {}

    def config(self, alpha, dtype: Optional[str] = None, *, folders: bool = False) -> dict:
        """The mergekit config at ``alpha`` (a mergekit ``parameters.alpha`` value), naming the
        models as configs do, or by their local ``folders``: ``expo`` for the aligned model,
        ``expo_trajectory`` (each checkpoint with its step) for a run."""
        sft, *checkpoints = (self.sft, *self.checkpoints) if folders else self.named
        if not self.is_trajectory:
            config = {"merge_method": "expo", "base_model": sft,
                      "models": [{"model": checkpoints[0], "parameters": {"alpha": alpha}}]}
        else:
            config = {"merge_method": "expo_trajectory", "base_model": sft,
                      "models": [{"model": c, "parameters": {"step": s}}
                                 for c, s in zip(checkpoints, self.steps)],
                      "parameters": {"alpha": alpha, **({"window": self.window} if self.window else {})}}
        if dtype:
            config["dtype"] = dtype
        return config


def read_models(sft: str, checkpoints: Sequence[str], *, steps: Optional[Sequence[int]] = None,
                window: Optional[int] = None) -> SearchedModels:
    """The searched models, checked as the merge checks them; one line on anything it would refuse."""
    if len(checkpoints) == 1:
        for option, given in (("--steps", steps), ("--window", window)):
            if given is not None:
                raise ExpoConfigError(f"{option} is for a run's checkpoints: give several checkpoints after "
                                      "the SFT model, or drop it (one aligned model is plain expo)")
        return read_pair(sft, checkpoints[0])
    return read_run(sft, checkpoints, steps, window)


def read_pair(sft: str, aligned: str) -> SearchedModels:
    sft_folder, aligned_folder = hub.resolve(sft, "SFT model"), hub.resolve(aligned, "aligned model")
    if os.path.realpath(sft_folder) == os.path.realpath(aligned_folder):
        # mergekit plans one folder given twice as one model: there is no update to extrapolate
        raise ExpoConfigError(f"the SFT and aligned models are the same folder ({sft}): give the SFT "
                              "checkpoint the aligned model was trained from as the first argument")
    check_pair(sft_folder, aligned_folder)
    check_tokenizer(aligned_folder, "aligned")
    if same_weights(sft_folder, aligned_folder):
        LOG.warning("the SFT and aligned models are the same checkpoint (%s and %s hold the same "
                    "weights): there is no alignment update, every α scores the aligned model",
                    sft, aligned)
    return SearchedModels.pair(sft_folder, aligned_folder, sft, aligned)


def read_run(sft: str, checkpoints: Sequence[str], steps: Optional[Sequence[int]],
             window: Optional[int]) -> SearchedModels:
    """A run's checkpoints: each once, each of the SFT model's network, their steps and window
    as ``mergekit-expo run`` reads and checks an expo_trajectory config."""
    if steps is not None and len(steps) != len(checkpoints):
        raise ExpoConfigError(f"--steps gives {len(steps)} step(s) for {len(checkpoints)} checkpoints: give "
                              "one per checkpoint, in the order of the checkpoints")
    sft_folder = hub.resolve(sft, "SFT model")
    folders = tuple(hub.resolve(c, "checkpoint") for c in checkpoints)
    seen = {os.path.realpath(sft_folder): f"the SFT model {sft}"}
    for name, folder in zip(checkpoints, folders):
        real = os.path.realpath(folder)
        if real in seen:
            raise ExpoConfigError(f"checkpoint {name} is the same folder as {seen[real]}: give each "
                                  "checkpoint of the run once, after the SFT model it started from")
        seen[real] = f"checkpoint {name}"
    try:
        fit = run_fit(sft, checkpoints, steps, window)
        for folder in folders:  # Hub ids too: their vocabularies, as the search loads them
            check_pair(sft_folder, folder, role="checkpoint")
    except ExpoError as error:  # the same refusal, its fix in this command's terms
        raise type(error)(in_command_line_words(str(error))) from None
    check_tokenizer(folders[-1], "last checkpoint's")
    named = tuple(hub.model_reference(name) for name in (sft, *checkpoints))
    return SearchedModels(sft_folder, folders, named, steps=fit.steps[1:],
                          window=fit.window if fit.window < len(fit.steps) else None)


def run_fit(sft: str, checkpoints: Sequence[str], steps: Optional[Sequence[int]], window: Optional[int]):
    """The fit, after every check ``mergekit-expo run`` makes of the expo_trajectory config
    naming these models (``steps``: each checkpoint's written step)."""
    from mergekit.config import MergeConfiguration

    from mergekit_expo.trajectory.contract import planned_fit
    from mergekit_expo.trajectory.preflight import check_trajectory_inputs, written_steps

    written = steps if steps is not None else (None,) * len(checkpoints)
    models = [{"model": c} if s is None else {"model": c, "parameters": {"step": s}}
              for c, s in zip(checkpoints, written)]
    parameters = {"alpha": 0.0} if window is None else {"alpha": 0.0, "window": window}
    config = MergeConfiguration.model_validate({"merge_method": "expo_trajectory", "base_model": sft,
                                                "models": models, "parameters": parameters})
    check_trajectory_inputs(config)
    return planned_fit(tuple(written_steps(config)), window)


def in_command_line_words(message: str) -> str:
    for config_words, option_words in _COMMAND_LINE_WORDS:
        message = message.replace(config_words, option_words)
    return message


def weights_fingerprint(folders: Sequence[str]) -> str:
    """One hash of every weight file's name, size and sampled content (manifest's fingerprint:
    whole small files, the edges and sampled blocks of large ones) in ``folders``."""
    from mergekit_expo.manifest import fingerprint

    digest = hashlib.sha256()
    for folder in folders:
        files = {path for pattern in WEIGHT_PATTERNS for path in Path(folder).glob(pattern)}
        for path in sorted(files):
            digest.update(json.dumps([path.name, fingerprint(path)], sort_keys=True).encode())
        digest.update(b"\0")  # which folder a file is in counts
    return digest.hexdigest()[:16]
