"""Hugging Face Hub ids (``org/name``, ``org/name@revision``) wherever a model is named.

The local cache is tried first, so a GPU node without internet works from what was
downloaded before (``HF_HUB_OFFLINE=1``). mergekit 0.1.5 cannot do that itself: it
lists the repository's files online before looking at the cache.
"""

import os
from typing import Optional

from mergekit_expo.errors import ExpoInputError

# What an ExPO pair needs: weights, configs, tokenizer files, chat templates.
PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"]


def is_hub_id(reference: str) -> bool:
    """``org/name`` (optionally ``@revision``) that is not a path on disk."""
    path = reference.split("@", 1)[0]
    if os.path.exists(reference) or os.path.exists(path) or path.startswith((".", "/", "~")):
        return False
    return path.count("/") == 1 and all(path.split("/"))


def model_reference(reference: str) -> str:
    """How results.json and best.yml name a model: the Hub id as given, else an absolute path."""
    return reference if is_hub_id(reference) else os.path.abspath(reference)


def resolve(reference: Optional[str], role: str) -> Optional[str]:
    """A local folder for ``reference``: itself if it is a path, else its Hub snapshot."""
    if reference is None or not is_hub_id(reference):
        return reference
    import huggingface_hub
    from huggingface_hub import constants

    repo, _, revision = reference.partition("@")
    folder = cached_snapshot(reference)
    if folder is not None:
        return folder
    if constants.HF_HUB_OFFLINE:
        raise ExpoInputError(
            f"{role} {reference} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
            f"fetch it first (`hf download {repo}"
            + (f" --revision {revision}" if revision else "")
            + "` where the Hub is reachable, same HF_HOME), or pass a local folder"
        )
    try:
        return huggingface_hub.snapshot_download(repo, revision=revision or None, allow_patterns=PATTERNS)
    except Exception as error:  # noqa: BLE001 - any Hub failure becomes one line; -v shows it whole
        raise ExpoInputError(f"cannot fetch {role} {reference} from the Hub ({type(error).__name__}: "
                             f"{_one_line(error)}): check the id, revision, access and network, or "
                             "pass a local folder") from error


def cached_snapshot(reference: str) -> Optional[str]:
    """The snapshot folder of Hub id ``reference`` in the local cache, or None; never downloads."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, _, revision = reference.partition("@")
    try:
        return huggingface_hub.snapshot_download(repo, revision=revision or None, local_files_only=True)
    except LocalEntryNotFoundError:
        return None


def _one_line(error: Exception, limit: int = 200) -> str:
    """The Hub's message (status, gated repo, bad revision) on one line, shortened."""
    text = " ".join(str(error).split()) or "no message"
    return text if len(text) <= limit else text[: limit - 3] + "..."
