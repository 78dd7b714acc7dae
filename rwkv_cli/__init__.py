"""rwkv-cpp: run RWKV language models locally through our own C engine.

    from rwkv_cli import RWKV

The package is layered, each layer importing only the ones below it: `engine` (the cffi
binding of native/rwkv.h), `formats` (model files and checkpoints), `core` (the `RWKV` class)
and `app` (the `rwkv-cpp` command). `errors`, `paths` and `version` may be imported by all.
"""

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from .errors import EngineNotBuilt, RWKVError, UserError
from .version import __version__

__all__ = ["RWKV", "RWKVError", "UserError", "__version__"]


def __getattr__(name: str):
    # Lazy import keeps `rwkv-cpp --help` fast and lets the binding load without the model layer.
    if name == "RWKV":
        # Python started in the project's root imports this source folder, not the installed
        # package: say so in one sentence here rather than fail deep inside on first use.
        if not _engine_is_compiled():
            raise EngineNotBuilt.in_package(str(Path(__file__).resolve().parent))
        from .core.model import RWKV

        return RWKV
    raise AttributeError(name)


def _engine_is_compiled() -> bool:
    engine = Path(__file__).resolve().parent / "engine"
    return any((engine / f"_rwkv_native{suffix}").is_file() for suffix in EXTENSION_SUFFIXES)
