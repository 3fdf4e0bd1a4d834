"""A local sequence-classification reward model, scoring (prompt, answer) pairs in batches."""

import json
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import transformers

from mergekit_expo.errors import ExpoInputError
from mergekit_expo.preflight import check_tokenizer
from mergekit_expo.search.batching import Batcher, padded
from mergekit_expo.search.prompts import encode_conversation, pad_id


class RewardModel:
    def __init__(self, path: str, *, device: str = "cpu", batch_size: Optional[int] = None,
                 trust_remote_code: bool = False):
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise ExpoInputError(f"reward model {path} is not a model folder (no config.json)")
        config = json.loads(config_file.read_text())
        architectures = config.get("architectures") or []
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise ExpoInputError(
                f"reward model {path} is {architectures[0] if architectures else 'untyped'}, "
                "not a sequence classifier: pass an AutoModelForSequenceClassification checkpoint"
            )
        check_tokenizer(path, "reward")
        # transformers omits id2label for its default of two labels: ask its config class.
        labels = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).num_labels
        if labels != 1:
            raise ExpoInputError(
                f"reward model {path} has {labels} outputs (num_labels): a reward model has one "
                "score per answer; pass a model saved with num_labels=1"
            )
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=trust_remote_code).to(device).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.pad = pad_id(self.tokenizer, "reward model")
        # The classifier reads the last token that is not padding; it must know the pad id.
        self.model.config.pad_token_id = self.pad
        self.device = device
        self.batcher = Batcher(batch_size, device)

    def encode(self, prompt: str, answer: str) -> List[int]:
        return encode_conversation(self.tokenizer, prompt, answer)

    def scores(self, sequences: Sequence[List[int]]) -> List[float]:
        return self.batcher.run(sequences, self._batch)

    def _batch(self, sequences: List[List[int]]) -> List[float]:
        # Right padding keeps every position as in an unpadded pass; the classifier
        # reads the last token that is not the pad id, as it does without a batch.
        ids, mask = padded(sequences, self.pad)
        with torch.no_grad():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        return [float(value) for value in logits[:, 0]]
