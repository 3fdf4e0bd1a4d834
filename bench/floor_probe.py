"""`mergekit-yaml` with one extra method, `one_pass_probe`: the cheapest merge of two checkpoints.

Its kernel is a single fused torch pass that reads both inputs and writes a fresh output
(`torch.maximum(base, other)`): everything a two-input merge cannot avoid (the second
read, allocating and filling the output) and almost no arithmetic. Run between the
passthrough and the expo merge, it splits expo's distance from the floor into what any
two-checkpoint merge pays on this machine and what the ExPO arithmetic adds.

The method exists only in this benchmark process. Usage: same arguments as mergekit-yaml,
with `merge_method: one_pass_probe`, `base_model` and one model under `models:`.
"""

import torch
from mergekit.merge_methods import registry
from mergekit.merge_methods.base import BasePolicy, InputContract, TensorGroup
from mergekit.merge_methods.easy_define import merge_method
from mergekit.scripts.run_yaml import main


@merge_method(
    name="one_pass_probe",
    pretty_name="one-pass probe (benchmark only)",
    contract=InputContract(base=BasePolicy.REQUIRED, min_inputs=2, max_inputs=2, max_non_base=1),
)
def one_pass_probe(group: TensorGroup) -> torch.Tensor:
    (other,) = group.non_base
    return torch.maximum(group.base.tensor, other.tensor)


if __name__ == "__main__":
    if not any(m.spec.name == "one_pass_probe" for m in registry.registered_methods()):
        registry.register(one_pass_probe)
    main()
