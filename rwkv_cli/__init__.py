"""rwkv-cpp: run RWKV language models locally through our own C engine.

    from rwkv_cli import RWKV

The package is layered, each layer importing only the ones below it: `engine` (the cffi
binding of native/rwkv.h), `formats` (model files and checkpoints), `core` (the `RWKV` class)
and `app` (the `rwkv-cpp` command). `errors`, `paths` and `version` may be imported by all.
"""

from .errors import RWKVError, UserError
from .version import __version__

__all__ = ["RWKV", "RWKVError", "UserError", "__version__"]


def __getattr__(name: str):
    # Lazy import keeps `rwkv-cpp --help` fast and lets the binding load without the model layer.
    if name == "RWKV":
        from .core.model import RWKV

        return RWKV
    raise AttributeError(name)
