"""rwkv-cpp: run RWKV language models locally through our own C engine."""

__version__ = "0.1.0"

__all__ = ["RWKV", "__version__"]


def __getattr__(name: str):
    # Lazy import keeps `rwkv-cpp --help` fast and lets the binding load without the model layer.
    if name == "RWKV":
        from .core.model import RWKV

        return RWKV
    raise AttributeError(name)
