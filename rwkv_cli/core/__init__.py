"""The library layer: the `RWKV` class (model.py) and its parts.

- options.py: checks of every option, errors that name the option;
- lifecycle.py: loading a model into engine contexts and freeing them;
- pool.py: the workers (one context each) and the queue of completions waiting for one;
- generate.py: the token loop, built on `Generation`, the per-sequence logic (sampling,
  incremental decoding, stop strings) that never calls the engine itself;
- sampling.py, state_cache.py, tokenizer.py, results.py, chat_format.py.
"""
