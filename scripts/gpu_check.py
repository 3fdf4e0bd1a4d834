"""GPU check, one script for the first machine with a GPU.

1. Merge: a ~1B synthetic pair with `mergekit-yaml --cuda` and without; both must
   equal the fp64 result rounded once (the numerics rule) and so each other.
2. Search, transformers engine on the GPU: the in-place weights of an α equal the
   merged checkpoint bit for bit; batched greedy generation is timed (auto batch size).
3. Search, vLLM engine (if vLLM is installed): tensor parallel over the visible GPUs;
   greedy answers at α ≈ 0.3 compared with the transformers engine's.

Usage: python scripts/gpu_check.py [--work DIR] [--skip-merge]
"""

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from mergekit_expo.checkpoint import load_all as load
from mergekit_expo.synthetic import PairSpec, write_pair

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fp64_reference import round_once  # noqa: E402  (never torch's two-rounding conversion)

ONE_B = dict(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8)
ALPHA = 0.3 + 2.0 ** -30  # long binary runs: rounding twice through fp32 would show


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def merge(config, out, *flags):
    start = time.perf_counter()
    subprocess.run([tool("mergekit-yaml"), str(config), str(out), "--out-shard-size", "1B", *flags], check=True)
    return time.perf_counter() - start


def check_merge(work, sft, aligned, config) -> bool:
    cpu_seconds = merge(config, work / "out-cpu")
    gpu_seconds = merge(config, work / "out-cuda", "--cuda")
    s, a, cpu, gpu = load(sft), load(aligned), load(work / "out-cpu"), load(work / "out-cuda")
    elements = sum(t.numel() for t in a.values())
    agree = all(torch.equal(cpu[k], gpu[k]) for k in a)
    equal = sum(int((gpu[k] == round_once(a[k].double() + ALPHA * (a[k].double() - s[k].double()),
                                          a[k].dtype)).sum())
                for k in a) / elements
    print(f"{elements / 1e9:.2f}B bf16 parameters on {torch.cuda.get_device_name()}")
    print(f"mergekit-yaml (CPU arithmetic): {cpu_seconds:.1f} s")
    print(f"mergekit-yaml --cuda:           {gpu_seconds:.1f} s ({cpu_seconds / gpu_seconds:.2f}x)")
    print(f"--cuda output equals CPU output bit for bit: {agree}; equal to fp64 rounded once: {equal:.6%}")
    return agree and equal == 1.0


def check_hf_engine(sft, aligned, merged) -> tuple:
    from mergekit_expo.search.hf_engine import HFEngine
    from mergekit_expo.search.sampling import Sampling

    engine = HFEngine(str(sft), str(aligned), device="cuda")
    start = time.perf_counter()
    engine.set_alpha(ALPHA)
    torch.cuda.synchronize()
    update = time.perf_counter() - start
    expected = load(merged)
    state = engine.model.state_dict()
    exact = all(torch.equal(state[k].cpu(), v) for k, v in expected.items())
    prompts = [engine.tokenizer(" ".join(f"w{(i * 7 + j) % 60}" for j in range(8 + i % 16)))["input_ids"]
               for i in range(256)]
    start = time.perf_counter()
    answers = engine.generate(prompts, Sampling(max_new_tokens=64))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"transformers engine on cuda: in-place weights of alpha={ALPHA} equal the merge bit for bit: "
          f"{exact}; update {update:.2f} s; 256 prompts x 64 new tokens in {seconds:.1f} s "
          f"(batch size settled at {engine.batcher.size})")
    del engine
    torch.cuda.empty_cache()
    return exact, answers[:16], prompts[:16]


def check_vllm(sft, aligned, hf_answers, prompts) -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vLLM engine: vLLM is not installed here: skipped (pip install 'mergekit-expo[vllm]')")
        return True
    from mergekit_expo.search.sampling import Sampling
    from mergekit_expo.search.vllm_engine import VLLMEngine

    start = time.perf_counter()
    engine = VLLMEngine(str(sft), str(aligned))
    started = time.perf_counter() - start
    engine.set_alpha(ALPHA)
    answers = engine.generate(prompts, Sampling(max_new_tokens=64))
    same = sum(a == b for a, b in zip(answers, hf_answers))
    print(f"vLLM engine (tensor parallel {torch.cuda.device_count()}): start-up {started:.1f} s, "
          f"update {engine.update_seconds:.2f} s; greedy answers equal to the transformers engine's: "
          f"{same} of {len(prompts)} (bf16 kernels differ; a near-tie can flip a token)")
    engine.close()
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="./gpu-check")
    parser.add_argument("--skip-merge", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("Error: no CUDA device is visible: run this on a GPU machine")
    work = Path(args.work).absolute()
    sft, aligned = write_pair(str(work / "models"), PairSpec(**ONE_B, max_shard_size="2GB"))
    config = work / "expo.yml"
    config.write_text(yaml.safe_dump({"merge_method": "expo", "base_model": sft,
                                      "models": [{"model": aligned, "parameters": {"alpha": ALPHA}}]}))
    ok = True
    if not args.skip_merge:
        ok &= check_merge(work, sft, aligned, config)
    else:
        merge(config, work / "out-cpu")
    exact, answers, prompts = check_hf_engine(sft, aligned, work / "out-cpu")
    ok &= exact
    ok &= check_vllm(sft, aligned, answers, prompts)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
