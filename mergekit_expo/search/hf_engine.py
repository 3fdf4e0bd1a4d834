"""The transformers engine: one model in memory, weights set per α, batched work.

Weights go through transformers' own checkpoint conversion (the one
``from_pretrained`` uses), one layer at a time: models whose class renames or fuses
checkpoint tensors on load (Mixtral's and Qwen-MoE's experts, for example) get
exactly the weights the merged checkpoint would load to, with no name map of ours.
That conversion is transformers' internal API (:mod:`mergekit_expo.compat.transformers`):
every α is checked after loading (:mod:`.self_check`).
"""

from typing import Callable, List, Optional, Sequence

import torch
import transformers

from mergekit_expo.compat.transformers import check_transformers_loader, checkpoint_loader, is_tied
from mergekit_expo.errors import ExpoInputError
from mergekit_expo.search.batching import Batcher, padded
from mergekit_expo.search.engine import Engine, checked_models
from mergekit_expo.search.expo_weights import open_weights
from mergekit_expo.search.prompts import pad_id
from mergekit_expo.search.sampling import Sampling
from mergekit_expo.search.self_check import WeightProbe, warn_if_untested


class HFEngine(Engine):
    def __init__(self, sft: str, *checkpoints: str, steps: Optional[Sequence[int]] = None,
                 window: Optional[int] = None, device: str = "cpu", dtype: Optional[str] = None,
                 batch_size: Optional[int] = None, trust_remote_code: bool = False):
        """``checkpoints``: the aligned model, or a run's checkpoints in training order (with
        their ``steps``, default what their folders state, and the fit's ``window``)."""
        aligned = checked_models(sft, checkpoints)
        warn_if_untested("hf")
        transformers.utils.logging.disable_progress_bar()  # our bars, not one per layer load
        torch_dtype = getattr(torch, dtype) if dtype else None
        self.weights = open_weights(sft, checkpoints, steps=steps, window=window, dtype=torch_dtype)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            aligned, dtype=torch_dtype or "auto", trust_remote_code=trust_remote_code
        ).to(device).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            aligned, trust_remote_code=trust_remote_code)
        self._attach(model, tokenizer, device, batch_size)
        held = {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}
        self.probe = WeightProbe(self.weights, held, engine="hf")

    @classmethod
    def check_installed(cls) -> None:
        check_transformers_loader()

    @classmethod
    def for_model(cls, model, tokenizer, *, device: str = "cpu", batch_size: Optional[int] = None):
        """Batched generation and scoring of an already loaded model, without α (baselines)."""
        engine = cls.__new__(cls)
        engine.weights = None
        engine._attach(model, tokenizer, device, batch_size)
        return engine

    def _attach(self, model, tokenizer, device, batch_size):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.pad = pad_id(tokenizer, "aligned model")
        text = getattr(model.config, "text_config", None) or model.config  # a multimodal model's text part
        self.context_length = int(getattr(text, "max_position_embeddings", 0) or 0)
        self.batcher = Batcher(batch_size, device)

    def transformers_model(self):
        return self.model

    # -- weights ---------------------------------------------------------------------
    def set_alphas(self, alphas) -> None:
        self._load_weights(alphas)
        state = self.model.state_dict()
        self.probe.check(alphas, {name: state[name].reshape(-1)[positions].cpu()
                                  for name, positions in self.probe.requests().items()})

    def _load_weights(self, alphas) -> None:
        expected = set(self.model.state_dict())
        loaded = set()
        load = checkpoint_loader(self.model, self.device)
        with torch.no_grad():
            for tensors in self.weights.layers(alphas, device=self.device):
                missing, problems = load(tensors)
                if problems:
                    raise ExpoInputError(
                        f"transformers could not load the ExPO tensor {problems[0]} "
                        f"into {type(self.model).__name__}: merge with mergekit-expo run and score the result"
                    )
                loaded |= expected - missing
        self.model.tie_weights()  # loading replaced parameters: tied ones must share again
        unset = sorted(k for k in expected - loaded if not is_tied(self.model, k))
        if unset:
            raise ExpoInputError(
                f"weight {unset[0]} of the loaded {type(self.model).__name__} has no tensor in the "
                "checkpoint: merge with mergekit-expo run and score the result"
            )

    # -- generation ------------------------------------------------------------------
    def generate(self, prompts: Sequence[List[int]], sampling: Sampling,
                 progress: Optional[Callable] = None) -> List[str]:
        self._batch_index = 0
        return self.batcher.run(prompts, lambda batch: self._generate_batch(batch, sampling),
                                progress=progress)

    def _generate_batch(self, prompts: List[List[int]], sampling: Sampling) -> List[str]:
        ids, mask = padded(prompts, self.pad, left=True)
        width = ids.shape[1]
        options = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=self.pad,
                       do_sample=sampling.sample)
        if sampling.sample:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p,
                           top_k=sampling.top_k or None)
            # Reseeded per batch: a rerun with the same batch size draws the same answers.
            torch.manual_seed(sampling.seed + self._batch_index)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        self._batch_index += 1
        with torch.no_grad():
            output = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                         **options)
        return self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)

    # -- log-likelihoods ---------------------------------------------------------------
    def answer_logprobs(self, contexts: Sequence[List[int]], answers: Sequence[List[int]],
                        progress: Optional[Callable] = None) -> List[float]:
        pairs = list(zip(contexts, answers))
        return self.batcher.run(pairs, self._logprob_batch,
                                length=lambda pair: len(pair[0]) + len(pair[1]), progress=progress)

    def _logprob_batch(self, pairs) -> List[float]:
        # Right padding: a causal model never looks right, so padding changes no position.
        ids, mask = padded([context + answer for context, answer in pairs], self.pad)
        with torch.no_grad():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        totals = []
        for row, (context, answer) in enumerate(pairs):
            # Position t predicts token t + 1; only the answer's positions are normalised.
            rows = logits[row, len(context) - 1 : len(context) + len(answer) - 1].float()
            targets = torch.tensor(answer, device=rows.device)
            picked = rows.gather(1, targets[:, None])[:, 0] - torch.logsumexp(rows, dim=-1)
            totals.append(float(picked.sum()))
        return totals
