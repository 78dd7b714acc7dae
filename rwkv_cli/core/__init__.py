"""The library layer: the `RWKV` class (model.py) and its parts.

- options.py: checks of every option, errors that name the option;
- lifecycle.py: loading a model into its engine context and freeing it;
- scheduler.py: continuous batching: one engine thread advances every running completion
  together (one pass over the weights per token), prompts read in chunks between steps, the
  queue of completions waiting for a place;
- generate.py: `Generation`, the per-sequence logic (sampling, incremental decoding, stop
  strings) that never calls the engine itself, and the checked `Request`;
- sampling.py, state_cache.py, tokenizer.py, results.py, chat_format.py.
"""
