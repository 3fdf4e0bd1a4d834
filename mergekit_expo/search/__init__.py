"""The α search (``mergekit-expo search``): the paper's way of choosing α.

- :mod:`.engine` — what an engine does (load once, set α in place, generate, score)
- :mod:`.hf_engine`, :mod:`.vllm_engine` — one module per engine
- :mod:`.expo_weights` — the ExPO tensors of any α, streamed from the two checkpoints
- :mod:`.scorers`, :mod:`.reward_model`, :mod:`.prompts`, :mod:`.sampling`, :mod:`.data`
- :mod:`.runner`, :mod:`.results` — the loop, resumable results and reports
- :mod:`.command` — the click command
"""
