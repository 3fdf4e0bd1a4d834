"""Checks on the SFT/aligned pair before any tensor is read, with one-line answers."""

import filecmp
import json
import os
import pickle
import warnings
from pathlib import Path

from mergekit_expo.errors import ExpoInputError
from mergekit_expo.hub import is_hub_id
from mergekit_expo.manifest import fingerprint

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
# Any of these lets transformers build the tokenizer (fast, sentencepiece, BPE or WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
# Keys that must agree for θ_aligned − θ_sft to be meaningful tensor by tensor.
SHAPE_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
)


def check_model_folder(path: str, role: str) -> Path:
    """The folder exists, has config.json and readable weights; return it."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ExpoInputError(f"{role} model folder {path} does not exist: check the path")
    if not folder.is_dir():
        raise ExpoInputError(f"{role} model {path} is a file, not a model folder: point to its folder")
    if not (folder / "config.json").is_file():
        raise ExpoInputError(
            f"{role} model folder {path} has no config.json: point to a transformers "
            "checkpoint folder (save_pretrained output)"
        )
    weights = [f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern)]
    if not weights:
        raise ExpoInputError(
            f"{role} model folder {path} has no weights (*.safetensors or "
            "pytorch_model*.bin): copy the weight files next to config.json"
        )
    for file in weights:
        (_check_safetensors if file.suffix == ".safetensors" else check_pickle)(file)
    return folder


def has_tokenizer(path) -> bool:
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def check_tokenizer(path, role: str) -> None:
    if not has_tokenizer(path):
        raise ExpoInputError(
            f"{role} model folder {path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...): "
            "copy the tokenizer files of the model it was trained from next to its config.json"
        )


def check_pickle(file: Path) -> None:
    """A pickled checkpoint that would call functions is refused before anything loads it.

    torch's weights-only loader refuses it too, but its message advises
    ``weights_only=False``, which would run the code.
    """
    import torch

    fix = "so it is not loaded: convert the checkpoint to safetensors from a trusted source"
    try:
        calls = torch.serialization.get_unsafe_globals_in_checkpoint(str(file))
    except ValueError:  # not torch's zip format: a plain or pre-1.6 pickle
        calls = None
    except Exception:  # noqa: BLE001 - unreadable: the loader will say so
        return
    if calls:
        raise ExpoInputError(f"{file} contains code ({calls[0]} is called when it is unpickled), {fix}")
    if calls is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.load(str(file), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ExpoInputError(f"{file} is a pickle holding more than tensors (it may contain "
                                 f"code), {fix}") from None
        except Exception:  # noqa: BLE001 - the loader will say so
            return


def _check_safetensors(file: Path) -> None:
    # The header states where every tensor ends; a short file is truncated.
    try:
        with open(file, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if header_size <= 0 or header_size > 100_000_000:
                raise ValueError("bad header size")
            header = json.loads(handle.read(header_size))
        end = max(
            (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
            default=0,
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ExpoInputError(
            f"{file} is not a valid safetensors file: re-download or re-export it"
        ) from None
    if file.stat().st_size < 8 + header_size + end:
        raise ExpoInputError(
            f"{file} is truncated ({file.stat().st_size} bytes, header says "
            f"{8 + header_size + end}): re-download or re-export it"
        )


def same_weights(first, second) -> bool:
    """True if two model folders hold byte-identical weight files: one checkpoint under two
    names. Sampled fingerprints first (an SFT/aligned pair differs there, for the price of a
    few MB), the whole files only when those agree. One folder under two paths is the same."""
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    first, second = Path(first), Path(second)
    names = sorted({f.name for pattern in WEIGHT_PATTERNS for f in first.glob(pattern)})
    if not names or names != sorted({f.name for pattern in WEIGHT_PATTERNS for f in second.glob(pattern)}):
        return False
    pairs = [(first / name, second / name) for name in names]
    if any(fingerprint(a) != fingerprint(b) for a, b in pairs):
        return False
    return all(filecmp.cmp(a, b, shallow=False) for a, b in pairs)


def load_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except ValueError as error:
        raise ExpoInputError(f"{folder / 'config.json'} is not valid JSON: {error}") from None


def check_pair(sft: str, aligned: str, *, tokenizer_aligned: bool = False, role: str = "aligned") -> None:
    """SFT and aligned folders are usable and describe the same network.

    ``tokenizer_aligned``: the merge aligns vocabularies (mergekit ``tokenizer:``),
    so differing vocab sizes are fine. ``role``: what the second model is to the user.
    """
    sft_config = load_config(check_model_folder(sft, "SFT (base_model)"))
    aligned_config = load_config(check_model_folder(aligned, role))
    check_same_network(sft, aligned, sft_config, aligned_config, tokenizer_aligned=tokenizer_aligned,
                       role=role)


def check_input_folders(config, models, role: str) -> bool:
    """Check the local folders of ``models`` (references in mergekit's ``config``; Hub ids are
    mergekit's to fetch), each against the SFT model (base_model) where that is local too;
    whether any was (the SFT folder is then checked: an old .bin is read whole to check it)."""
    sft = config.base_model.model.path
    tokenizer_aligned = bool(config.tokenizer or config.tokenizer_source)
    paired = False
    for model in models:
        path = model.model.path
        if is_hub_id(path):
            continue
        if model.lora is not None:
            check_model_folder(path, f"{role} (base of the LoRA)")
        elif not is_hub_id(sft):
            check_pair(sft, path, tokenizer_aligned=tokenizer_aligned, role=role)
            paired = True
        else:
            check_model_folder(path, role)
    return paired


# What to do when a model is not of the SFT model's network, by the model's role.
TRAINED_FROM = {"aligned": "use the SFT checkpoint the aligned model was trained from",
                "checkpoint": "list checkpoints of the run that started from base_model (the SFT model)"}


def check_same_network(sft: str, aligned: str, sft_config: dict, aligned_config: dict, *,
                       tokenizer_aligned: bool = False, role: str = "aligned") -> None:
    """The two config.json contents describe the same network (tensor by tensor)."""
    fix = TRAINED_FROM.get(role, TRAINED_FROM["aligned"])
    sft_arch, aligned_arch = sft_config.get("architectures"), aligned_config.get("architectures")
    for path, arch in ((sft, sft_arch), (aligned, aligned_arch)):
        if not arch:
            raise ExpoInputError(
                f"{path}/config.json has no architectures entry: mergekit needs it to know "
                'the tensor layout; add e.g. "architectures": ["LlamaForCausalLM"]'
            )
    if sft_arch != aligned_arch:
        raise ExpoInputError(
            f"architectures differ: SFT {sft} is {sft_arch[0]}, {role} {aligned} is "
            f"{aligned_arch[0]}: {fix}"
        )
    sft_text, aligned_text = _text_config(sft_config), _text_config(aligned_config)
    for key in SHAPE_KEYS:
        first, second = sft_text.get(key), aligned_text.get(key)
        if first is not None and second is not None and first != second:
            raise ExpoInputError(f"{key} differs: {first} in SFT {sft}, {second} in {role} {aligned}: {fix}")
    first, second = sft_text.get("vocab_size"), aligned_text.get("vocab_size")
    if first != second and not tokenizer_aligned:
        raise ExpoInputError(
            f"vocab_size differs ({first} in SFT, {second} in {role}"
            f"{'' if role == 'aligned' else ' ' + str(aligned)}), so "
            "embed_tokens/lm_head shapes differ: add 'tokenizer: {source: union}' to the "
            f"config (rows only the {role} model has keep its values)"
        )


def _text_config(config: dict) -> dict:
    # Multimodal configs nest the language model's settings.
    return config.get("text_config") or config

