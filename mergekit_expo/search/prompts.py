"""Token ids of prompts and conversations, exactly as the models expect them.

Chat templates that begin with the BOS token (Llama 3, Mistral-Instruct, …) must be
tokenized by the template itself, without the tokenizer adding special tokens again:
rendering to text and tokenizing that text with special tokens gives two BOS tokens.
We encode through ``apply_chat_template(tokenize=True)``, which adds no special
tokens of its own. The result starts with exactly one BOS token when the tokenizer
uses one (it adds BOS to plain text), whether or not the template writes it.
"""

from typing import List, Optional

from mergekit_expo.errors import ExpoInputError


def encode_prompt(tokenizer, prompt: str) -> List[int]:
    """The prompt as the policy sees it before its answer: chat template if any."""
    return _encode(tokenizer, [{"role": "user", "content": prompt}], prompt)


def encode_answer(tokenizer, answer: str) -> List[int]:
    """An answer continues the prompt: no special tokens of its own."""
    return tokenizer(answer, add_special_tokens=False)["input_ids"]


def encode_conversation(tokenizer, prompt: str, answer: str) -> List[int]:
    """A (prompt, answer) pair as a reward model reads it."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return _encode(tokenizer, messages, f"{prompt} {answer}")


def _encode(tokenizer, messages, text: str) -> List[int]:
    """``messages`` through the chat template (a generation prompt after a user's turn), else
    ``text``; either way with one leading BOS if the tokenizer uses BOS."""
    if not getattr(tokenizer, "chat_template", None):
        return single_bos(tokenizer, tokenizer(text, add_special_tokens=True)["input_ids"])
    ids = tokenizer.apply_chat_template(messages, tokenize=True,
                                        add_generation_prompt=messages[-1]["role"] == "user")
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return single_bos(tokenizer, ids)


def single_bos(tokenizer, ids: List[int]) -> List[int]:
    """One leading BOS if the tokenizer uses BOS, none added if it does not."""
    bos = tokenizer.bos_token_id
    ids = list(ids)
    while bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    if _adds_bos(tokenizer) and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def pad_id(tokenizer, role: str) -> int:
    """The id batches are padded with: pad, else EOS; neither is a one-line error."""
    pad: Optional[int] = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ExpoInputError(
            f"the {role}'s tokenizer has neither a pad nor an EOS token, so prompts cannot be "
            "batched: set one, e.g. tokenizer.pad_token = '<pad>' and save_pretrained again"
        )
    return pad
