"""Tiny SFT/aligned checkpoint pairs with random weights, for the demo and tests.

No hub is needed: configs are built locally and weights drawn from a seeded RNG.
The "aligned" model is the SFT model plus a small per-tensor perturbation, which is
what a short DPO run looks like from the weights' point of view; :func:`write_checkpoints`
adds the checkpoints such a run saves on the way (``checkpoint-N``), for ``expo_trajectory``.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from mergekit_expo.checkpoint import load_all

FAMILIES = ("llama", "mistral", "qwen2", "mixtral", "qwen2_moe")  # transformers' model types
# Mixture-of-experts families: transformers fuses their per-expert checkpoint tensors on load.
MOE_SETTINGS = {
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 64, "decoder_sparse_step": 1},
}
BASE_VOCAB = [f"w{i}" for i in range(60)]
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


@dataclass(frozen=True)
class PairSpec:
    """Shape and storage of a generated pair."""

    family: str = "llama"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    dtype: torch.dtype = torch.bfloat16
    delta_scale: float = 0.05  # |aligned − sft| relative to each tensor's spread
    max_shard_size: Optional[str] = None  # e.g. "200KB" to write sharded checkpoints
    added_tokens: Sequence[str] = ()  # tokens only the aligned model knows
    seed: int = 0


def model_config(spec: PairSpec, vocab_size: int):
    import transformers

    return transformers.AutoConfig.for_model(
        spec.family,
        **MOE_SETTINGS.get(spec.family, {}),
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )


def write_pair(root: str, spec: PairSpec = PairSpec()) -> Tuple[str, str]:
    """Write ``root/sft`` and ``root/aligned``; return their absolute paths."""
    import transformers

    if spec.family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {spec.family!r}")
    root = os.path.abspath(root)
    sft_dir, aligned_dir = os.path.join(root, "sft"), os.path.join(root, "aligned")
    base_vocab = SPECIAL + BASE_VOCAB

    generator = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    sft = transformers.AutoModelForCausalLM.from_config(
        model_config(spec, len(base_vocab))
    )
    sft_state = {k: v.detach().clone() for k, v in sft.state_dict().items()}
    for name, tensor in sft_state.items():
        if name.endswith("norm.weight"):
            # Norm scales start at exactly 1.0; give them some spread like a trained model.
            tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
    aligned_state = perturbed(sft_state, spec.delta_scale, generator)

    if spec.added_tokens:
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            extra = torch.randn(
                (len(spec.added_tokens), spec.hidden_size), generator=generator
            ) * float(aligned_state[name].std())
            aligned_state[name] = torch.cat([aligned_state[name], extra])

    for path, state, vocab in (
        (sft_dir, sft_state, base_vocab),
        (aligned_dir, aligned_state, base_vocab + list(spec.added_tokens)),
    ):
        _save(path, spec, state, len(vocab))
        write_tokenizer(path, base_vocab, list(vocab[len(base_vocab) :]))
    return sft_dir, aligned_dir


def perturbed(
    state: Dict[str, torch.Tensor], scale: float, generator: torch.Generator
) -> Dict[str, torch.Tensor]:
    """Return state + noise whose spread is ``scale`` times each tensor's spread."""
    result = {}
    for name, tensor in state.items():
        spread = float(tensor.float().std()) if tensor.numel() > 1 else 1.0
        noise = torch.randn(tensor.shape, generator=generator) * (scale * spread)
        result[name] = tensor + noise.to(tensor.dtype)
    return result


def _save(path: str, spec: PairSpec, state: Dict[str, torch.Tensor], vocab: int):
    import transformers

    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_config(model_config(spec, vocab))
    model.load_state_dict(state)
    model = model.to(spec.dtype)
    kwargs = {"max_shard_size": spec.max_shard_size} if spec.max_shard_size else {}
    model.save_pretrained(path, **kwargs)


def write_tokenizer(path: str, base_vocab: Sequence[str], added: Sequence[str]):
    """A word-level tokenizer over ``base_vocab`` plus ``added`` special tokens."""
    import tokenizers
    import transformers

    vocab = {token: index for index, token in enumerate(base_vocab)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": list(added)})
    tokenizer.save_pretrained(path)


def write_checkpoints(sft_dir: str, aligned_dir: str, root: str, steps: Sequence[int], *,
                      noise: float = 0.3, trainer_state: bool = True, seed: int = 0) -> List[str]:
    """``root/checkpoint-N`` for each step, as transformers' Trainer saves them: the update
    grows linearly with the step, plus noise (``noise`` times each tensor's update spread);
    the last checkpoint is the aligned model itself. With ``trainer_state``, each folder has a
    ``trainer_state.json`` with its ``global_step``. Return the folders in training order."""
    import json
    import shutil

    from safetensors.torch import save_file

    sft, aligned = load_all(sft_dir), load_all(aligned_dir)
    generator = torch.Generator().manual_seed(seed + 1)
    folders = []
    for step in steps:
        folder = os.path.join(os.path.abspath(root), f"checkpoint-{step}")
        shutil.copytree(aligned_dir, folder, ignore=shutil.ignore_patterns("*.safetensors*"))
        tensors = aligned if step == steps[-1] else {
            name: _on_the_way(sft[name], tensor, step / steps[-1], noise, generator)
            for name, tensor in aligned.items()}
        save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        if trainer_state:
            with open(os.path.join(folder, "trainer_state.json"), "w") as handle:
                json.dump({"global_step": step, "log_history": []}, handle)
        folders.append(folder)
    return folders


def _on_the_way(sft: torch.Tensor, aligned: torch.Tensor, fraction: float, noise: float,
                generator: torch.Generator) -> torch.Tensor:
    update = aligned.float() - sft.float()
    spread = float(update.std()) if update.numel() > 1 else 0.0
    jitter = torch.randn(update.shape, generator=generator) * (noise * fraction * spread)
    return (sft.float() + fraction * update + jitter).to(aligned.dtype)
