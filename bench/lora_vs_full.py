"""ExPO of a LoRA adapter: adapter in, adapter out, versus merging a full checkpoint.

Makes a rank-16 LoRA (all linear layers) on a synthetic pair's SFT model, then times
`mergekit-expo lora` against the full-checkpoint route (`model: ./sft+./adapter`,
`merge_method: expo` through `mergekit-expo run`) and compares what each writes.
Usage: python bench/lora_vs_full.py [--size 0.5B]
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from run import pair_for  # noqa: E402

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timed(command):
    start = time.perf_counter()
    subprocess.run([str(c) for c in command], check=True, capture_output=True,
                   env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="0.5B")
    parser.add_argument("--cache", default=str(HERE / "cache"))
    parser.add_argument("--work", default=str(HERE / "results" / "lora"))
    args = parser.parse_args()
    import peft
    import torch
    import transformers

    sft, _ = pair_for(args.size, Path(args.cache))
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(sft, dtype=torch.bfloat16)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules=targets,
                                               init_lora_weights=False)).save_pretrained(work / "adapter")
    del model

    adapter_seconds = timed([BIN / "mergekit-expo", "lora", work / "adapter", work / "adapter-expo",
                             "--alpha", "0.3"])
    config = work / "full.yml"
    config.write_text(yaml.safe_dump({"merge_method": "expo", "base_model": str(sft), "dtype": "bfloat16",
                                      "models": [{"model": f"{sft}+{work / 'adapter'}",
                                                  "parameters": {"alpha": 0.3}}]}))
    full_seconds = timed([BIN / "mergekit-expo", "run", config, work / "full-expo", "--no-copy-tokenizer"])
    adapter_mb = folder_bytes(work / "adapter-expo") / 1e6
    full_gb = folder_bytes(work / "full-expo") / 1e9
    print(f"{args.size} bf16 model, rank-16 LoRA on all linear layers, alpha 0.3, {os.cpu_count()} cores")
    print(f"{'route':44} {'wall s':>7} {'written':>10}")
    print(f"{'mergekit-expo lora (adapter -> adapter)':44} {adapter_seconds:7.1f} {adapter_mb:7.1f} MB")
    print(f"{'sft+adapter, merge_method: expo (full model)':44} {full_seconds:7.1f} {full_gb:7.2f} GB")
    print(f"adapter route: {full_seconds / adapter_seconds:.1f}x faster, "
          f"{full_gb * 1e3 / adapter_mb:.0f}x smaller output")


if __name__ == "__main__":
    main()
