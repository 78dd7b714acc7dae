"""The library layer: the `RWKV` class and what it is made of (sampling, the prompt state
cache, tokenizers)."""
