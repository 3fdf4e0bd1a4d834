"""The paper's released ExPO procedure, re-implemented faithfully for comparison.

Both models are loaded whole with transformers in bf16, every parameter becomes
θ_dpo + α(θ_dpo − θ_sft) in bf16 arithmetic, and the result is saved with
save_pretrained. Usage: python bench/paper_procedure.py SFT DPO ALPHA OUT
"""

import sys

import torch
import transformers


def main(sft_path, dpo_path, alpha, out):
    sft = transformers.AutoModelForCausalLM.from_pretrained(sft_path, dtype=torch.bfloat16)
    dpo = transformers.AutoModelForCausalLM.from_pretrained(dpo_path, dtype=torch.bfloat16)
    sft_state = sft.state_dict()
    for name, parameter in dpo.named_parameters():
        parameter.data = parameter.data + alpha * (parameter.data - sft_state[name].data)
    dpo.save_pretrained(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4])
